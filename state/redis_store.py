"""Redis as the source of truth: partitioned input streams, transactional checkpoints, read model.

Exactly-once rests on one rule: everything a partition's batch produces (contact states, read
models, trigger records, point changes, dead letters), the acknowledgement of the input it
consumed and the checkpoint sequence are written by ONE Lua script (``CHECKPOINT_LUA``), which
Redis runs atomically: no client sees part of it and a crash of the flow or of Redis cuts
before or after it, so a restart replays exactly the unacknowledged input onto the state that
matches it. (Redis does not roll a script back when one of its commands fails mid-way, e.g.
WRONGTYPE on a key someone else overwrote; leadscore's keys must be left to leadscore.)
All keys of a partition share the hash tag ``{p}``, which keeps the script legal on Redis
Cluster.

A retried checkpoint must not apply twice. The script reads the partition's ``ckpt`` key before
writing anything: if it already holds ``seq`` an earlier attempt committed (the connection died
after the script was sent) and nothing is written; a stale copy of an earlier attempt that
reaches the server late finds ``seq`` committed the same way. One round trip per checkpoint
(the WATCH / GET / MULTI..EXEC it replaced took three).

redis-py's own retries are switched off (``retry=Retry(NoBackoff(), 0)``): this module owns
retrying, bounded and logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry

from state.keys import GROUP, LAYOUT_VERSION, Keys, parse_live, serving
from state.resp import COMPILED as RESP_COMPILED
from state.resp import pack_command

try:  # redis[hiredis] installs it; without it, redis-py's own serializer packs commands
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover
    _pack_command = None

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


class Fenced(StoreError):
    """The partition's fence names another flow's lease token: this process lost the flow
    lease (``state/lease.py``) and must stop; nothing of the refused checkpoint was written."""


class LiveChanged(StoreError):
    """A publish changed the generation or rules of some partitions (or holds them for its
    switch): their checkpoints wrote nothing. ``results`` is what ``checkpoint_many`` would
    have returned (the other partitions committed); ``live`` maps each refused partition to
    its ``live`` marker now (``state.keys.parse_live``)."""

    def __init__(self, results: list[bool], live: dict[int, str]) -> None:
        super().__init__(
            "partition "
            + ", ".join(f"{p} is now {v or 'generation 0'}" for p, v in sorted(live.items()))
        )
        self.results = results
        self.live = live


class StoreUnavailable(StoreError):
    """Redis stayed unreachable for the whole retry budget."""


class StoreUnreachable(StoreError):
    """The first connection check found no Redis answering (``check_reachable``).

    ``refused_credentials``: Redis answered but refused the password or user."""

    def __init__(self, reason: str, *, refused_credentials: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused_credentials = refused_credentials


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


@dataclass(slots=True)
class Checkpoint:
    """One partition's batch for :meth:`RedisStore.checkpoint_many` (same fields as
    :meth:`RedisStore.checkpoint`)."""

    p: int
    seq: int
    states: Mapping[str, bytes] | None = None
    read_models: Mapping[str, bytes] | None = None
    triggers: Sequence[bytes] = ()
    changes: Sequence[bytes] = ()
    dead: Sequence[bytes] = ()
    ack_ids: Sequence[str | bytes] = ()
    timers: Mapping[str, float | None] | None = None
    clock: float | None = None
    # Merges (docs/redis.md, "Merging contacts"): keys of this partition to delete, aliases
    # (old id -> contact) for {prefix}:aliases, and (input stream, payload) entries for other
    # partitions. Names outside the partition's slot: single-node Redis only.
    deletes: Sequence[str] = ()
    aliases: Mapping[str, str] | None = None
    sends: Sequence[tuple[str, bytes]] = ()
    size: int = -1  # its record and value bytes, once a caller counted them (-1: not yet)


class SentCheckpoints:
    """Checkpoint script calls written to Redis ahead of reading their replies.

    :meth:`RedisStore.send_checkpoint` writes each partition's call as soon as it is built
    (once the calls held back reach SEND_AHEAD_BYTES) and :meth:`RedisStore.checkpoint_many`
    (``sent=``) reads the replies: Redis runs one partition's script while the flow builds the
    next one's, instead of all of them after the last is built (the flow's thread waited ~3 ms
    a round for them at 27k events/s; bench/README.md, "lat3"). Nothing changes for what a
    reply means: until it is read, a checkpoint is not committed as far as the flow knows.
    """

    __slots__ = ("batches", "buffer", "buffered", "calls", "conn", "error", "written")

    def __init__(self) -> None:
        self.batches: list[Checkpoint] = []
        self.calls: list[tuple[list[str], list[Any], list[Any]]] = []
        self.conn: Any = None  # the connection holding the unread replies
        self.written = 0  # calls written (or waiting in ``buffer``) on ``conn``
        self.buffer: list[bytes] = []  # packed calls not yet written (see SEND_AHEAD_BYTES)
        self.buffered = 0  # their bytes
        self.error: BaseException | None = None  # a write failed: checkpoint_many retries


SEND_AHEAD_BYTES = 0
"""Bytes of checkpoint calls :meth:`RedisStore.send_checkpoint` may hold back before it writes
them in one socket write (the rest go with the reading of their replies); 0: each call is
written as soon as it is built. Holding back saved the live flow 5-9% of its CPU at 40k
events/s on a loaded box (fewer syscalls and wake-ups of Redis), but on a quiet box 128 KiB
raised the latency at 40.3k events/s (4 interleaved pairs: p50 median 15 -> 20 ms, p99 44 ->
58, higher in 3 of 4 pairs each): a held call waits for the next partitions' apply
(bench/README.md, "live5" and "where it stands, fifth session")."""

CHECKPOINT_LUA = """#!lua
local ckpt, input, triggers, changes, dead, timers, clock, fence, live = unpack(KEYS, 1, 9)
local seq, committed = tonumber(ARGV[1]), tonumber(ARGV[2])
if ARGV[13] ~= '' then
  local owner = redis.call('GET', fence) or '0'
  if owner ~= ARGV[13] then return {4, tonumber(owner)} end
