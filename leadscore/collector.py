"""Group commit of HTTP events into the Redis partition streams.

Thousands of small requests each doing their own XADD would cost one Redis round trip per
request; instead every request hands its lines to one :class:`Collector`, which waits a
couple of milliseconds (or until enough events are pending), then writes everything pending
in one pipeline: one stream entry per partition (field ``e``, lines joined by ``\\n``) plus
any dead letters. Each request awaits the flush that carried its events, so a 200 means the
events are in Redis. While a flush is in flight the next batch fills, so batches grow with
load and the Redis round trips stay flat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis

from state.keys import Keys

FlushObserver = Callable[[int, int, float], None]
"""Called after each successful flush with (events, stream entries, seconds)."""


class Collector:
    """Batches event lines per partition and dead letters into pipelined XADDs."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        interval: float = 0.002,
        max_events: int = 100,
        dead_maxlen: int = 100_000,
        observer: FlushObserver | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._interval = interval
        self._max_events = max_events
        self._dead_maxlen = dead_maxlen
        self._observer = observer
        self._lines: dict[int, list[bytes]] = {}
        self._dead: list[bytes] = []
        self._count = 0
        self._done: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="collector")

    async def close(self) -> None:
        """Flush what is pending, then stop; later writes raise RuntimeError."""
        self._closed = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None

    def submit(
        self, events: Iterable[tuple[int, bytes]], dead: Iterable[bytes] = ()
    ) -> asyncio.Future[None]:
        """Queue ``(partition, json line)`` pairs and dead-letter records.

        Returns the future of the flush that will carry them (awaiting it raises the Redis
        error if that flush failed). Lines of one call stay in order within their partition."""
        if self._closed:
            raise RuntimeError("collector is closed")
        lines = self._lines
        n = 0
        for partition, line in events:
            bucket = lines.get(partition)
            if bucket is None:
                lines[partition] = [line]
            else:
                bucket.append(line)
            n += 1
        for record in dead:
            self._dead.append(record)
            n += 1
        if not n:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        self._count += n
        self._wake.set()
        if self._count >= self._max_events:
            self._full.set()
        return self._done

    async def write(self, events: Iterable[tuple[int, bytes]], dead: Iterable[bytes] = ()) -> None:
        """Submit and wait until Redis has the entries.

        The flush future is shared by every request in the batch, so it is shielded: one
        cancelled request (a client hanging up) must not cancel the others' acknowledgement."""
        await asyncio.shield(self.submit(events, dead))

    async def _run(self) -> None:
        while True:
            if not self._count:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._full.is_set() and not self._closed:
                # Let more requests join this flush; cut short as soon as the batch is full.
                # A timer setting the event is cheaper than wait_for (no task per flush).
                timer = asyncio.get_running_loop().call_later(self._interval, self._full.set)
                await self._full.wait()
                timer.cancel()
            lines, dead, done, count = self._lines, self._dead, self._done, self._count
            self._lines, self._dead, self._done, self._count = {}, [], None, 0
            self._full.clear()
            assert done is not None
            try:
                await self._flush(lines, dead, count)
            except Exception as exc:  # every waiter must hear about it, whatever it was
                if not done.done():  # a caller may have cancelled a bare submit() future
                    done.set_exception(exc)
                    done.exception()  # mark retrieved: waiters may have timed out already
            else:
                if not done.done():
                    done.set_result(None)

    async def _flush(self, lines: dict[int, list[bytes]], dead: list[bytes], count: int) -> None:
        started = time.perf_counter()
        pipe = self._client.pipeline(transaction=False)
        for partition, bucket in lines.items():
            pipe.xadd(self._keys.input(partition), {"e": b"\n".join(bucket)})
        dead_key = self._keys.dead(0)
        for record in dead:
            pipe.xadd(dead_key, {"d": record}, maxlen=self._dead_maxlen, approximate=True)
        await pipe.execute()
        if self._observer is not None:
            self._observer(count, len(lines) + len(dead), time.perf_counter() - started)
