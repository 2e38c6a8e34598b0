"""The HTTP service (`leadscore serve`): tracking pixel, Segment-compatible collector, native
event intake, score API, Prometheus metrics.

It only moves bytes: events go into the Redis partition streams the scoring flow consumes
(through the group-committing :class:`~leadscore.collector.Collector`), scores come out of
the read model the flow writes. No scoring happens here, so the service can be scaled and
restarted independently of the flow.

Where things are:

- :mod:`~leadscore.service.config`: :class:`ServiceConfig`, options and ``LEADSCORE_*``
  environment variables;
- :mod:`~leadscore.service.auth`: write and read keys;
- :mod:`~leadscore.service.body`: reading (and inflating) request bodies within limits;
- :mod:`~leadscore.service.backend`: :class:`Service`, the Redis client, the collector and the
  partition count agreed with the flow;
- :mod:`~leadscore.service.ingest`: the pixel, the Segment API and native events;
- :mod:`~leadscore.service.read`: contact scores, ``/healthz`` and ``/readyz``;
- :mod:`~leadscore.service.metrics`: ``/metrics`` and the request timing middleware;
- :mod:`~leadscore.service.openapi`: ``/openapi.json``;
- :mod:`~leadscore.service.app`: :func:`create_app` wires them; :func:`run_server` serves it.
"""

from __future__ import annotations

from leadscore.service.app import create_app, run_server
from leadscore.service.backend import Service
from leadscore.service.config import DEFAULT_PARTITIONS, ServiceConfig
from leadscore.service.errors import ApiError, StorageUnavailable
from leadscore.service.ingest import GIF, pixel_event
from leadscore.service.metrics import Metrics
from leadscore.service.openapi import openapi_document

__all__ = [
    "DEFAULT_PARTITIONS",
    "GIF",
    "ApiError",
    "Metrics",
    "Service",
    "ServiceConfig",
    "StorageUnavailable",
    "create_app",
    "openapi_document",
    "pixel_event",
    "run_server",
]
