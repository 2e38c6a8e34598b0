"""Redis as the source of truth: partitioned input streams, transactional checkpoints, read model.

Exactly-once rests on one rule: everything a partition's batch produces (contact states, read
models, trigger records, point changes, dead letters), the acknowledgement of the input it
consumed and the checkpoint sequence are written by ONE MULTI/EXEC. Either all of it is in
Redis or none of it is, so a crash replays exactly the unacknowledged input onto the state that
matches it. All keys of a partition share the hash tag ``{p}``, which keeps that transaction
legal on Redis Cluster.

A retried checkpoint must not apply twice. Every attempt WATCHes the partition's ``ckpt`` key
and reads it first: if it already holds ``seq`` an earlier attempt committed (the connection
died after EXEC was sent) and nothing is re-sent; WATCH also aborts a stale EXEC of an earlier
attempt that reaches the server late, whichever of the two runs second.

redis-py's own retries are switched off (``retry=Retry(NoBackoff(), 0)``): it would silently
re-send an unwatched MULTI/EXEC after an ambiguous failure. This module owns retrying, bounded
and logged.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeVar

import orjson
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
    WatchError,
)
from redis.retry import Retry

from state.keys import GROUP, LAYOUT_VERSION, Keys

log = logging.getLogger("leadscore.redis")

T = TypeVar("T")

Client = redis.Redis | RedisCluster

#: Failures after which the same request may succeed: the server is down, restarting, loading
#: its AOF/RDB (BusyLoadingError is a ConnectionError), failing over or resharding.
RETRYABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ClusterDownError,
    TryAgainError,
    AskError,  # MovedError is a subclass
    ReadOnlyError,
)
#: ConnectionError subclasses that no amount of waiting fixes: fail at once.
FATAL: tuple[type[BaseException], ...] = (AuthenticationError, AuthorizationError)

MSET_CHUNK = 5000
"""Keys per MSET inside a checkpoint (all in the same MULTI), to keep single commands small."""


class StoreError(RuntimeError):
    """Base class of the errors this module raises on purpose."""


class MetaMismatch(StoreError):
    """``{prefix}:meta`` in Redis disagrees with this process's configuration."""


class NotInitialized(StoreError):
    """No ``{prefix}:meta`` yet, and the partition count was not given."""


class CheckpointConflict(StoreError):
    """The partition's committed sequence is ahead of ``seq``: another writer, or a reset seq."""


class RedisLostCheckpoints(StoreError):
    """Redis went back behind a checkpoint this process committed (restart without durable
    persistence, failover to a lagging replica). Memory is now ahead of Redis: the process
    must restart and reload from Redis, or replayed input would be applied twice."""


class StoreUnavailable(StoreError):
    """Redis stayed unreachable for the whole retry budget."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff: ``base * 2**n`` capped at ``cap``, ``attempts`` tries."""

    attempts: int = 20
    base: float = 0.05
    cap: float = 2.0

    def delay(self, failures: int) -> float:
        return min(self.cap, self.base * 2 ** (failures - 1))


@dataclass(frozen=True, slots=True)
class SendResult:
    """What ``send_events`` wrote: events and stream entries, per partition too."""

    events: int
    entries: int
    malformed: int
    blank: int
    per_partition: tuple[int, ...]


APPEND_LUA = """
local key, field, maxlen = KEYS[1], ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('XADD', key, '*', field, ARGV[i])
end
if maxlen > 0 then
  redis.call('XTRIM', key, 'MAXLEN', '~', maxlen)
end
return #ARGV - 2
"""
"""XADD many records to one stream in one command: ~5x faster than one XADD command each,
which redis-py packs and parses one by one. Sent with EVAL, never EVALSHA: a NOSCRIPT error
inside MULTI would surface only at EXEC, after the other commands had applied."""

RECORDS_PER_EVAL = 5000
"""Stream entries per EVAL inside a checkpoint (all in the same MULTI)."""