end
if ARGV[14] ~= '*' then
  local now = redis.call('GET', live) or ''
  if now ~= ARGV[14] then return {5, now} end
end
local done = tonumber(redis.call('GET', ckpt) or '0')
if done < committed then return {3, done} end
if done == seq then return {1, done} end
if done > seq then return {2, done} end
local n_ack, n_trig = tonumber(ARGV[4]), tonumber(ARGV[5])
local n_chg, n_dead = tonumber(ARGV[6]), tonumber(ARGV[7])
local n_due, n_gone = tonumber(ARGV[8]), tonumber(ARGV[9])
local chg_max, dead_max, group = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12]
local CHUNK = 500
-- MSET: KEYS[10..] pair with the values that start at ARGV[15], in the same order
local n_kv, a = #KEYS - 9, 15
for i = 1, n_kv, CHUNK do
  local args, j = {}, 0
  for k = i, math.min(i + CHUNK - 1, n_kv) do
    args[j + 1] = KEYS[9 + k]
    args[j + 2] = ARGV[a + k - 1]
    j = j + 2
  end
  redis.call('MSET', unpack(args))
end
a = a + n_kv
local function append(key, field, n, maxlen)
  for i = a, a + n - 1 do redis.call('XADD', key, '*', field, ARGV[i]) end
  if n > 0 and maxlen > 0 then redis.call('XTRIM', key, 'MAXLEN', '~', maxlen) end
  a = a + n
end
local function each_chunk(n, step, fn)
  for i = a, a + n - 1, step do fn(i, math.min(i + step - 1, a + n - 1)) end
  a = a + n
end
each_chunk(n_ack, CHUNK, function(i, j) redis.call('XACK', input, group, unpack(ARGV, i, j)) end)
append(triggers, 't', n_trig, 0)
append(changes, 'c', n_chg, chg_max)
append(dead, 'd', n_dead, dead_max)
each_chunk(2 * n_due, 2 * CHUNK, function(i, j) redis.call('ZADD', timers, unpack(ARGV, i, j)) end)
each_chunk(n_gone, CHUNK, function(i, j) redis.call('ZREM', timers, unpack(ARGV, i, j)) end)
if ARGV[3] ~= '' then redis.call('SET', clock, ARGV[3]) end
if a <= #ARGV then -- merges: DEL keys, HSET aliases, XADD to other partitions' input
  local n = tonumber(ARGV[a])
  if n > 0 then redis.call('DEL', unpack(ARGV, a + 1, a + n)) end
  a = a + 1 + n
  n = tonumber(ARGV[a])
  if n > 0 then redis.call('HSET', ARGV[a + 1], unpack(ARGV, a + 2, a + 1 + 2 * n)) end
  a = a + 2 + 2 * n
  n = tonumber(ARGV[a])
  -- field m: only a checkpoint writes hand-overs (an 'e' line that looks like one is refused)
  for i = a + 1, a + 2 * n, 2 do redis.call('XADD', ARGV[i], '*', 'm', ARGV[i + 1]) end
end
redis.call('SET', ckpt, ARGV[1])
return {0, seq}
"""
"""One whole checkpoint of one partition, atomically, in ONE round trip (see docs/redis.md).

