"""A partitioned Bytewax source over leadscore's Redis input streams (``{prefix}:{p}:in``).

One Bytewax partition per stream, named ``str(p)``, read by consumer ``Keys.consumer(p)``
(``flow``, the same name on every stream) of group ``leadscore``; a worker's partitions
share one XREADGROUP over all their streams (see ``_Worker``). The source never
acknowledges: the flow's transactional checkpoint XACKs the entries together with the state
they produced, so Redis, not Bytewax recovery, holds the truth and ``snapshot()`` is None.
After a restart each partition first re-reads its own pending entries (delivered before the
crash, never checkpointed), then new ones.

Items are ``(str(p), (entry_id, payload))``: already keyed by partition, and ``payload`` is the
entry's ``e`` field (one or more JSON events separated by ``\\n``). With ``mark_idle``, a
partition that has read everything says so with ``(str(p), (IDLE, b""))``: after the entries
of a read that returned fewer than ``count`` (live runs), or once on an empty read.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from redis.exceptions import ResponseError

from flows import metrics
from state.keys import GROUP, Keys
from state.redis_store import FATAL, RETRYABLE, Client, connect


class Messages(bytes):
    """An input entry's payload written by a checkpoint (field ``m``): hand-overs between
    partitions (flows/handover.py). Lines in any other entry (field ``e``, what ``send``,
    the service and the collector write) that look like one are dead-lettered, so no input
    can move a contact's state."""

    __slots__ = ()


log = logging.getLogger("leadscore.redis")

Item = tuple[str, tuple[str, bytes]]
"""``(partition key, (stream entry id, payload))``."""

PENDING_DONE = ">"

IDLE = ""
"""Entry id of the marker a ``mark_idle`` source emits when a partition has caught up."""


_wake = threading.local()

_ANY_TIME = datetime(2000, 1, 1, tzinfo=UTC)
"""A ``next_awake`` that has passed: poll at every sweep."""


def wake_by(t: float) -> None:
    """Ask this thread's source not to block in Redis past ``t`` (``time.time()``).

    Bytewax runs a worker's source and stateful steps on one thread: while a read blocks, a
    step's ``notify_at`` (e.g. a checkpoint deadline) cannot fire. The stateful step calls
    this with its next deadline; a passed one is forgotten after one short read.
    """
    current = getattr(_wake, "t", None)
    if current is None or t < current:
        _wake.t = t


def _block_limit(block_ms: int) -> int:
    """``block_ms``, or less if this thread's stateful step has a deadline sooner."""
    t = getattr(_wake, "t", None)
    if t is None:
        return block_ms
    left = t - time.time()
    if left <= 0:
        _wake.t = None  # due now: Bytewax runs the notification after this poll
        return 1
    return max(1, min(block_ms, math.ceil(left * 1000)))


