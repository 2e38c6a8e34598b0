"""The service's one connection to the world: the Redis client, the group-committing
:class:`~leadscore.collector.Collector` that writes events into the partition streams, the
partition count agreed with the flow, and the metrics. Endpoints receive a :class:`Service`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter as Tally

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from leadscore.collector import Collector
from leadscore.events import Event
from leadscore.service.config import DEFAULT_PARTITIONS, ServiceConfig
from leadscore.service.errors import ApiError, StorageUnavailable
from leadscore.service.metrics import Metrics
from state.keys import LAYOUT_VERSION, Keys

log = logging.getLogger("leadscore.service")


class Service:
    """Holds the Redis client, the collector and the metrics for one app instance."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.redis: aioredis.Redis | None = None
        self.collector: Collector | None = None
        self._keys: Keys | None = None
        self._keys_lock = asyncio.Lock()

    # -- lifecycle

    async def start(self) -> None:
        cfg = self.config
        self.redis = aioredis.Redis.from_url(
            cfg.redis_url, socket_timeout=5.0, socket_connect_timeout=2.0
        )
        self.collector = Collector(
            self.redis,
            Keys(cfg.prefix),
            interval=cfg.flush_interval_ms / 1000.0,
            max_events=cfg.flush_max_events,
            dead_maxlen=cfg.dead_maxlen,
            observer=self.metrics.observe_flush,
        )
        self.collector.start()
        try:
            keys = await asyncio.wait_for(self.keys(), 2.0)
            log.info("serving %d partitions under prefix %r", keys.partitions, keys.prefix)
        except (StorageUnavailable, TimeoutError, RedisError, OSError) as exc:
            log.warning("Redis not ready at start-up (will retry on first use): %s", exc)

    async def stop(self) -> None:
        if self.collector is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.collector.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def keys(self) -> Keys:
        """The key layout, with the partition count agreed with ``{prefix}:meta``.

        A partition count that disagrees with the flow's would route events to streams
        nobody reads, so a mismatch refuses writes instead of guessing."""
        if self._keys is not None:
            return self._keys
        async with self._keys_lock:
            if self._keys is not None:
                return self._keys
            cfg = self.config
            assert self.redis is not None
            meta = Keys(cfg.prefix).meta
            try:
                recorded = await self.redis.hget(meta, "partitions")
                if recorded is None:
                    wanted = cfg.partitions or DEFAULT_PARTITIONS
                    pipe = self.redis.pipeline(transaction=True)
                    pipe.hsetnx(meta, "partitions", wanted)
                    pipe.hsetnx(meta, "version", LAYOUT_VERSION)
                    pipe.hget(meta, "partitions")
                    recorded = (await pipe.execute())[-1]
            except (RedisError, OSError) as exc:
                raise StorageUnavailable(f"cannot read {meta}: {exc}") from exc
            try:
                partitions = int(recorded)
            except (TypeError, ValueError):
                raise StorageUnavailable(
                    f"{meta} partitions is not a number: {recorded!r}"
                ) from None
            if cfg.partitions is not None and cfg.partitions != partitions:
                raise StorageUnavailable(
                    f"configured for {cfg.partitions} partitions but {meta} says {partitions}"
                )
            self._keys = Keys(cfg.prefix, partitions)
            return self._keys

    # -- writing

    async def write(self, events: list[Event], dead: list[bytes], source: str) -> None:
        """Write events (and dead letters) and count them; raise 503 if Redis fails."""
        try:
            keys = await self.keys()
            assert self.collector is not None
            lines = [(keys.partition(e.contact), orjson.dumps(e.to_dict())) for e in events]
            await self.collector.write(lines, dead)
        except (StorageUnavailable, RedisError, OSError) as exc:
            self.metrics.write_failures.labels(source).inc(len(events))
            log.warning("write of %d events failed: %s", len(events), exc)
            raise ApiError(
                503,
                "unavailable",
                f"events could not be stored, retry later: {exc}",
                None,
                {"Retry-After": "1"},
            ) from None
        if events:
            self.metrics.accepted.labels(source).inc(len(events))

    def count_rejects(self, source: str, codes: list[str]) -> None:
        for code, n in Tally(codes).items():
            self.metrics.rejected.labels(source, code).inc(n)