It first compares the partition's ``ckpt`` with ``seq`` and with the last sequence this process
committed, and writes nothing unless ``seq`` is new: a retry or a stale copy of an earlier
attempt that reaches Redis late is a no-op, so no WATCH is needed. The ``#!lua`` line gives the
script Redis 7 flags semantics: a script that may write is refused BEFORE it runs when Redis is
out of memory, so a checkpoint is never half applied for want of memory. Replies:
``{0, seq}`` committed, ``{1, done}`` already committed, ``{2, done}`` a newer one is committed,
``{3, done}`` Redis is behind this process, ``{4, fence}`` another flow holds the partition (the
fencing token in ARGV[13] is not the partition's fence; '' skips the check: see
``state/lease.py``), ``{5, live}`` a publish moved the partition to another generation or rules
version, or holds it for its switch (the partition's ``live`` marker is not ARGV[14]; '*' skips
the check: see ``state/generations.py``)."""

CHECKPOINT_SHA = hashlib.sha1(CHECKPOINT_LUA.encode()).hexdigest()

CKPT_COMMITTED, CKPT_ALREADY, CKPT_CONFLICT, CKPT_LOST, CKPT_FENCED, CKPT_MOVED = 0, 1, 2, 3, 4, 5

MAX_ALIAS_CHAIN = 64  # as leadscore.identity.MAX_CHAIN: a hand-made cycle cannot loop

RECORDS_PER_ENTRY = 100
"""Change and dead-letter records packed into one stream entry, joined by ``\\n``: one XADD per
point change cost more than computing it. Trigger records stay one per entry (consumers act
per firing and acknowledge per entry)."""

ENTRY_BYTES = 64 * 1024
"""Soft byte cap of a packed entry (dead letters carry raw input of up to 64 KiB each)."""

RECORD_FIELDS = {"triggers": b"t", "changes": b"c", "dead": b"d"}
STREAM_KINDS = ("in", "triggers", "changes", "dead")
TRIM_LIMIT = 10_000
"""Entries one approximate XTRIM may remove (its LIMIT): bounds how long Redis is held."""
"""A partition's streams, as ``RedisStore.stream_sizes`` and the metrics name them."""
PACKED_KINDS = frozenset({"changes", "dead"})


def pack_records(records: Sequence[bytes], per_entry: int = RECORDS_PER_ENTRY) -> list[bytes]:
    """Join records into entry payloads of up to ``per_entry`` records (or ~ENTRY_BYTES).

    Records are single-line JSON; one holding a newline would be split apart by readers, so it
    is refused here, before anything is written.
    """
    entries: list[bytes] = []
    # Fast path: whole slices of per_entry records joined at C speed. A slice that fits the
    # byte cap is exactly what the record-by-record loop below would build, and it holds
    # len - 1 newlines unless a record brings its own.
    start = 0
    while start < len(records):
        chunk = records[start : start + per_entry]
        payload = b"\n".join(chunk)
        if len(payload) > ENTRY_BYTES or payload.count(b"\n") != len(chunk) - 1:
            break
        entries.append(payload)
        start += per_entry
    chunk = []
    size = 0
    for record in records[start:]:
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


def _packed(conn: Any, commands: Sequence[Sequence[Any]]) -> bytes:
    """``commands`` in the Redis protocol, for one socket write.

    hiredis packs a whole command in C, byte for byte what redis-py's serializer makes of str
    (UTF-8), bytes, int and float (repr) arguments; that serializer runs ~0.5-0.9 us of Python
    per argument, and a checkpoint has several per contact it writes (bench/README.md).
    Compiled, ``state.resp.pack_command`` makes the same bytes at a fraction of hiredis's cost.
    """
    if _pack_command is None or conn.encoder.encoding != "utf-8":
        return b"".join(conn.pack_commands(commands))
    if RESP_COMPILED:  # the same bytes again, without hiredis's copy and sprintf per argument
        try:
            return b"".join([pack_command(command) for command in commands])
        except TypeError:
            pass  # an argument of another type: hiredis decides (state/resp.py)
    return b"".join([_pack_command(tuple(command)) for command in commands])


def _joined(packed: list[bytes]) -> bytes:
    return packed[0] if len(packed) == 1 else b"".join(packed)


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