class _Worker:
    """The partitions one Bytewax worker thread polls in turn.

    They share reads: once a partition has re-read its pending entries, new entries of all
    such partitions are fetched by ONE ``XREADGROUP`` over their streams (it accepts several;
    the consumer name is the same for every stream, see ``Keys.consumer``) and handed to each
    partition's buffer. When every partition is idle that read blocks, so an entry arriving in
    any stream wakes the worker at once instead of when a sweep of per-stream blocking reads
    reaches its stream. On Redis Cluster every stream is in its own slot and a multi-stream
    command would fail (CROSSSLOT): there each partition reads alone and an idle sweep splits
    ``block_ms`` between them.
    """

    def __init__(self, *, combine: bool, block_ms: int) -> None:
        self.combine = combine
        self.block_ms = block_ms
        # Weak references let partitions of finished runs go.
        self.parts: weakref.WeakSet[_StreamPartition] = weakref.WeakSet()
        self._first: _StreamPartition | None = None  # see first()

    def add(self, part: _StreamPartition) -> None:
        self.parts.add(part)
        self._first = None  # it may come first

    def first(self) -> _StreamPartition | None:
        """The partition Bytewax polls first in a sweep of this worker's partitions.

        Bytewax polls a worker's partitions once per activation in the order of their keys
        (as strings: "0", "1", "10", ..., "9") and runs the steps downstream once they all
        have been polled. This one reads for all at every poll: what the read finds for the
        others is handed out by their polls in the same sweep. A read by any later partition
        found entries for siblings already polled, which waited for the next activation (at
        15k events/s, every entry but the reader's waited a round of the flow's work, and
        each round took two checkpoint round trips instead of one; bench/README.md, "lat").
        """
        if self._first is None or self._first._done:
            live = [s for s in self.parts if not s._done]
            self._first = min(live, key=lambda s: s._part) if live else None
        return self._first

    def read_new(self, caller: _StreamPartition) -> list[Item]:
        """New entries for ``caller``, and for its reading siblings into their buffers.

        Every sibling with nothing left to hand out is read too, so a blocking read watches
        all of the worker's streams.
        """
        parts = list(self.parts)
        members = [caller]
        if self.combine:
            members += [
                s
                for s in parts
                if s is not caller and s._cursor == PENDING_DONE and not s._done and not s._buffer
            ]
        # Block only when every partition of this worker is idle with nothing left to hand
        # out: a busy partition is never held up, and next_batch never blocks over block_ms.
        block = None
        if all(s._idle and not s._buffer for s in parts):
            block = self.block_ms if self.combine else max(1, self.block_ms // len(parts))
            block = _block_limit(block)
        streams = {s._key: PENDING_DONE for s in members}
        try:
            resp = caller._r.xreadgroup(
                GROUP, caller._consumer, streams, count=caller._count, block=block
            )
        except RETRYABLE:
            # The server may have delivered entries whose reply was lost: they are pending
            # with ids above the last one each partition emitted. Fetch those first.
            for s in members:
                s._cursor = s._last_id
            raise
        got = {stream.decode(): entries for stream, entries in resp or []}
        if block is not None and got and len(got) < len(members):
            # A blocking read returns at the first XADD of a burst (Redis serves a blocked
            # reader right after the command that woke it, before the rest of a pipeline):
            # one look more, not blocking, takes the rest of it now rather than after a whole
            # round of the flow's work for that one entry (bench/README.md, "lat3").
            try:
                more = caller._r.xreadgroup(GROUP, caller._consumer, streams, count=caller._count)
            except RETRYABLE:
                # Both reads' entries are pending beyond what each partition emitted.
                for s in members:
                    s._cursor = s._last_id
                raise
            for stream, entries in more or []:
                got.setdefault(stream.decode(), []).extend(entries)
        for s in members:
            if s is not caller:
                s._buffer = s._took(got.get(s._key, []))
        return caller._took(got.get(caller._key, []))


class _StreamPartition(StatefulSourcePartition[Item, None]):
    """Reads one input stream as consumer ``Keys.consumer(p)``: first its pending entries, one
    stream at a time, then new ones, with its worker's other partitions (see ``_Worker``)."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        p: int,
        *,
        count: int,
        worker: _Worker,
        tail: bool,
        max_backoff: float,
        stop: threading.Event | None,
        mark_idle: bool = False,
        guard: Callable[[], object] | None = None,
    ) -> None:
        self._r = client
        self._guard = guard
        self._p = p
        self._part = str(p)
        self._key = keys.input(p)
        self._consumer = keys.consumer(p)
        self._legacy = keys.legacy_consumer(p)
        self._count = count
        self._worker = worker
        self._tail = tail
        self._max_backoff = max_backoff
        self._stop = stop
        self._mark_idle = mark_idle
        # "0" re-reads this consumer's pending entries; PENDING_DONE reads new ones.
        self._cursor = "0"
        self._last_id = "0"
        self._replayed = 0
        self._adopted = False
        self._idle = False
        self._marked = False  # the last batch ended with an IDLE marker
        self._done = False  # tail=False and nothing new: ends at its next poll
        # What a sibling's combined read found for it ([]: nothing), handed out at its next
        # poll instead of reading again: one read per sweep of the worker's partitions.
        self._buffer: list[Item] | None = None
        self._failures = 0
        self._awake: datetime | None = None

    # -- Bytewax API -----------------------------------------------------------------------

    def next_batch(self) -> list[Item]:
        buffered, self._buffer = self._buffer, None
        if buffered:
            # Read for it by a sibling: hand it out even when stopping, so that what a stopped
            # run read is what it checkpoints.
            return buffered
        if self._done or (self._stop is not None and self._stop.is_set()):
            self._done = True  # no sibling reads for it any more
            raise StopIteration
        if buffered is not None and self is not self._worker.first():
            return []  # a sibling's read since its last poll found nothing new for it
        try:
            batch = self._read()
        except FATAL:
            raise
        except RETRYABLE as err:
            self._failed(err)
            return []
        except ResponseError as err:
            if "NOGROUP" not in str(err):
                raise
            # A combined read does not say whose group is missing: check each of them.
            for s in list(self._worker.parts) if self._cursor == PENDING_DONE else [self]:
                s._create_group()
            return []
        if self._failures:
            log.info(
                "input %s: Redis reachable again after %d failed reads", self._key, self._failures
            )
            self._failures = 0
            self._awake = None
        if self._done and not batch:
            raise StopIteration
        return batch

    def next_awake(self) -> datetime | None:
        if self._awake is None and self._worker.combine:
            # Polled in every sweep, even after an empty poll (Bytewax would wait 1 ms): the
            # sweep's first poll reads for all (see _Worker.first), and when that read blocked
            # until an entry came, a partition still cooling down (Bytewax judges that by the
            # sweep's start) would hand out what it found only in the next sweep. No busy
            # loop: when every partition is idle, that first read blocks in Redis.
            return _ANY_TIME
        return self._awake

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._r.close()

    # -- reading ---------------------------------------------------------------------------

    def _read(self) -> list[Item]:
        if self._guard is not None:
            self._guard()  # raises when this process may no longer read (the flow lease)
        if self._cursor != PENDING_DONE:
            if not self._adopted:
                self._adopt_legacy()
            entries = self._xreadgroup(self._cursor)
            if entries:
                self._replayed += len(entries)
                self._cursor = entries[-1][0].decode()
                return self._emit(entries)
            if self._replayed:
                log.info(
                    "input %s: re-read %d pending entries of consumer %s (delivered before a "
                    "restart or a lost reply, never checkpointed)",
                    self._key,
                    self._replayed,
                    self._consumer,
                )
            self._cursor = PENDING_DONE
            self._replayed = 0
        return self._worker.read_new(self)

    def _took(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Item]:
        """The items of what a read of new entries returned for this partition.

        With ``mark_idle``, a live partition is caught up as soon as a read returns fewer
        than ``count`` entries: the stream held nothing more. The marker then follows those
        entries in the same batch, so the flow can checkpoint them at once instead of one
        sweep later, when a read comes back empty (which, with entries arriving every few
        milliseconds, may never happen: the partition then waited for its flush deadline).
        An empty read says it once, if the last batch did not.
        """
        self._idle = not entries
        if not entries and not self._tail:
            self._done = True
            return []
        if not entries:
            if self._mark_idle and not self._marked:
                self._marked = True
                return [(self._part, (IDLE, b""))]
            return []
        out = self._emit(entries)
        self._marked = self._mark_idle and self._tail and len(entries) < self._count
        if self._marked:
            out.append((self._part, (IDLE, b"")))
        return out

    def _xreadgroup(self, cursor: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        resp = self._r.xreadgroup(GROUP, self._consumer, {self._key: cursor}, count=self._count)
        return resp[0][1] if resp else []

    def _adopt_legacy(self) -> None:
        """Move the pending entries of the pre-``CONSUMER`` name ``p{p}`` to this consumer.

        Entries an older version read and never checkpointed are pending for ``p{p}``; once
        claimed they are re-read with this consumer's own pending entries (their ids are
        older, so order is kept). The empty old consumer is then deleted. Runs once per start.
        """
        try:
            consumers = self._r.xinfo_consumers(self._key, GROUP)
        except ResponseError as err:
            if "no such key" not in str(err).lower():
                raise  # NOGROUP: next_batch creates the group
            self._adopted = True  # no stream, so no old consumer: the read creates both
            return
        if any(c["name"] in (self._legacy, self._legacy.encode()) for c in consumers):
            moved = 0
            while True:
                rows = self._r.xpending_range(
                    self._key, GROUP, min="-", max="+", count=1000, consumername=self._legacy
                )
                if not rows:
                    break
                ids = [row["message_id"] for row in rows]
                self._r.xclaim(self._key, GROUP, self._consumer, 0, ids, justid=True)
                moved += len(ids)
            # Only now that it owns nothing: deleting a consumer drops its pending entries.
            self._r.xgroup_delconsumer(self._key, GROUP, self._legacy)
            if moved:
                log.info(
                    "input %s: moved %d pending entries of old consumer %s to %s",
                    self._key,
                    moved,
                    self._legacy,
                    self._consumer,
                )
        self._adopted = True

    def _emit(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Item]:
        out: list[Item] = []
        deleted: list[bytes] = []
        part = self._part
        for entry_id, fields in entries:
            if not fields:
                deleted.append(entry_id)
                continue
            payload = fields.get(b"e")
            if payload is None and b"m" in fields:
                payload = Messages(fields[b"m"])
            elif payload is None:
                # Not written by `leadscore send`: pass it on as a JSON object so the flow
                # dead-letters it instead of it vanishing.
                payload = orjson.dumps(
                    {
                        k.decode(errors="replace"): v.decode(errors="replace")
                        for k, v in fields.items()
                    }
                )
            out.append((part, (entry_id.decode(), payload)))
        if entries:
            self._last_id = entries[-1][0].decode()
        if deleted:
            self._ack_deleted(deleted)
        return out

    def _ack_deleted(self, ids: list[bytes]) -> None:
        """Pending entries trimmed from the stream carry no data: nothing to replay, so ack."""
        log.warning(
            "input %s: %d pending entries were deleted from the stream (trimmed?) before being "
            "checkpointed; their content is gone, acknowledging them",
            self._key,
            len(ids),
        )
        try:
            self._r.xack(self._key, GROUP, *ids)
        except RETRYABLE as err:
            log.warning("input %s: could not ack deleted entries (%s); later", self._key, err)

    # -- failures --------------------------------------------------------------------------

    def _failed(self, err: BaseException) -> None:
        self._failures += 1
        metrics.REDIS_RETRIES.labels("input").inc()
        delay = min(self._max_backoff, 0.05 * 2 ** (self._failures - 1))
        self._awake = datetime.now(UTC) + timedelta(seconds=delay)
        previous = min(self._max_backoff, 0.05 * 2 ** (self._failures - 2))
        if self._failures > 1 and delay == previous:
            return  # one warning per back-off step, not per attempt
        at_cap = delay >= self._max_backoff
        log.warning(
            "input %s: read failed (%s: %s); retrying %s %.3gs (failure %d)%s",
            self._key,
            type(err).__name__,
            err,
            "every" if at_cap else "in",
            delay,
            self._failures,
            " until Redis answers; further failures are not logged" if at_cap else "",
        )

    def _create_group(self) -> None:
        """The group vanished (Redis restarted without persistence, or a flush): recreate."""
        log.warning(
            "input %s: consumer group %s missing; creating it from the stream's start",
            self._key,
            GROUP,
        )
        try:
            self._r.xgroup_create(self._key, GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        except RETRYABLE as err:
            self._failed(err)


class RedisStreamSource(FixedPartitionedSource[Item, None]):
    """Bytewax source over the input streams of ``partitions`` (default: all of ``keys``).

    ``block_ms`` bounds how long one idle round over a worker's partitions waits in Redis for
    new entries (the wait is split between them), so light traffic is picked up within about
    ``block_ms`` and ``next_batch`` never blocks longer. ``count`` caps the stream entries per
    read (an entry holds up to ``send_events``' batch of events). ``tail=False`` ends each
    partition once it has nothing new: for tests and one-shot catch-up runs. Setting ``stop``
    (e.g. from a SIGTERM handler) ends every partition at its next poll, so the flow reaches
    end of input and can checkpoint what it applied; unread entries stay in Redis.
    ``mark_idle`` emits an ``IDLE`` marker each time a partition catches up (live: right after
    the entries of a read that returned fewer than ``count``; else at the first empty read),
    so downstream can tell "no backlog" from "between batches".
    """

    def __init__(
        self,
        url: str,
        keys: Keys,
        partitions: int | Iterable[int] | None = None,
        *,
        block_ms: int = 50,
        count: int = 64,
        cluster: bool = False,
        tail: bool = True,
        max_backoff: float = 2.0,
        socket_timeout: float = 10.0,
        stop: threading.Event | None = None,
        mark_idle: bool = False,
        guard: Callable[[], object] | None = None,
    ) -> None:
        if partitions is None:
            parts = list(range(keys.partitions))
        elif isinstance(partitions, int):
            if partitions != keys.partitions:
                raise ValueError(
                    f"partitions={partitions} but the key layout has {keys.partitions}"
                )
            parts = list(range(partitions))
        else:
            parts = sorted(set(partitions))
            bad = [p for p in parts if not 0 <= p < keys.partitions]
            if bad:
                raise ValueError(f"partitions {bad} outside 0..{keys.partitions - 1}")
        if block_ms < 1 or count < 1:
            raise ValueError("block_ms and count must be >= 1")
        self._url = url
        self._keys = keys
        self._parts = parts
        self._block_ms = block_ms
        self._count = count
        self._cluster = cluster
        self._tail = tail
        self._max_backoff = max_backoff
        self._stop = stop
        self._mark_idle = mark_idle
        self._guard = guard
        self._socket_timeout = max(socket_timeout, block_ms / 1000 + 5.0)
        self._lock = threading.Lock()
        self._workers: dict[int, _Worker] = {}

    def list_parts(self) -> list[str]:
        return [str(p) for p in self._parts]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StreamPartition:
        # Partitions built on one worker thread are polled by that thread in turn: they share
        # reads and the idle wait (see _Worker).
        with self._lock:
            worker = self._workers.get(threading.get_ident())
            if worker is None:
                worker = self._workers[threading.get_ident()] = _Worker(
                    combine=not self._cluster, block_ms=self._block_ms
                )
        part = _StreamPartition(
            connect(self._url, cluster=self._cluster, socket_timeout=self._socket_timeout),
            self._keys,
            int(for_part),
            count=self._count,
            worker=worker,
            tail=self._tail,
            max_backoff=self._max_backoff,
            stop=self._stop,
            mark_idle=self._mark_idle,
            guard=self._guard,
        )
        worker.add(part)
        return part
