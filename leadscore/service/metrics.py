"""Prometheus metrics of the service (``/metrics``): counters the endpoints bump, latency per
route template (a pure ASGI middleware), and stream lengths and consumer-group lag read from
Redis at scrape time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from redis.exceptions import RedisError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadscore.service.errors import StorageUnavailable
from state.keys import GROUP, Keys

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STREAMS = ("input", "triggers", "changes", "dead")
"""The ``Keys`` methods naming a partition's streams, as ``/metrics`` reports them."""
STREAM_LABELS = {"input": "in", "triggers": "triggers", "changes": "changes", "dead": "dead"}
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """One registry per app, so two apps in one process (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.accepted = Counter(
            "leadscore_http_events_accepted",
            "Events written to the input streams, by source.",
            ["source"],
            registry=r,
        )
        self.rejected = Counter(
            "leadscore_http_events_rejected",
            "Events refused and dead-lettered, by source and reason code.",
            ["source", "reason"],
            registry=r,
        )
        self.write_failures = Counter(
            "leadscore_http_write_failures",
            "Events that could not be written to Redis, by source.",
            ["source"],
            registry=r,
        )
        self.requests = Counter(
            "leadscore_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "leadscore_http_request_duration_seconds",
            "Time from request start to last response byte, by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.flush_seconds = Histogram(
            "leadscore_collector_flush_seconds",
            "Duration of one pipelined flush to Redis.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.flush_events = Histogram(
            "leadscore_collector_flush_events",
            "Events and dead letters carried by one flush.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
            registry=r,
        )
        self.stream_length = Gauge(
            "leadscore_stream_length",
            "Entries (XLEN) of a partition stream: in = input, triggers, changes, dead = dead "
            "letters; an in, changes or dead entry holds one or more events or records.",
            ["stream", "partition"],
            registry=r,
        )
        self.stream_bytes = Gauge(
            "leadscore_stream_memory_bytes",
            "Redis MEMORY USAGE of a partition stream, sampled (SAMPLES 5): an estimate.",
            ["stream", "partition"],
            registry=r,
        )
        self.lag = Gauge(
            "leadscore_consumer_group_lag",
            "Input entries not yet delivered to the scoring flow's consumer group.",
            ["partition"],
            registry=r,
        )
        self.pending = Gauge(
            "leadscore_consumer_group_pending",
            "Input entries delivered to the flow but not yet acknowledged.",
            ["partition"],
            registry=r,
        )
        self.redis_up = Gauge(
            "leadscore_redis_up", "1 if the last metrics scrape reached Redis.", registry=r
        )

    def observe_flush(self, events: int, entries: int, seconds: float) -> None:
        self.flush_seconds.observe(seconds)
        self.flush_events.observe(events)


class Timing:
    """Pure ASGI middleware (BaseHTTPMiddleware costs a task per request): latency and
    status per route template, read from ``scope["route"]`` after routing."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            children = self._children.get((path, method, status))
            if children is None:  # labels() costs a lock and a lookup: resolve once
                label = path.replace(":path}", "}")
                children = self._children[(path, method, status)] = (
                    self.metrics.latency.labels(label, method),
                    self.metrics.requests.labels(label, method, str(status)),
                )
            children[0].observe(time.perf_counter() - started)
            children[1].inc()


async def exposition(
    metrics: Metrics, redis: aioredis.Redis | None, keys: Callable[[], Awaitable[Keys]]
) -> Response:
    """The ``/metrics`` answer: the stream gauges refreshed, then the whole registry."""
    await _stream_metrics(metrics, redis, keys)
    return Response(generate_latest(metrics.registry), 200, None, CONTENT_TYPE_LATEST)


async def _stream_metrics(
    m: Metrics, redis: aioredis.Redis | None, keys_of: Callable[[], Awaitable[Keys]]
) -> None:
    """Stream lengths and consumer-group lag, read at scrape time (one pipeline)."""
    try:
        keys = await asyncio.wait_for(keys_of(), 1.0)
        assert redis is not None
        pipe = redis.pipeline(transaction=False)
        for p in range(keys.partitions):
            pipe.xinfo_groups(keys.input(p))
            for stream in STREAMS:
                name = getattr(keys, stream)(p)
                pipe.xlen(name)
                # O(samples), not O(entries): a sampled estimate of the stream's memory
                pipe.execute_command("MEMORY USAGE", name, "SAMPLES", 5)
        replies = await asyncio.wait_for(pipe.execute(raise_on_error=False), 2.0)
    except (StorageUnavailable, RedisError, OSError, TimeoutError):
        m.redis_up.set(0)
        return
    m.redis_up.set(1)
    width = 1 + 2 * len(STREAMS)
    for p in range(keys.partitions):
        groups, *sizes = replies[width * p : width * (p + 1)]
        length = 0
        for i, stream in enumerate(STREAMS):
            entries, memory = sizes[2 * i], sizes[2 * i + 1]
            entries = entries if isinstance(entries, int) else 0
            label = STREAM_LABELS[stream]
            m.stream_length.labels(label, str(p)).set(entries)
            m.stream_bytes.labels(label, str(p)).set(memory if isinstance(memory, int) else 0)
            if stream == "input":
                length = entries
        lag, pending = length, 0
        for group in groups if isinstance(groups, list) else []:
            name = group.get("name")
            if name in (GROUP, GROUP.encode()):
                pending = int(group.get("pending") or 0)
                if group.get("lag") is not None:
                    lag = int(group["lag"])
                elif group.get("entries-read") is not None:
                    lag = max(0, length - int(group["entries-read"]))
        m.lag.labels(str(p)).set(lag)
        m.pending.labels(str(p)).set(pending)