RECORDS_PER_ENTRY = 100
"""Change and dead-letter records packed into one stream entry, joined by ``\\n``: one XADD per
point change cost more than computing it. Trigger records stay one per entry (consumers act
per firing and acknowledge per entry)."""

ENTRY_BYTES = 64 * 1024
"""Soft byte cap of a packed entry (dead letters carry raw input of up to 64 KiB each)."""

RECORD_FIELDS = {"triggers": b"t", "changes": b"c", "dead": b"d"}
PACKED_KINDS = frozenset({"changes", "dead"})


def pack_records(records: Sequence[bytes], per_entry: int = RECORDS_PER_ENTRY) -> list[bytes]:
    """Join records into entry payloads of up to ``per_entry`` records (or ~ENTRY_BYTES).

    Records are single-line JSON; one holding a newline would be split apart by readers, so it
    is refused here, before anything is written.
    """
    entries: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for record in records:
        if b"\n" in record:
            raise ValueError(f"a record must be one line of JSON, got {record[:80]!r}")
        if chunk and (len(chunk) >= per_entry or size + len(record) > ENTRY_BYTES):
            entries.append(b"\n".join(chunk))
            chunk, size = [], 0
        chunk.append(record)
        size += len(record) + 1
    if chunk:
        entries.append(b"\n".join(chunk))
    return entries


def split_records(payload: bytes) -> list[bytes]:
    """The records of one changes/dead entry (one or more JSON lines)."""
    return [line for line in payload.split(b"\n") if line]


def trim_entries(max_records: int) -> int:
    """MAXLEN in entries for keeping about ``max_records`` records (0: never trim).

    Entries hold up to RECORDS_PER_ENTRY records, so the bound is on records when entries are
    full (busy partitions) and the stream keeps fewer records when checkpoints are small.
    """
    return 0 if max_records <= 0 else -(-max_records // RECORDS_PER_ENTRY)


def connect(url: str, *, cluster: bool = False, socket_timeout: float = 10.0) -> Client:
    """A client from a URL (password, db and ``rediss://`` TLS come from the URL).

    Internal retries are off: callers retry, so that a transaction is never re-sent blindly.
    """
    kwargs: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 5.0),
    }
    if cluster:
        return RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def call_with_retry(
    what: str, fn: Callable[[], T], policy: RetryPolicy, *, watch: bool = False
) -> T:
    """Run ``fn``, retrying RETRYABLE failures with backoff; log every retry and the recovery.

    ``watch=True`` also retries WatchError: redis-py raises it when a connection fails while
    keys are WATCHed, and the caller's next attempt re-reads what it watched.
    """
    retryable = (*RETRYABLE, WatchError) if watch else RETRYABLE
    failures = 0
    while True:
        try:
            result = fn()
        except FATAL:
            raise
        except retryable as err:
            failures += 1
            if failures >= policy.attempts:
                raise StoreUnavailable(
                    f"{what}: Redis still failing after {failures} attempts "
                    f"({type(err).__name__}: {err})"
                ) from err
            delay = policy.delay(failures)
            log.warning(
                "%s failed (%s: %s); retrying in %.2fs (attempt %d of %d)",
                what,
                type(err).__name__,
                err,
                delay,
                failures + 1,
                policy.attempts,
            )
            time.sleep(delay)
            continue
        if failures:
            log.info("%s succeeded after %d retries", what, failures)
        return result