def check_reachable(url: str, *, timeout: float = 3.0) -> None:
    """PING ``url`` within about ``timeout`` seconds, or raise :class:`StoreUnreachable`.

    Commands call it before any work so that a Redis that is down, or a wrong URL, is one
    clear line within seconds instead of the full retry budget (meant for a Redis that goes
    away *during* a run). A refused connection is tried again until ``timeout`` (Redis may be
    starting); a refused password is final. Works on a Cluster node's URL too.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = max(0.1, deadline - time.monotonic())
        client = redis.Redis.from_url(
            url,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=left,
            socket_connect_timeout=left,
        )
        try:
            client.ping()
            return
        except redis.exceptions.BusyLoadingError:
            return  # up, loading its data: the retry policy waits for that
        except FATAL as err:
            raise StoreUnreachable(_reason(err), refused_credentials=True) from None
        except redis.exceptions.ResponseError as err:
            if "NOAUTH" in str(err) or "WRONGPASS" in str(err):
                raise StoreUnreachable(_reason(err), refused_credentials=True) from None
            return  # it answered: whatever this is, the command's own calls will report it
        except RETRYABLE as err:
            if time.monotonic() + 0.25 >= deadline:
                raise StoreUnreachable(_reason(err)) from None
            time.sleep(0.25)
        finally:
            client.close()


def _reply(reply: Any) -> tuple[int, Any]:
    """``(code, done)`` of a checkpoint script's reply; ``done`` is the ``live`` marker (str)
    for CKPT_MOVED, else a number."""
    code, done = int(reply[0]), reply[1]
    if code == CKPT_MOVED:
        return code, done.decode() if isinstance(done, bytes) else str(done)
    return code, int(done)


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".rstrip(".")


def call_with_retry(
    what: str | Callable[[], str],
    fn: Callable[[], T],
    policy: RetryPolicy,
    on_retry: Callable[[str], object] | None = None,
) -> T:
    """Run ``fn``, retrying RETRYABLE failures with backoff.

    Logs one warning per back-off step (each time the delay grows, and once when it reaches
    the cap), not per attempt, and the recovery; ``on_retry(what)`` runs on every retry (the
    live flow counts them in a Prometheus metric). ``what`` may be a function that says it:
    called only when there is something to say (a live flow checkpoints ~1,000 times a second).
    """
    failures = 0
    while True:
        try:
            result = fn()
        except FATAL:
            raise
        except RETRYABLE as err:
            if callable(what):
                what = what()
            failures += 1
            if failures >= policy.attempts:
                raise StoreUnavailable(
                    f"{what}: Redis still failing after {failures} attempts "
                    f"({type(err).__name__}: {err})"
                ) from err
            delay = policy.delay(failures)
            if on_retry is not None:
                on_retry(what)
            if failures == 1 or delay != policy.delay(failures - 1):
                at_cap = delay >= policy.cap
                log.warning(
                    "%s failed (%s: %s); retrying %s %.3gs (attempt %d of %d)%s",
                    what,
                    type(err).__name__,
                    err,
                    "every" if at_cap else "in",
                    delay,
                    failures + 1,
                    policy.attempts,
                    "; further attempts are not logged" if at_cap else "",
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
        on_retry: Callable[[str], object] | None = None,
        send_ahead_bytes: int = SEND_AHEAD_BYTES,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.cluster = cluster
        self.changes_maxlen = changes_maxlen
        self.dead_maxlen = dead_maxlen
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry  # called with the operation's name on every retry
        self.mget_batch = mget_batch
        self._partitions = partitions
        self._keys: Keys | None = None
        self._committed: dict[int, int] = {}  # last seq this process saw committed, per p
        # The flow lease's token (state/lease.py): every checkpoint must find it in its
        # partition's fence. None writes without the check (tools and tests, not the flow).
        self.fence_token: int | None = None
        # Per partition, the generation of state this process reads and writes (0 unless a
        # publish built another) and the ``live`` marker it expects: a checkpoint finding
        # another marker writes nothing (LiveChanged). Absent: generation 0, no check.
        self.generations: dict[int, int] = {}
        self.live: dict[int, str] = {}
        # (layout, p) -> the partition's own checkpoint keys and its state and read-model key
        # prefixes (_script_args)
        self._layouts: dict[tuple[Keys, int], tuple[list[str], str, str]] = {}
        # Checkpoint calls send_checkpoint holds back until they reach this many bytes.
        self.send_ahead_bytes = send_ahead_bytes
        self.r: Client = connect(url, cluster=cluster, socket_timeout=socket_timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self.r.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str | Callable[[], str], fn: Callable[[], T]) -> T:
        return call_with_retry(what, fn, self.retry, self.on_retry)

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
            # rules_* (state/versions.py) are not numbers; the layout's own fields are
            return {k.decode(): int(v) for k, v in raw.items() if not k.startswith(b"rules_")}
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

    def keys_of(self, p: int) -> Keys:
        """The layout of the generation this process uses for partition ``p``."""
        return self.keys.at(self.generations.get(p, 0))

    # -- state -----------------------------------------------------------------------------

    def load_states(self, p: int, contacts: Iterable[str]) -> dict[str, bytes]:
        """State blobs of the given contacts of partition ``p`` (absent contacts are omitted).

        One MGET per ``mget_batch`` contacts: a multi-key read is ~8x faster than GETs.
        """
        prefix = self.keys_of(p).state(p, "")  # + contact: one concatenation per key
        wanted = list(contacts)
        found: dict[str, bytes] = {}
        for i in range(0, len(wanted), self.mget_batch):
            chunk = wanted[i : i + self.mget_batch]
            names = [prefix + c for c in chunk]
            values = self._call(f"load states p={p}", lambda names=names: self._mget(names))
            for contact, value in zip(chunk, values, strict=True):
                if value is not None:
                    found[contact] = value
        return found

    def load_states_many(self, wanted: Mapping[int, Iterable[str]]) -> dict[int, dict[str, bytes]]:
        """``load_states`` of several partitions at once: one MGET per ``mget_batch`` keys in
        all, instead of one round trip per partition (a live flow's worker reads a few contacts
        of many partitions per sweep). On Redis Cluster a multi-slot MGET is refused
        (CROSSSLOT): there it is one ``load_states`` per partition."""
        found: dict[int, dict[str, bytes]] = {p: {} for p in wanted}
        if self.cluster:
            for p, contacts in wanted.items():
                found[p] = self.load_states(p, contacts)
            return found
        pairs = [(p, c) for p, contacts in wanted.items() for c in contacts]
        prefixes = {p: self.keys_of(p).state(p, "") for p in wanted}  # + contact: the key
        for i in range(0, len(pairs), self.mget_batch):
            chunk = pairs[i : i + self.mget_batch]
            names = [prefixes[p] + c for p, c in chunk]
            what = f"load states of {len(wanted)} partitions"
            values = self._call(what, lambda names=names: self._mget(names))
            for (p, contact), value in zip(chunk, values, strict=True):
                if value is not None:
                    found[p][contact] = value
        return found

    def _mget(self, names: list[str]) -> list[bytes | None]:
        return self._read(self.r.mget, "MGET", *names)  # type: ignore[no-any-return]

    def _read(self, command: Callable[..., Any], *args: Any) -> Any:
        """A read of several keys or fields (MGET, HMGET): ``command(*args[1:])``, redis-py's.
        Not on a cluster, it is written as ``args`` by :meth:`_round_trip`, so that compiled
        its arguments are packed by ``state.resp`` rather than redis-py's serializer and
        hiredis (~2,000 instructions a key: the states and aliases of contacts first seen).
        The same command and reply: these have no reply callback in redis-py."""
        if self.cluster:
            return command(*args[1:])
        reply = self._round_trip([args])[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def load_handed(self, p: int, visitor: str) -> tuple[str, bytes | None]:
        """The key and value of ``visitor``'s state taken by a publish's replay of its
        ``$take`` in the generation served for ``p`` (``Keys.handed``; None: none)."""
        key = self.keys_of(p).handed(self.keys.partition(visitor), visitor)
        return key, self._call("load handed state", lambda: self.r.get(key))

    def load_aliases(self, ids: Iterable[str]) -> dict[str, str]:
        """Which of ``ids`` were merged into another contact, and into which (one HMGET)."""
        wanted = list(ids)
        if not wanted:
            return {}
        key = self.keys.aliases
        values = self._call("load aliases", lambda: self._read(self.r.hmget, "HMGET", key, *wanted))
        # "" is an alias removed (a merge cycle broken, flows/handover.py): not merged.
        return {i: v.decode() for i, v in zip(wanted, values, strict=True) if v}

    def resolve(self, contact: str) -> tuple[str, list[str]]:
        """The contact ``contact``'s history is in now (itself unless merged), and the ids
        merged on the way (``[contact, ..., root]``); for readers (show, GET)."""
        chain = [contact]
        while len(chain) <= MAX_ALIAS_CHAIN:
            into = self.load_aliases([chain[-1]]).get(chain[-1])
            if into is None or into in chain:
                break
            chain.append(into)
        return chain[-1], chain

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
        batch = Checkpoint(
            p, seq, states, read_models, triggers, changes, dead, ack_ids, timers, clock
        )
        return self.checkpoint_many([batch])[0]

    def send_checkpoint(self, sent: SentCheckpoints, batch: Checkpoint) -> None:
        """Write ``batch``'s script call now, with those held back before it, once they
        reach ``send_ahead_bytes`` (else it is held back); :meth:`checkpoint_many` with
        ``sent`` writes what is still held and reads the replies. On Redis Cluster, or once a
        write failed, the call is only kept: ``checkpoint_many`` sends it as it would have."""
        call = self._script_args(batch)
        sent.batches.append(batch)
        sent.calls.append(call)
        if self.cluster or sent.error is not None:
            return
        names, head, tail = call
        head[1] = self._committed.get(batch.p, 0)
        try:
            if sent.conn is None:
                sent.conn = self.r.connection_pool.get_connection()
            command = ("EVALSHA", CHECKPOINT_SHA, len(names), *names, *head, *tail)
            packed = _packed(sent.conn, [command])
            sent.buffer.append(packed)
            sent.buffered += len(packed)
            sent.written += 1
            if sent.buffered >= self.send_ahead_bytes:
                buffer, sent.buffer, sent.buffered = sent.buffer, [], 0
                sent.conn.send_packed_command([_joined(buffer)])
        except Exception as err:  # raised by checkpoint_many, which retries what it can
            sent.error = err
            self.discard_sent(sent)

    def discard_sent(self, sent: SentCheckpoints) -> None:
        """Drop ``sent``'s connection if replies on it are unread (a failure, or the flow
        stopping before it read them): a connection never goes back to the pool with replies
        pending. What was sent is committed or not; the flow's next run finds out (its seq)."""
        conn, sent.conn = sent.conn, None
        sent.buffer, sent.buffered = [], 0
        if conn is not None:
            conn.disconnect()
            self.r.connection_pool.release(conn)

    def _sent_replies(self, sent: SentCheckpoints) -> list[Any]:
        """The replies of what :meth:`send_checkpoint` wrote (a ResponseError in place)."""
        if sent.error is not None:
            err, sent.error = sent.error, None
            raise err
        conn, sent.conn = sent.conn, None
        replies: list[Any] = []
        if conn is None:
            return replies
        buffer, sent.buffer, sent.buffered = sent.buffer, [], 0
        try:
            if buffer:  # held back (SEND_AHEAD_BYTES): written now
                conn.send_packed_command([_joined(buffer)])
            for _ in range(sent.written):
                try:
                    replies.append(conn.read_response())
                except ResponseError as err:
                    replies.append(err)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self.r.connection_pool.release(conn)
        return replies

    def checkpoint_many(
        self, batches: Sequence[Checkpoint], *, sent: SentCheckpoints | None = None
    ) -> list[bool]:
        """Commit several partitions' checkpoints in ONE round trip; a bool per batch.

        Each batch is its own script call, so each partition commits atomically and is
        checked against its own ``ckpt`` exactly as in :meth:`checkpoint`; the calls are only
        pipelined (one write, one read: ~170 us of client CPU instead of that per partition).
        They are independent: a partition whose sequence is refused (conflict, or Redis lost
        checkpoints) writes nothing, while the others of the same round trip commit; their
        commits are recorded, then the refusal is raised. A retry after a connection failure
        re-sends every call; those that had committed answer "already" and are not applied
        twice. On Redis Cluster the calls go one by one (each partition is its own slot).

        ``sent``: ``batches`` were written already by :meth:`send_checkpoint` (in this order);
        the first attempt reads their replies, a retry sends them again as above.
        """
        parts = [b.p for b in batches]
        if len(set(parts)) != len(parts):
            raise ValueError(f"one checkpoint per partition per call, got partitions {parts}")
        if sent is not None and [b.p for b in sent.batches] != parts:
            raise ValueError(f"sent checkpoints of partitions {[b.p for b in sent.batches]}")
        calls = sent.calls if sent is not None else [self._script_args(b) for b in batches]
        attempts = 0

        def attempt() -> list[bool]:
            nonlocal attempts
            attempts += 1
            ahead = sent if attempts == 1 and sent is not None and not self.cluster else None
            if ahead is None:
                if sent is not None:
                    self.discard_sent(sent)  # a retry: what is still unread there is abandoned
                for b, (_, head, _) in zip(batches, calls, strict=True):
                    head[1] = self._committed.get(b.p, 0)
            replies = self._run_checkpoints(calls, ahead)
            results: list[bool] = []
            refused: StoreError | None = None
            moved: dict[int, str] = {}
            for b, (code, done) in zip(batches, replies, strict=True):
                p, seq = b.p, b.seq
                if code == CKPT_MOVED:
                    moved[p] = done
                    results.append(False)
                    continue
                if code == CKPT_LOST:
                    refused = refused or RedisLostCheckpoints(
                        f"partition {p}: Redis holds checkpoint {done} but this process had "
                        f"committed {self._committed[p]}: Redis lost acknowledged writes "
                        "(restart without appendfsync always, or failover). Restart the flow "
                        "so it reloads state from Redis and replays the input from there."
                    )
                    results.append(False)
                    continue
                if code == CKPT_FENCED:
                    refused = refused or Fenced(
                        f"partition {p}: another flow holds it now (its fence is token {done}, "
                        f"this process writes with token {self.fence_token}): the flow lease "
                        "was taken over; nothing of this checkpoint was written"
                    )
                    results.append(False)
                    continue
                if code == CKPT_CONFLICT:
                    refused = refused or CheckpointConflict(
                        f"partition {p}: committed checkpoint is {done}, got seq {seq}; "
                        "another process writes this partition, or seq was not resumed from "
                        "last_checkpoint()"
                    )
                    results.append(False)
                    continue
                self._committed[p] = seq
                if code == CKPT_COMMITTED:
                    results.append(True)
                elif attempts > 1:
                    # An earlier attempt of this call committed; its reply was lost.
                    log.warning(
                        "checkpoint p=%d seq=%d had committed before its connection failed; "
                        "not applying it again",
                        p,
                        seq,
                    )
                    results.append(True)
                else:
                    log.info("checkpoint p=%d seq=%d already committed; skipped", p, seq)
                    results.append(False)
            if refused is not None:
                raise refused
            if moved:
                raise LiveChanged(results, moved)
            return results

        def what() -> str:
            return "checkpoint " + ", ".join(f"p={b.p} seq={b.seq}" for b in batches)

        return self._call(what, attempt)

    def _script_args(self, b: Checkpoint) -> tuple[list[str], list[Any], list[Any]]:
        """KEYS, ARGV header and ARGV values of one partition's call of CHECKPOINT_LUA."""
        p = b.p
        keys = self.keys_of(p)
        # The partition's own keys and its state and read-model key prefixes: the same for
        # every checkpoint of a generation (a live flow makes ~1,000 a second).
        layout = self._layouts.get((keys, p))
        if layout is None:
            layout = self._layouts[(keys, p)] = (
                [
                    keys.checkpoint(p),
                    keys.input(p),
                    keys.triggers(p),
                    keys.changes(p),
                    keys.dead(p),
                    keys.timers(p),
                    keys.clock(p),
                    keys.fence(p),
                    keys.live(p),
                ],
                keys.state(p, ""),
                keys.read_model(p, ""),
            )
        own, state_prefix, model_prefix = layout
        for record in b.triggers:
            if b"\n" in record:
                raise ValueError(f"a record must be one line of JSON, got {record[:80]!r}")
        change_entries = pack_records(b.changes) if b.changes else []
        dead_entries = pack_records(b.dead) if b.dead else []
        # KEYS: the partition's own keys, then the state and read-model keys to MSET; ARGV: a
        # header of counts, then the values in the same order (see CHECKPOINT_LUA).
        names = own.copy()
        tail: list[Any] = []
        if b.states:
            names += [state_prefix + contact for contact in b.states]
            tail += b.states.values()
        if b.read_models:
            names += [model_prefix + contact for contact in b.read_models]
            tail += b.read_models.values()
        due: list[Any] = []
        gone: list[str] = []
        for contact, at in (b.timers or {}).items():
            if at is None:
                gone.append(contact)
            else:
                due += (at, contact)
        head = [
            b.seq,
            0,  # the last sequence this process committed, filled in per attempt
            "" if b.clock is None else repr(b.clock),
            len(b.ack_ids),
            len(b.triggers),
            len(change_entries),
            len(dead_entries),
            len(due) // 2,
            len(gone),
            trim_entries(self.changes_maxlen),
            trim_entries(self.dead_maxlen),
            GROUP,
            "" if self.fence_token is None else self.fence_token,
            self.live.get(p, "*"),
        ]
        tail += b.ack_ids
        tail += b.triggers
        tail += change_entries
        tail += dead_entries
        tail += due
        tail += gone
        if b.deletes or b.aliases or b.sends:
            aliases = b.aliases or {}
            tail += [len(b.deletes), *b.deletes, len(aliases), keys.aliases]
            tail += [x for pair in aliases.items() for x in pair]
            tail += [len(b.sends), *(x for pair in b.sends for x in pair)]
        return names, head, tail

    def _run_checkpoints(
        self,
        calls: Sequence[tuple[list[str], list[Any], list[Any]]],
        sent: SentCheckpoints | None = None,
    ) -> list[tuple[int, Any]]:
        """EVALSHA every call in one pipeline (or read the replies of those ``sent`` wrote);
        EVAL (which caches it) those Redis answered NOSCRIPT.

        Redis forgets scripts on restart, failover or SCRIPT FLUSH: NOSCRIPT (nothing ran) costs
        one more round trip, once. Running the script twice is harmless (it checks ``ckpt``
        first). A reply that is another error (e.g. OOM: the script was refused before it ran)
        is raised once every reply has been read.
        """
        if self.cluster:
            return [self._run_checkpoint(*call) for call in calls]
        if sent is not None:
            replies = self._sent_replies(sent)
        else:
            replies = self._one_write(
                [("EVALSHA", CHECKPOINT_SHA, len(n), *n, *head, *tail) for n, head, tail in calls]
            )
        again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if again:
            evals = [
                ("EVAL", CHECKPOINT_LUA, len(n), *n, *h, *t)
                for n, h, t in (calls[i] for i in again)
            ]
            for i, reply in zip(again, self._one_write(evals), strict=True):
                replies[i] = reply
        out: list[tuple[int, Any]] = []
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            out.append(_reply(reply))
        return out

    def _one_write(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in ONE socket write, then read their replies in order (a
        ResponseError is returned in place, like ``execute(raise_on_error=False)``).

        redis-py's pipeline writes each packed command of more than 6 KB on its own
        (``sendall`` per command): a checkpoint is one, and on this VM each write costs tens
        of microseconds of client CPU. Any other failure drops the connection, so its socket
        never holds half-read replies.
        """
        return self._round_trip(commands)

    def _round_trip(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """:meth:`_one_write`'s work, which reads (:meth:`_read`) share: tests count the
        writes of checkpoints by wrapping that one."""
        pool = self.r.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([_packed(conn, commands)])
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except ResponseError as err:
                    replies.append(err)
            return replies
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _run_checkpoint(
        self, names: list[str], head: list[Any], tail: list[Any]
    ) -> tuple[int, Any]:
        """EVALSHA the checkpoint script; EVAL it (which caches it) if Redis does not know it.

        Redis forgets scripts on restart, failover or SCRIPT FLUSH: NOSCRIPT costs one more
        round trip, once. Running the script twice is harmless (it checks ``ckpt`` first).
        """
        # execute_command: RedisCluster routes EVAL/EVALSHA by their keys (all in slot {p})
        try:
            reply = self.r.execute_command(
                "EVALSHA", CHECKPOINT_SHA, len(names), *names, *head, *tail
            )
        except NoScriptError:
            reply = self.r.execute_command("EVAL", CHECKPOINT_LUA, len(names), *names, *head, *tail)
        return _reply(reply)

    def load_clock(self, p: int) -> float | None:
        """The timer clock partition ``p`` committed last, or None if it never set one."""
        raw = self._call(f"read clock p={p}", lambda: self.r.get(self.keys_of(p).clock(p)))
        return None if raw is None else float(raw)

    def load_timers(self, p: int, *, page: int = 10_000) -> list[tuple[str, float]]:
        """``(contact, due)`` of every decay timer partition ``p`` committed, earliest first."""
        key = self.keys_of(p).timers(p)
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
        """The contact's read model (``engine.view``), or None if never scored.

        An id merged into another contact answers with that contact's read model, plus
        ``merged_into`` (where its history went) and ``requested`` (the id asked for). Read
        from the generation the contact's partition serves (a publish may have switched it:
        ``state/generations.py``)."""
        raw = self._live_read_model(contact)
        if raw is not None:
            return orjson.loads(raw)
        root, chain = self.resolve(contact)
        if root == contact:
            return None
        raw = self._live_read_model(root)
        doc: dict[str, Any] = {} if raw is None else orjson.loads(raw)
        doc.setdefault("contact", root)
        doc["requested"] = contact
        doc["merged_into"] = chain[1:]
        return doc

    def _live_read_model(self, contact: str) -> bytes | None:
        keys = self.keys
        p = keys.partition(contact)

        def read() -> Any:
            marker = self.r.get(keys.live(p))
            held = parse_live(marker)[2] is not None  # a committed switch may serve the target
            record = self.r.hmget(keys.publishing, ["phase", "target"]) if held else None
            gen = serving(marker, record)
            return self.r.get(keys.at(gen).read_model(p, contact))

        return self._call("read model", read)

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

    def trim_input(self, p: int, minid: str) -> int:
        """``XTRIM MINID`` partition ``p``'s input stream: entries below ``minid`` go (the
        flow passes a bound at or below its last acknowledged entry, ``state/retention.py``);
        returns how many went."""
        key = self.keys.input(p)
        removed = 0
        while True:
            # Whole macro nodes first, a bounded number per call: one exact XTRIM of millions
            # of entries (the first trim of an old stream) would hold Redis for seconds.
            step = int(
                self._call(
                    f"trim input p={p}",
                    lambda: self.r.xtrim(key, minid=minid, approximate=True, limit=TRIM_LIMIT),
                )
            )
            removed += step
            if step < TRIM_LIMIT:
                break
        # then the rest below minid exactly (at most one node's worth)
        return removed + int(
            self._call(
                f"trim input p={p}", lambda: self.r.xtrim(key, minid=minid, approximate=False)
            )
        )

    def stream_sizes(self, p: int, *, samples: int = 5) -> dict[str, tuple[int, int]]:
        """``kind -> (entries, bytes)`` of partition ``p``'s streams (input, triggers, changes,
        dead letters). Bytes are ``MEMORY USAGE ... SAMPLES samples``: exact for the stream's
        structure, an estimate from ``samples`` macro nodes for its entries (O(samples), not
        O(entries))."""
        keys = self.keys
        names = [keys.input(p), keys.triggers(p), keys.changes(p), keys.dead(p)]

        def read() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for name in names:
                pipe.xlen(name)
                pipe.execute_command("MEMORY USAGE", name, "SAMPLES", samples)
            return pipe.execute()

        replies = self._call(f"stream sizes p={p}", read)
        return {
            kind: (int(replies[2 * i] or 0), int(replies[2 * i + 1] or 0))
            for i, kind in enumerate(STREAM_KINDS)
        }

    def pending(self, p: int) -> int:
        """Entries of partition ``p`` delivered to the flow but not yet checkpointed."""
        info = self._call(f"xpending p={p}", lambda: self.r.xpending(self.keys.input(p), GROUP))
        return int(info["pending"])
