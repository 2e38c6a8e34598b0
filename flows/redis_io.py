"""A partitioned Bytewax source over leadscore's Redis input streams (``{prefix}:{p}:in``).

One Bytewax partition per stream, named ``str(p)``, read by consumer ``p{p}`` of group
``leadscore``. The source never acknowledges: the flow's transactional checkpoint XACKs the
entries together with the state they produced, so Redis, not Bytewax recovery, holds the
truth and ``snapshot()`` is None. After a restart each partition first re-reads its own
pending entries (delivered before the crash, never checkpointed), then new ones.

Items are ``(str(p), (entry_id, payload))``: already keyed by partition, and ``payload`` is the
entry's ``e`` field (one or more JSON events separated by ``\\n``). With ``mark_idle``, a
partition that has read everything says so once with ``(str(p), (IDLE, b""))``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from redis.exceptions import ResponseError

from state.keys import GROUP, Keys
from state.redis_store import FATAL, RETRYABLE, Client, connect

log = logging.getLogger("leadscore.redis")

Item = tuple[str, tuple[str, bytes]]
"""``(partition key, (stream entry id, payload))``."""

PENDING_DONE = ">"

IDLE = ""
"""Entry id of the marker a ``mark_idle`` source emits when a partition has caught up."""


class _StreamPartition(StatefulSourcePartition[Item, None]):
    """Reads one input stream as consumer ``p{p}``: first its pending entries, then new ones."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        p: int,
        *,
        count: int,
        block_ms: int,
        siblings: weakref.WeakSet[_StreamPartition],
        tail: bool,
        max_backoff: float,
        stop: threading.Event | None,
        mark_idle: bool = False,
    ) -> None:
        self._r = client
        self._p = p
        self._part = str(p)
        self._key = keys.input(p)
        self._consumer = keys.consumer(p)
        self._count = count
        self._block_ms = block_ms
        self._siblings = siblings
        self._tail = tail
        self._max_backoff = max_backoff
        self._stop = stop
        self._mark_idle = mark_idle
        # "0" re-reads this consumer's pending entries; PENDING_DONE reads new ones.
        self._cursor = "0"
        self._last_id = "0"
        self._replayed = 0
        self._idle = False
        self._failures = 0
        self._awake: datetime | None = None

    # -- Bytewax API -----------------------------------------------------------------------

    def next_batch(self) -> list[Item]:
        if self._stop is not None and self._stop.is_set():
            raise StopIteration
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
            self._create_group()
            return []
        if self._failures:
            log.info(
                "input %s: Redis reachable again after %d failed reads", self._key, self._failures
            )
            self._failures = 0
            self._awake = None
        return batch

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._r.close()

    # -- reading ---------------------------------------------------------------------------

    def _read(self) -> list[Item]:
        if self._cursor != PENDING_DONE:
            entries = self._xreadgroup(self._cursor, None)
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
        # Block only when every partition of this worker is idle, each for its share of
        # block_ms: one idle round then costs at most block_ms, and a busy partition is never
        # held up by idle siblings blocking in turn.
        block = None
        if all(s._idle for s in self._siblings):
            block = max(1, self._block_ms // len(self._siblings))
        entries = self._xreadgroup(PENDING_DONE, block)
        was_idle = self._idle
        self._idle = not entries
        if not entries and not self._tail:
            raise StopIteration
        if self._idle and not was_idle and self._mark_idle:
            return [(self._part, (IDLE, b""))]
        return self._emit(entries)

    def _xreadgroup(self, cursor: str, block: int | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        try:
            resp = self._r.xreadgroup(
                GROUP, self._consumer, {self._key: cursor}, count=self._count, block=block
            )
        except RETRYABLE:
            if cursor == PENDING_DONE:
                # The server may have delivered entries whose reply was lost: they are pending
                # for this consumer with ids above the last one emitted. Fetch those first.
                self._cursor = self._last_id
            raise
        return resp[0][1] if resp else []

    def _emit(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Item]:
        out: list[Item] = []
        deleted: list[bytes] = []
        part = self._part
        for entry_id, fields in entries:
            if not fields:
                deleted.append(entry_id)
                continue
            payload = fields.get(b"e")
            if payload is None:
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
        delay = min(self._max_backoff, 0.05 * 2 ** (self._failures - 1))
        self._awake = datetime.now(UTC) + timedelta(seconds=delay)
        log.warning(
            "input %s: read failed (%s: %s); retrying in %.2fs (failure %d)",
            self._key,
            type(err).__name__,
            err,
            delay,
            self._failures,
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
    ``mark_idle`` emits one ``IDLE`` marker each time a partition catches up (a read finds
    nothing new), so downstream can tell "no backlog" from "between batches".
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
        self._socket_timeout = max(socket_timeout, block_ms / 1000 + 5.0)
        self._lock = threading.Lock()
        self._siblings: dict[int, weakref.WeakSet[_StreamPartition]] = {}

    def list_parts(self) -> list[str]:
        return [str(p) for p in self._parts]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StreamPartition:
        # Partitions built on one worker thread are polled by that thread in turn: they share
        # the idle blocking budget. Weak references let partitions of finished runs go.
        with self._lock:
            siblings = self._siblings.setdefault(threading.get_ident(), weakref.WeakSet())
        part = _StreamPartition(
            connect(self._url, cluster=self._cluster, socket_timeout=self._socket_timeout),
            self._keys,
            int(for_part),
            count=self._count,
            block_ms=self._block_ms,
            siblings=siblings,
            tail=self._tail,
            max_backoff=self._max_backoff,
            stop=self._stop,
            mark_idle=self._mark_idle,
        )
        siblings.add(part)
        return part