class RedisStore:
    """Synchronous access to leadscore's Redis key layout (see ``state/keys.py``).

    ``partitions`` may be omitted by readers (``leadscore show``, the HTTP service): it is then
    read from ``{prefix}:meta``. Writers call ``ensure(partitions)`` first.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ls",
        partitions: int | None = None,
        cluster: bool = False,
        changes_maxlen: int = 100_000,
        dead_maxlen: int = 100_000,
        retry: RetryPolicy | None = None,
        socket_timeout: float = 10.0,
        mget_batch: int = 1000,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.cluster = cluster
        self.changes_maxlen = changes_maxlen
        self.dead_maxlen = dead_maxlen
        self.retry = retry or RetryPolicy()
        self.mget_batch = mget_batch
        self._partitions = partitions
        self._keys: Keys | None = None
        self._committed: dict[int, int] = {}  # last seq this process saw committed, per p
        self.r: Client = connect(url, cluster=cluster, socket_timeout=socket_timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self.r.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[], T], *, watch: bool = False) -> T:
        return call_with_retry(what, fn, self.retry, watch=watch)

    # -- layout ----------------------------------------------------------------------------

    @property
    def keys(self) -> Keys:
        """The key layout; the partition count is checked against (or read from) the meta."""
        if self._keys is None:
            meta = self._read_meta()
            if meta is None:
                if self._partitions is None:
                    raise NotInitialized(
                        f"no {self.prefix}:meta in Redis at {self._safe_url()}: nothing has "
                        f"been written with prefix {self.prefix!r} yet (run the flow or "
                        "`leadscore send` first, or pass partitions)"
                    )
                self._keys = Keys(self.prefix, self._partitions)
            else:
                self._check_meta(meta, self._partitions)
                self._keys = Keys(self.prefix, meta["partitions"])
        return self._keys

    def _safe_url(self) -> str:
        """The URL without its password, for error messages."""
        head, sep, tail = self.url.rpartition("@")
        return f"{head.split('://')[0]}://***@{tail}" if sep else self.url

    def _read_meta(self) -> dict[str, int] | None:
        raw = self._call("read meta", lambda: self.r.hgetall(f"{self.prefix}:meta"))
        if not raw:
            return None
        try:
            return {k.decode(): int(v) for k, v in raw.items()}
        except ValueError as err:
            raise MetaMismatch(f"{self.prefix}:meta is not leadscore's: {raw!r}") from err

    def _check_meta(self, meta: Mapping[str, int], partitions: int | None) -> None:
        key = f"{self.prefix}:meta"
        if meta.get("version") != LAYOUT_VERSION:
            raise MetaMismatch(
                f"{key} has layout version {meta.get('version')}, this leadscore writes "
                f"version {LAYOUT_VERSION}: use another prefix or migrate"
            )
        if "partitions" not in meta:
            raise MetaMismatch(f"{key} has no 'partitions' field")
        if partitions is not None and meta["partitions"] != partitions:
            raise MetaMismatch(
                f"{key} says the data in Redis is split into {meta['partitions']} partitions, "
                f"but this process is configured for {partitions}: contacts would be looked "
                f"up in the wrong partition. Use partitions={meta['partitions']} or another "
                "prefix."
            )

    def ensure(self, partitions: int) -> Keys:
        """Create or verify ``{prefix}:meta`` and the consumer group of every input stream.

        HSETNX makes concurrent first starts agree on one value; a disagreeing existing meta
        is refused rather than silently re-partitioning the data.
        """
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        if self._partitions is not None and self._partitions != partitions:
            raise ValueError(
                f"ensure({partitions}) on a store opened with partitions={self._partitions}"
            )
        key = f"{self.prefix}:meta"

        def write_meta() -> None:
            self.r.hsetnx(key, "version", LAYOUT_VERSION)
            self.r.hsetnx(key, "partitions", partitions)

        self._call("write meta", write_meta)
        meta = self._read_meta()
        assert meta is not None  # just written
        self._check_meta(meta, partitions)
        self._partitions = partitions
        keys = self._keys = Keys(self.prefix, partitions)

        def create_groups() -> None:
            pipe = self.r.pipeline(transaction=False)
            for p in range(partitions):
                pipe.xgroup_create(keys.input(p), GROUP, id="0", mkstream=True)
            for p, res in enumerate(pipe.execute(raise_on_error=False)):
                if isinstance(res, ResponseError) and "BUSYGROUP" not in str(res):
                    raise StoreError(f"cannot create group {GROUP} on {keys.input(p)}: {res}")
                if isinstance(res, Exception) and not isinstance(res, ResponseError):
                    raise res

        self._call("create consumer groups", create_groups)
        return keys

    # -- state -----------------------------------------------------------------------------

    def load_states(self, p: int, contacts: Iterable[str]) -> dict[str, bytes]:
        """State blobs of the given contacts of partition ``p`` (absent contacts are omitted).

        One MGET per ``mget_batch`` contacts: a multi-key read is ~8x faster than GETs.
        """
        keys = self.keys
        wanted = list(contacts)
        found: dict[str, bytes] = {}
        for i in range(0, len(wanted), self.mget_batch):
            chunk = wanted[i : i + self.mget_batch]
            names = [keys.state(p, c) for c in chunk]
            values = self._call(f"load states p={p}", lambda names=names: self.r.mget(names))
            for contact, value in zip(chunk, values, strict=True):
                if value is not None:
                    found[contact] = value
        return found

    def last_checkpoint(self, p: int) -> int:
        """The last committed checkpoint sequence of partition ``p`` (0 if none).

        A writer must continue from here after a restart: ``checkpoint`` skips a seq equal to
        the committed one and refuses a smaller one.
        """
        raw = self._call(f"read ckpt p={p}", lambda: self.r.get(self.keys.checkpoint(p)))
        seq = int(raw) if raw is not None else 0
        self._committed[p] = seq
        return seq

    def checkpoint(
        self,
        p: int,
        seq: int,
        states: Mapping[str, bytes] | None = None,
        read_models: Mapping[str, bytes] | None = None,
        triggers: Sequence[bytes] = (),
        changes: Sequence[bytes] = (),
        dead: Sequence[bytes] = (),
        ack_ids: Sequence[str | bytes] = (),
        timers: Mapping[str, float | None] | None = None,
        clock: float | None = None,
    ) -> bool:
        """Commit one batch of partition ``p`` atomically; True if this call committed it.

        ``changes`` and ``dead`` are packed RECORDS_PER_ENTRY to a stream entry; ``triggers``
        get one entry each. ``timers`` maps contacts to their next decay crossing (None: no
        timer any more), so a restarted flow re-arms timers of contacts it has not loaded;
        ``clock`` is the time they have fired up to, so it resumes firing from there.

        True also when an attempt whose reply was lost had committed (found on retry, not
        re-sent). False means an earlier call already committed ``seq``: nothing is written
        twice. ``seq`` must grow with every call; resume it from ``last_checkpoint`` after a
        restart.
        """
        keys = self.keys
        ckpt = keys.checkpoint(p)
        pairs: dict[str, bytes] = {}
        for contact, blob in (states or {}).items():
            pairs[keys.state(p, contact)] = blob
        for contact, blob in (read_models or {}).items():
            pairs[keys.read_model(p, contact)] = blob
        items = list(pairs.items())
        for record in triggers:
            if b"\n" in record:
                raise ValueError(f"a record must be one line of JSON, got {record[:80]!r}")
        change_entries = pack_records(changes)
        dead_entries = pack_records(dead)
        due: list[Any] = []
        gone: list[str] = []
        for contact, at in (timers or {}).items():
            if at is None:
                gone.append(contact)
            else:
                due += (at, contact)
        attempts = 0

        def attempt() -> bool:
            nonlocal attempts
            attempts += 1
            with self.r.pipeline(transaction=True) as pipe:
                pipe.watch(ckpt)
                raw = pipe.get(ckpt)
                done = int(raw) if raw is not None else 0
                if done < self._committed.get(p, 0):
                    raise RedisLostCheckpoints(
                        f"partition {p}: Redis holds checkpoint {done} but this process had "
                        f"committed {self._committed[p]}: Redis lost acknowledged writes "
                        "(restart without appendfsync always, or failover). Restart the flow "
                        "so it reloads state from Redis and replays the input from there."
                    )
                if done == seq:
                    if attempts > 1:
                        # An earlier attempt of this call committed; its reply was lost.
                        log.warning(
                            "checkpoint p=%d seq=%d had committed before its connection "
                            "failed; not applying it again",
                            p,
                            seq,
                        )
                        self._committed[p] = seq
                        return True
                    log.info("checkpoint p=%d seq=%d already committed; skipped", p, seq)
                    self._committed[p] = seq
                    return False
                if done > seq:
                    raise CheckpointConflict(
                        f"partition {p}: committed checkpoint is {done}, got seq {seq}; "
                        "another process writes this partition, or seq was not resumed from "
                        "last_checkpoint()"
                    )
                pipe.multi()
                for i in range(0, len(items), MSET_CHUNK):
                    # execute_command: ClusterPipeline blocks .mset() even within one slot
                    pipe.execute_command("MSET", *chain.from_iterable(items[i : i + MSET_CHUNK]))
                _append(pipe, keys.triggers(p), "t", triggers, 0)
                _append(pipe, keys.changes(p), "c", change_entries, self.changes_maxlen)
                _append(pipe, keys.dead(p), "d", dead_entries, self.dead_maxlen)
                for i in range(0, len(due), 2 * MSET_CHUNK):
                    pipe.execute_command("ZADD", keys.timers(p), *due[i : i + 2 * MSET_CHUNK])
                for i in range(0, len(gone), MSET_CHUNK):
                    pipe.execute_command("ZREM", keys.timers(p), *gone[i : i + MSET_CHUNK])
                if clock is not None:
                    pipe.set(keys.clock(p), repr(clock))
                if ack_ids:
                    pipe.xack(keys.input(p), GROUP, *ack_ids)
                pipe.set(ckpt, seq)
                pipe.execute()
                self._committed[p] = seq
                return True

        return self._call(f"checkpoint p={p} seq={seq}", attempt, watch=True)

    def load_clock(self, p: int) -> float | None:
        """The timer clock partition ``p`` committed last, or None if it never set one."""
        raw = self._call(f"read clock p={p}", lambda: self.r.get(self.keys.clock(p)))
        return None if raw is None else float(raw)

    def load_timers(self, p: int, *, page: int = 10_000) -> list[tuple[str, float]]:
        """``(contact, due)`` of every decay timer partition ``p`` committed, earliest first."""
        key = self.keys.timers(p)
        out: list[tuple[str, float]] = []
        start = 0
        while True:
            chunk = self._call(
                f"load timers p={p}",
                lambda start=start: self.r.zrange(key, start, start + page - 1, withscores=True),
            )
            out.extend((member.decode(), score) for member, score in chunk)
            if len(chunk) < page:
                return out
            start += page

    # -- read model ------------------------------------------------------------------------

    def read_model(self, contact: str) -> dict[str, Any] | None:
        """The contact's read model (``engine.view``), or None if never scored."""
        key = self.keys.contact_read_model(contact)
        raw = self._call("read model", lambda: self.r.get(key))
        return None if raw is None else orjson.loads(raw)

    # -- producer --------------------------------------------------------------------------

    def send_events(
        self, lines: Iterable[bytes | str], batch: int = 100, *, flush_entries: int = 64
    ) -> SendResult:
        """XADD JSONL events to their contacts' input streams, ``batch`` events per entry.

        Packing many events into one entry is ~7x faster end to end (DESIGN.md section 3).
        Lines whose contact cannot be read go raw to partition 0, where the flow dead-letters
        them: bad input never vanishes. Per-contact order is kept. Delivery is at-least-once:
        a retried pipeline may repeat entries, which the engine drops by event ``id``.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        keys = self.keys
        n = keys.partitions
        buffers: list[list[bytes]] = [[] for _ in range(n)]
        counts = [0] * n
        ready: list[tuple[int, bytes]] = []
        entries = malformed = blank = 0

        def flush() -> None:
            nonlocal entries
            if not ready:
                return

            def send() -> None:
                pipe = self.r.pipeline(transaction=False)
                for p, payload in ready:
                    pipe.xadd(keys.input(p), {"e": payload})
                pipe.execute()

            self._call(f"send {len(ready)} entries", send)
            entries += len(ready)
            ready.clear()

        loads, decode_error, crc32 = orjson.loads, orjson.JSONDecodeError, zlib.crc32
        for item in lines:
            raw = item.encode() if isinstance(item, str) else item
            # bytes.splitlines splits on \n, \r and \r\n only; JSON text never holds them raw
            for line in raw.splitlines():
                # inlined keys.partition_of: this loop is the producer's hot path
                try:
                    obj = loads(line)
                except decode_error:
                    if not line or line.isspace():
                        blank += 1
                        continue
                    obj = None
                if type(obj) is dict and type(contact := obj.get("contact")) is str:
                    p = crc32(contact.encode()) % n
                else:
                    malformed += 1
                    p = 0
                buf = buffers[p]
                buf.append(line)
                if len(buf) >= batch:
                    counts[p] += len(buf)
                    ready.append((p, b"\n".join(buf)))
                    buffers[p] = []
                    if len(ready) >= flush_entries:
                        flush()
        for p, buf in enumerate(buffers):
            if buf:
                counts[p] += len(buf)
                ready.append((p, b"\n".join(buf)))
        flush()
        return SendResult(sum(counts), entries, malformed, blank, tuple(counts))

    # -- readers ---------------------------------------------------------------------------

    def iter_stream(
        self, key: str, *, count: int = 1000
    ) -> Iterator[tuple[str, dict[bytes, bytes]]]:
        """Every entry of one stream, oldest first, paged with XRANGE (exclusive start)."""
        start = "-"
        while True:
            page = self._call(
                f"read {key}", lambda start=start: self.r.xrange(key, min=start, count=count)
            )
            for entry_id, fields in page:
                yield entry_id.decode(), fields
            if len(page) < count:
                return
            start = "(" + page[-1][0].decode()

    def iter_records(self, kind: str) -> Iterator[tuple[int, str, Any]]:
        """``(partition, entry id, decoded JSON)`` of every partition's triggers/changes/dead.

        A changes or dead entry holds one or more records: each is yielded with its entry id.
        """
        field = RECORD_FIELDS[kind]
        keys = self.keys
        key_of = {"triggers": keys.triggers, "changes": keys.changes, "dead": keys.dead}[kind]
        packed = kind in PACKED_KINDS
        for p in range(keys.partitions):
            for entry_id, fields in self.iter_stream(key_of(p)):
                payload = fields[field]
                if not packed:
                    yield p, entry_id, orjson.loads(payload)
                    continue
                for record in split_records(payload):
                    yield p, entry_id, orjson.loads(record)

    def read_triggers(self) -> list[Any]:
        """All trigger records, partition by partition, each in commit order."""
        return [rec for _, _, rec in self.iter_records("triggers")]

    def read_dead(self) -> list[Any]:
        """All dead letters still kept (the streams are MAXLEN-trimmed)."""
        return [rec for _, _, rec in self.iter_records("dead")]

    def pending(self, p: int) -> int:
        """Entries of partition ``p`` delivered to the flow but not yet checkpointed."""
        info = self._call(f"xpending p={p}", lambda: self.r.xpending(self.keys.input(p), GROUP))
        return int(info["pending"])


def _append(pipe: Any, key: str, field: str, entries: Sequence[bytes], max_records: int) -> None:
    """Queue XADDs of ``entries`` (field ``field``) on ``pipe``; when ``max_records`` > 0, trim
    to ``MAXLEN ~ trim_entries(max_records)``."""
    maxlen = trim_entries(max_records)
    for i in range(0, len(entries), RECORDS_PER_EVAL):
        chunk = entries[i : i + RECORDS_PER_EVAL]
        # execute_command: ClusterPipeline overrides .eval(); the slot comes from the key
        pipe.execute_command("EVAL", APPEND_LUA, 1, key, field, maxlen, *chunk)
