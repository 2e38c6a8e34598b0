"""Live scoring from Redis Streams with transactional checkpoints to Redis.

Each partition's logic applies whole stream entries, then commits in ONE atomic script the new
states and read models of the contacts it touched, their decay timers and the partition's
timer clock, the trigger and change records, the dead letters and the XACK of exactly those
entries. A crash anywhere replays only unacknowledged entries onto the states that match them:
nothing is lost, nothing is applied twice, and each trigger leaves exactly once.

Decay timers must not depend on batch boundaries or on how fast a backlog is read, or a
replay after a crash would score differently from the run that crashed. So a partition's
clock is event time while it has a backlog: after each stream entry it moves to the newest
event time seen (never past the wall clock) and timers due by then fire, between entries.
Only once the source says the partition has caught up (the IDLE marker) do timers follow the
wall clock. The clock is committed with each checkpoint and resumed after a restart.

Stopping: SIGTERM or Ctrl-C (handlers from :func:`install_stop_handlers`) sets :data:`STOP`;
every input partition then ends at its next poll, each partition logic fires its due timers
and checkpoints what it applied, and the run returns normally. A second signal aborts at once,
which is safe too: whatever was not checkpointed is replayed by the next run.
"""

from __future__ import annotations

import atexit
import heapq
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

try:
    import cython  # compiled: local types below; interpreted: Cython's shadow, which ignores them
except ImportError:  # pragma: no cover - a plain install without Cython
    from leadscore import _pure as cython

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows import metrics
from flows.archive import MESSAGES, Archived, InputArchive, archive_line
from flows.config import FlowConfig
from flows.handover import MESSAGE_MARK, Handover, LiveMerges, parse_message
from flows.heap import release_heap, settle_heap
from flows.io import ResultsSink
from flows.redis_io import IDLE, Messages, RedisStreamSource, wake_by
from flows.shards import DeadLetter, ShardLogic, score_events, wake_time
from leadscore.engine import Engine
from leadscore.events import Event, Reject, format_ts, latest_ts
from leadscore.readmodel import DocumentWriter
from leadscore.typed import line_decoder, parse_events
from state.codec import decode, encode
from state.keys import Keys, parse_live
from state.lease import FlowLease
from state.redis_store import (
    Checkpoint,
    CheckpointConflict,
    LiveChanged,
    RedisStore,
    SentCheckpoints,
)
from state.retention import InputRetention, RetentionPolicy, StreamId, format_id
from state.versions import check_rules

log = logging.getLogger("leadscore.flow")

STOP = threading.Event()
"""Set to end a live run cleanly: the source stops reading, partitions flush, the run returns.
Used by every Redis run whose FlowConfig has no ``stop`` of its own."""

Value = tuple[int, str | None, bytes]
"""What the partition logic receives: ``(partition, entry id, payload)``; id None is the start
value (StartSource), id IDLE the source's caught-up marker."""

INF = float("inf")

READ_COUNT = 256
"""Stream entries per XREADGROUP of the flow's source. A batch is checkpointed at its end
(once ``flush_events`` are pending), and every checkpoint encodes and re-renders each contact
the batch touched. Catching up on a backlog of full entries (100 events) at 500k events for
50k contacts, 64 entries a read made 2.2x as many checkpoints as 256 and cost ~2 us more CPU
per event. Live traffic is read as it arrives, so its reads hold a few entries anyway; the
price is in backlogs: up to 25,600 events (~1 s of work) per checkpoint to replay after a
crash, and a longer script (tens of ms) that Redis runs while other clients wait."""


_RESERVED = Reject(
    "reserved",
    'a line starting {"$ is a hand-over message between partitions ($take, $give, $fwd), '
    "which only the flow writes; it is not accepted as input",
)
_LIVE_MERGE = Reject(
    "merge_unsupported",
    "the live flow does not merge contacts on Redis Cluster (a merge's checkpoint writes two "
    "partitions' keys): the identify was scored without its merge",
)


# --------------------------------------------------------------------------- stopping


def install_stop_handlers(stop: threading.Event = STOP) -> bool:
    """SIGTERM and SIGINT set ``stop`` (a second one exits at once); False off the main thread.

    Python runs signal handlers in the main thread only, so call this from the thread that
    imports or builds the flow (``leadscore run`` and ``python -m bytewax.run`` both do).
    """
    if threading.current_thread() is not threading.main_thread():
        return False

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s again: exiting without waiting for the checkpoint", name)
            os._exit(128 + signum)  # safe: what was not checkpointed is replayed next run
        log.warning("%s: stopping after checkpointing what was read (again to abort)", name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return True


def prepare_process(config: FlowConfig) -> None:
    """Per-process setup of a live run: stop handlers and the Prometheus endpoint."""
    stop = config.stop if config.stop is not None else STOP
    stop.clear()
    install_stop_handlers(stop)
    atexit.register(release_leases)  # a crash too: a standby need not wait for the TTL
    if config.processes > 1:
        install_peer_report(config)
    if config.metrics_port:
        metrics.serve(config.metrics_port, config.metrics_host)
        log.info("metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)


def lost_peers(config: FlowConfig) -> str:
    """Which peers of this Bytewax cluster look gone, from their lease heartbeats."""
    lease = next((lease for lease in LEASES if lease.process == config.process_id), None)
    if lease is None:
        return "its peers are unknown (no flow lease)"
    try:
        info = lease.info()
        now_s, now_us = lease.r.time()
    except Exception as err:  # the report must not hide the real failure
        return f"its peers' heartbeats could not be read ({type(err).__name__}: {err})"
    now = now_s * 1000 + now_us // 1000
    peers = [i for i in range(config.processes) if i != config.process_id]
    described = []
    for i in peers:
        who, at = info.heartbeats.get(i, ("never joined the lease", 0))
        age = f"last heartbeat {(now - at) / 1000:.1f} s ago" if at else "no heartbeat"
        described.append(f"process {i} ({who}, {age})")
    return ("lost " if len(peers) == 1 else "lost one of ") + ", ".join(described)


def install_peer_report(config: FlowConfig) -> None:
    """When a peer of this cluster dies, Bytewax's communication threads panic and every
    other process stops with a bare ``PanicException``: say which peer was lost."""
    previous = sys.excepthook

    def report(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
        previous(kind, err, tb)
        if kind.__name__ == "PanicException":
            print(
                f"leadscore: process {config.process_id} of {config.processes} stops: the "
                f"Bytewax cluster broke; {lost_peers(config)}. Restart the whole cluster: "
                "nothing is lost, what was not checkpointed is read again.",
                file=sys.stderr,
                flush=True,
            )

    sys.excepthook = report


# --------------------------------------------------------------------------- partition logic


GROUP_BYTES = 1 << 20
"""Queued input (payload bytes) applied between two checkpoint rounds (see WorkerLogics.run)."""

TRIM_EVERY = 1.0
"""Seconds between two trims of one partition's input stream (each is one XTRIM or a few)."""

SIZES_EVERY = 10.0
"""Seconds between two readings of one partition's stream sizes for the metrics."""

MAINTAIN_PER_ROUND = 2
"""Partitions trimmed (and at most one's sizes read) per commit round of a worker: each is a
round trip or more on the worker's thread, and the partitions of a run all come due in the
same round (a 4-5 ms round once a second at 39k events/s; bench/README.md, "lat4")."""

HOLD_RETRY = 0.2
"""Seconds between two checkpoint attempts of a partition a publish holds for its switch."""

COMMIT_BYTES = 8 << 20
"""About how many bytes of checkpoints share one socket write (see WorkerLogics.commit)."""


def checkpoint_bytes(batch: Checkpoint) -> int:
    """The record and value bytes a checkpoint writes (its metric, and its write's size):
    counted once, by the commit that sizes its write, and kept for ``end_flush``'s metric."""
    if batch.size >= 0:
        return batch.size
    states, read_models = batch.states or {}, batch.read_models or {}
    size = sum(map(len, states.values())) + sum(map(len, read_models.values()))
    size += sum(map(len, batch.triggers)) + sum(map(len, batch.changes))
    batch.size = size = size + sum(map(len, batch.dead))
    return size


class WorkerLogics:
    """The partition logics of one Bytewax worker thread, which share Redis round trips.

    Bytewax calls ``on_batch`` once per partition that got input, then ``notify_at`` for each
    of them. ``on_batch`` only queues its values; the first ``notify_at`` (or ``on_notify``,
    ``on_eof``) that follows runs :meth:`run`: it parses every queued partition's entries,
    loads the states of all their contacts not in memory with ONE MGET, applies each
    partition's entries in order (per-partition semantics are unchanged: clock, timers, flush
    policy), then commits every partition that is due in ONE round trip
    (``RedisStore.checkpoint_many``: one atomic script per partition, as before). With 16
    partitions a live sweep made up to 16 MGETs and as many checkpoint round trips (each
    ~170 us of client CPU); now one of each. A backlog is applied and committed in groups of
    about GROUP_BYTES of input instead, to bound memory.
    """

    def __init__(
        self, store: RedisStore, *, settle: bool = False, archive: InputArchive | None = None
    ) -> None:
        self.store = store
        self.archive = archive  # --archive: accepted input appended before each commit
        self.logics: list[PartitionLogic] = []
        self.queued: dict[PartitionLogic, list[Value]] = {}
        # A flow's workers manage the garbage collector (settle_heap) until on_eof; logics
        # driven by hand (tests) leave it alone.
        self.settle = settle
        # Checkpoints begun and written (SentCheckpoints) as soon as their partition was
        # applied and due, whose replies the next commit reads (see apply).
        self.ahead: list[tuple[PartitionLogic, Checkpoint, float]] = []
        self.sent = SentCheckpoints()

    def queue(self, logic: PartitionLogic, values: list[Value]) -> None:
        got = self.queued.get(logic)
        if got is None:
            self.queued[logic] = list(values)
        else:
            got.extend(values)

    def run(self) -> None:
        """Apply everything queued, then commit every partition due to flush.

        Partitions are applied in groups of about GROUP_BYTES of input, each followed by
        its due checkpoints: live sweeps are one group, while a backlog (full reads of 100-event
        entries, megabytes per partition) is applied and committed a partition at a time, so
        memory holds one partition's parsed batch, not every partition's (4x the peak RSS).
        """
        if self.queued:
            queued, self.queued = self.queued, {}
            group: list[tuple[PartitionLogic, list[Value]]] = []
            size = 0
            for logic, values in queued.items():
                group.append((logic, values))
                size += sum([len(v[2]) for v in values])  # a list: no generator frames
                if size >= GROUP_BYTES:
                    self.apply(group)
                    self.commit_due(time.time())
                    group, size = [], 0
            if group:
                self.apply(group)
        now = time.time()
        self.commit_due(now)
        if self.settle:
            settle_heap()

    def apply(self, group: list[tuple[PartitionLogic, list[Value]]]) -> None:
        """Parse, load every missing state with one MGET, apply each partition in order."""
        now = time.time()
        parsed = [(logic, logic.prepare(values, now)) for logic, values in group]
        wanted = {
            logic.p: missing for logic, entries in parsed if (missing := logic.missing(entries))
        }
        if wanted:
            blobs = self.store.load_states_many(wanted)
            known = self.aliases_of(parsed, wanted, blobs)
            for logic, _ in parsed:
                if logic.p in wanted:
                    logic.loaded(wanted[logic.p], blobs[logic.p], known)
        # A partition due once applied is checkpointed at once: Redis runs its script while
        # the next partitions are applied (its reply is read by the commit after the group),
        # and its entries do not wait for the others' (bench/README.md, "lat3"). Not with
        # --archive, whose lines must be appended before anything of theirs commits.
        early = self.archive is None
        for logic, entries in parsed:
            logic.apply(entries, now)
            if early and logic.due(time.time()):
                self.send_ahead(logic)

    def aliases_of(
        self,
        parsed: list[tuple[PartitionLogic, list[tuple[str, list[Any]]]]],
        wanted: dict[int, list[str]],
        blobs: dict[int, dict[str, bytes]],
    ) -> dict[str, str] | None:
        """What ``{prefix}:aliases`` holds for the ids the partitions' ``loaded`` look up
        first (those without a state: new, or merged into another contact), ``""`` for none:
        ONE HMGET for all partitions of the round, not one each (16 round trips a round, 12%
        of the worker's time at 39k events/s; bench/README.md, "lat4"). Nothing of this
        worker is written between the reads, as before: the last round's checkpoints are
        committed, this round's not yet sent."""
        asked: list[str] = []
        for logic, _ in parsed:
            if logic.merging and logic.p in wanted:
                got = blobs[logic.p]
                asked += logic.alias_lookups([c for c in wanted[logic.p] if c not in got])
        if not asked:
            return None
        known = dict.fromkeys(asked, "")
        known.update(self.store.load_aliases(list(known)))
        return known

    def send_ahead(self, logic: PartitionLogic) -> None:
        """Begin ``logic``'s checkpoint and write it to Redis; the next commit reads its reply."""
        got = logic.begin_flush()
        if got is not None:
            self.ahead.append((logic, *got))
            self.store.send_checkpoint(self.sent, got[0])

    def commit_due(self, now: float) -> None:
        """If a partition is due, commit it with every sibling due within ``flush_ms / 2``.

        Partitions' deadlines are staggered (each is ``flush_ms`` after its own last
        checkpoint), so each would otherwise get a round trip of its own: ~700 a second at
        9.6k events/s over 16 partitions. A sibling whose deadline is near commits a little
        early, in the same round trip: at most two checkpoints per ``flush_ms``.
        """
        sent = {logic for logic, _, _ in self.ahead}
        due = [logic for logic in self.logics if logic not in sent and logic.due(now)]
        if due or sent:
            soon = now + (due or list(sent))[0].config.flush_ms / 2000.0
            due += [
                logic
                for logic in self.logics
                if logic.deadline is not None
                and logic.deadline <= soon
                and logic not in sent
                and not logic.due(now)
            ]
        if due:
            self.commit(due)
        elif sent:
            self.commit([])  # read what was sent ahead

    def commit(
        self, logics: list[PartitionLogic], *, keep: bool = True
    ) -> list[list[tuple[str, bytes]]]:
        """Checkpoint ``logics`` in one round trip (one per ~COMMIT_BYTES); each one's
        committed records, which ``keep`` also leaves for the logic's next callback if
        ``config.out`` wants them."""
        done: dict[PartitionLogic, list[tuple[str, bytes]]] = {}
        # Each checkpoint is written as soon as it is built, its reply read after the last
        # (SentCheckpoints): Redis runs the scripts while the next ones are built. Not with
        # --archive, whose lines must be appended before anything of theirs commits. The
        # checkpoints apply() sent ahead come first (their records always kept: no caller
        # asked for them).
        ahead = self.archive is None
        begun, sent = self.ahead, self.sent
        early = {logic for logic, _, _ in begun}
        self.ahead, self.sent = [], SentCheckpoints()
        size = sum([checkpoint_bytes(batch) for _, batch, _ in begun])
        try:
            for logic in logics:
                if logic in early:
                    continue  # begun already: its reply is read below
                got = logic.begin_flush()
                if got is not None:
                    begun.append((logic, *got))
                    size += checkpoint_bytes(got[0])
                    if ahead:
                        self.store.send_checkpoint(sent, got[0])
                if begun and size >= COMMIT_BYTES:
                    self._committed(begun, done, keep, sent if ahead else None, early)
                    begun, size, sent = [], 0, SentCheckpoints()
            if begun:
                self._committed(begun, done, keep, sent if ahead else None, early)
        finally:
            if sent.conn is not None:
                self.store.discard_sent(sent)  # raised before reading its replies
        self.maintain(list(done))
        return [done.get(logic, []) for logic in logics]

    def _committed(
        self,
        begun: list[tuple[PartitionLogic, Checkpoint, float]],
        done: dict[PartitionLogic, list[tuple[str, bytes]]],
        keep: bool,
        sent: SentCheckpoints | None,
        early: set[PartitionLogic],
    ) -> None:
        """Commit ``begun`` (written already if ``sent``), then each logic's bookkeeping;
        committed records go to ``done``, and stay for the logic's next callback if ``keep``
        (those of ``early`` logics only stay)."""
        if self.archive is not None:  # before the commit: at least once (archive.py)
            parts = [logic.take_archived() for logic, _, _ in begun]
            self.archive.append(parts, time.time())
        try:
            results = self.store.checkpoint_many([batch for _, batch, _ in begun], sent=sent)
            moved: dict[int, str] = {}
        except LiveChanged as err:  # a publish switched (or holds) some partitions
            results, moved = err.results, err.live
        refused = [
            b for (_, b, _), ok in zip(begun, results, strict=True) if not ok and b.p not in moved
        ]
        if refused:
            # "Already committed" on a first attempt: another writer committed this
            # sequence. Dropping the batch would lose its records and acks: stop.
            raise CheckpointConflict(
                "partition "
                + ", ".join(f"{b.p} (seq {b.seq})" for b in refused)
                + ": another process committed this checkpoint sequence first, so "
                "another flow is writing the same partitions. This flow stops; "
                "nothing of the refused batch was written, its input is read again."
            )
        for committer, batch, started in begun:
            if batch.p in moved:
                committer.moved(moved[batch.p])
                continue
            committed = committer.end_flush(batch, started)
            if committer in early:  # sent ahead by apply(): no caller is handed its records
                done[committer] = []
                if committed and committer.config.out:
                    committer.ready += committed  # handed to Bytewax at its next callback
                continue
            done[committer] = committed
            if keep and committed and committer.config.out:
                committer.ready += committed

    def maintain(self, logics: list[PartitionLogic], *, force: bool = False) -> None:
        """After their checkpoints: trim what ``logics`` acknowledged beyond the retention
        (at most every TRIM_EVERY s each) and read their streams' sizes for the metrics (every
        SIZES_EVERY s); at most MAINTAIN_PER_ROUND trims and one reading per call, unless
        ``force``, so that the partitions' turns spread over the rounds."""
        now = time.monotonic()
        trims = sizes = 0
        for logic in logics:
            if logic.p < 0:
                continue  # never bound: it has no stream yet
            if force or (now - logic.maintained >= TRIM_EVERY and trims < MAINTAIN_PER_ROUND):
                logic.maintained = now
                cut = logic.retention.cut(int(time.time() * 1000))
                if cut is not None and cut != logic.trimmed:
                    trims += 1
                    metrics.INPUT_TRIMMED.inc(self.store.trim_input(logic.p, format_id(cut)))
                    logic.trimmed = cut
            if force or (now - logic.measured >= SIZES_EVERY and sizes < 1):
                sizes += 1
                logic.measured = now
                part = str(logic.p)
                for kind, (entries, size) in self.store.stream_sizes(logic.p).items():
                    metrics.STREAM_ENTRIES.labels(kind, part).set(entries)
                    metrics.STREAM_BYTES.labels(kind, part).set(size)


class WorkerThreads:
    """One :class:`WorkerLogics` (and one Redis connection) per worker thread of a flow."""

    def __init__(self, config: FlowConfig, lease: FlowLease | None = None) -> None:
        self.config = config
        self.lease = lease
        self.local = threading.local()
        self.lock = threading.Lock()
        self.running = 0  # logics built and not at their end of input yet

    def build(self, engine: Engine) -> PartitionLogic:
        """A partition's logic on this worker thread; the lease is released once every
        logic of this process has checkpointed its end of input (a standby may start then)."""
        logic = PartitionLogic(engine, self.config, self.get())
        logic.on_end = self.ended
        with self.lock:
            self.running += 1
        return logic

    def ended(self) -> None:
        with self.lock:
            self.running -= 1
            last = self.running == 0
        if last and self.lease is not None:
            self.lease.release()

    def get(self) -> WorkerLogics:
        group: WorkerLogics | None = getattr(self.local, "group", None)
        if group is None:
            store = _store(self.config)
            if self.lease is not None:
                store.fence_token = _guard(self.lease)
            archive = InputArchive(self.config.archive) if self.config.archive else None
            group = self.local.group = WorkerLogics(store, settle=True, archive=archive)
        return group


def _guard(lease: FlowLease) -> int:
    """The lease token to write with, after checking this process still holds the lease
    (a process other than 0 joins it here, once the cluster runs); raises LeaseLost."""
    token = lease.token if lease.token is not None else lease.join()
    lease.check()
    return token


def _store(config: FlowConfig) -> RedisStore:
    return RedisStore(
        config.redis_url,
        prefix=config.prefix,
        partitions=config.partitions,
        cluster=config.cluster,
        changes_maxlen=config.changes_maxlen,
        on_retry=_count_store_retry,
    )


_ENGINES: dict[tuple[str, str], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine_for(store: RedisStore, version: int, logic: PartitionLogic) -> Engine:
    """The engine of published rules ``version`` (``{prefix}:rules:{V}``): the flow's own when
    it is the same file, else built from the recorded text (once per process)."""
    keys = store.keys
    raw = store._call(
        f"read rules v{version}", lambda: store.r.hmget(keys.rules(version), ["sha256", "text"])
    )
    if raw[0] is None:
        return logic.own_engine  # not recorded: the meta's (the flow checked it at start)
    sha = raw[0].decode()
    if sha == _own_sha(logic.config.rules):
        return logic.own_engine
    with _ENGINES_LOCK:
        engine = _ENGINES.get((store.prefix, sha))
        if engine is None:
            from leadscore.rules import load_rules_text

            # a `predict:` model path is relative to the flow's own rules file's directory
            beside = Path(logic.config.rules).parent / f"published-rules-v{version}.yaml"
            engine = Engine(load_rules_text(raw[1].decode(), str(beside)))
            _ENGINES[(store.prefix, sha)] = engine
    return engine


_OWN_SHA: dict[str, str] = {}


def _own_sha(path: str) -> str:
    if path not in _OWN_SHA:
        from state.versions import rules_digest

        try:
            _OWN_SHA[path] = rules_digest(Path(path).read_bytes())
        except OSError:
            _OWN_SHA[path] = ""
    return _OWN_SHA[path]


_DECODERS: dict[frozenset[str], Callable[[bytes], Any]] = {}


def _decoder(known: frozenset[str] | set[str]) -> Callable[[bytes], Any]:
    """The line decoder of the rules' known actions (``typed.line_decoder``: msgspec hands
    back the rules' own action strings, their hashes known), one per set of actions: each
    builds a struct type, and a worker's partitions share their rules."""
    key = frozenset(known)
    got = _DECODERS.get(key)
    if got is None:
        got = _DECODERS[key] = line_decoder(key)
    return got


def _count_store_retry(what: str) -> None:
    metrics.REDIS_RETRIES.labels("store").inc()


class PartitionLogic(LiveMerges, ShardLogic):
    """One Redis partition: lazy state loads, flush policy, checkpoints, bounded memory.

    Its input is applied and committed by its thread's :class:`WorkerLogics` (a private one
    when built alone, e.g. in tests): ``on_batch`` queues, and the worker's next ``notify_at``,
    ``on_notify``, ``on_eof`` or ``flush`` applies. Committed records are handed to Bytewax at
    this partition's next callback (only when ``config.out`` wants them).
    """

    def __init__(
        self, engine: Engine, config: FlowConfig, worker: WorkerLogics | None = None
    ) -> None:
        super().__init__(engine, parts=1, live=True)
        self.config = config
        if worker is None:
            archive = InputArchive(config.archive) if config.archive else None
            worker = WorkerLogics(_store(config), archive=archive)
        self.worker = worker
        # --archive: the accepted lines parsed since the last checkpoint, and every entry
        # parsed with how many lines it gave (the archive's index, flows/archive.py)
        self.archived: list[bytes] | None = [] if self.worker.archive is not None else None
        self.archived_entries: list[tuple[str, int]] = []
        self.worker.logics.append(self)
        self.store = self.worker.store
        self.p = -1  # learnt from the first value: Bytewax does not hand the key to builders
        self.seq = 0
        self.stream = ""
        self.dirty: set[str] = set()
        self.acks: list[str] = []
        self.pending = 0
        self.deadline: float | None = None
        self.flushed_at = -INF  # time.time() of the last checkpoint (see plan_flush)
        self.known = engine.rules.known_actions
        self.decode = _decoder(self.known)  # the rules' own action strings (typed.line_decoder)
        self.documents = DocumentWriter(engine)  # the read model readers decay (readmodel.py)
        self.durable: dict[str, float] = {}  # the timers Redis holds for this partition
        self.clock = -INF  # timers due by this time have fired (event time, see module doc)
        self.committed_clock = -INF
        self.caught_up = False  # the source said it has read everything: wall-clock timers
        self.stop = config.stop if config.stop is not None else STOP
        self.reported: dict[str, int] = {}  # self.fired as last added to the metrics
        self.ready: list[tuple[str, bytes]] = []  # committed records not yet handed out
        self.on_end: Callable[[], None] | None = None  # called once its end of input is committed
        policy = RetentionPolicy(config.retain_seconds, config.retain_entries)
        self.retention = InputRetention(policy)  # where its input stream may be trimmed
        self.trimmed: StreamId | None = None  # the last cut made
        self.maintained = -INF  # time.monotonic() of the last trim
        self.measured = -INF  # time.monotonic() of the last stream size reading
        # Merges travel between partitions as messages (flows/handover.py); a multi-slot
        # script is refused on Redis Cluster, so there an identify is scored without merging.
        self.merging = not config.cluster
        self.init_merges()
        # Publishing (state/generations.py): the rules the flow started with, the input
        # applied since the last checkpoint (applied again if a publish switches the
        # partition), and until when a publish's hold defers the next checkpoint.
        self.own_engine = engine
        self.generation = 0
        self.uncommitted: list[Value] = []
        self.held_until = -INF
        self.held_since: float | None = None
        self.held_warned = -INF
        self.switched = False

    def bind(self, p: int) -> None:
        """Resume this partition where its last checkpoint left it: sequence, clock, timers.

        Timers of contacts that are not in memory (a restart, or evicted) are re-armed from
        ``{p}:timers``, so a decay crossing fires even if the contact never sends again.
        """
        self.p = p
        self.bind_live(p)
        self.seq = self.store.last_checkpoint(p)
        self.stream = self.store.keys.input(p)
        clock = self.store.load_clock(p)
        self.clock = self.committed_clock = -INF if clock is None else clock
        for contact, due in self.store.load_timers(p):
            self.durable[contact] = due
            self.due_of[contact] = due
            self.timers.append((due, contact))
        heapq.heapify(self.timers)
        if self.timers:
            log.info("partition %d: re-armed %d decay timers", p, len(self.timers))

    def bind_live(self, p: int) -> None:
        """Serve the generation and rules the partition's ``live`` marker names (during a
        publish's hold, the old ones: its checkpoints are refused until the switch)."""
        store = self.store
        raw = store._call(f"read live p={p}", lambda: store.r.get(store.keys.live(p)))
        text = (raw or b"").decode()
        live = text.partition(">")[0]
        generation, version, _ = parse_live(live)
        store.generations[p] = generation
        store.live[p] = live
        engine = self.own_engine if version is None else _engine_for(store, version, self)
        if engine is not self.engine:
            self.engine = engine
            self.known = engine.rules.known_actions
            self.decode = _decoder(self.known)
            self.documents = DocumentWriter(engine)
        self.generation = generation

    def moved(self, marker: str) -> None:
        """A publish changed this partition's ``live`` marker: nothing of the refused
        checkpoint was written. Held for a switch: keep everything and try again shortly.
        Switched: reload the partition from the new generation and rules, then apply the
        input of the refused checkpoint (and what followed) again (it is still pending)."""
        self.seq -= 1
        now = time.time()
        if parse_live(marker)[2] is not None:
            if self.held_since is None:
                self.held_since = self.held_warned = now
                log.info("partition %d: held by a publish for its switch", self.p)
            elif now - self.held_warned >= 30:
                self.held_warned = now
                log.warning(
                    "partition %d: held by a publish for %.0f s; if no `leadscore publish` "
                    "is running, run it again to finish the switch",
                    self.p,
                    now - self.held_since,
                )
            self.held_until = now + HOLD_RETRY
            self.deadline = self.held_until
            return
        self.held_since = None
        self.held_until = -INF
        values, self.uncommitted = self.uncommitted, []
        self.contacts = {}
        self.timers = []
        self.due_of = {}
        self.durable = {}
        self.dirty = set()
        self.touched = set()
        self.acks = []
        self.pending = 0
        self.out = {}
        self.deadline = None
        self.caught_up = False
        if self.archived is not None:
            self.archived = []
            self.archived_entries = []
        self.init_merges()  # the refused checkpoint's hand-overs are made again below
        self.bind(self.p)
        log.info("partition %d: switched to %s by a publish", self.p, marker or "generation 0")
        entries = self.prepare(values, now)
        missing = self.missing(entries)
        if missing:
            self.loaded(missing, self.store.load_states(self.p, missing))
        self.apply(entries, now)
        self.switched = True

    # ---- Bytewax callbacks

    def on_batch(self, values: list[Value]) -> tuple[list[tuple[str, bytes]], bool]:
        self.worker.queue(self, values)  # applied with the other partitions' (WorkerLogics)
        return self.take_ready(), StatefulBatchLogic.RETAIN

    def prepare(self, values: list[Value], now: float) -> list[tuple[str, list[Any]]]:
        """Bind on first use and parse: ``(entry id, items)`` per stream entry or marker."""
        if self.p < 0:
            self.bind(values[0][0])
        self.uncommitted += [v for v in values if v[1] is not None]
        return [
            (eid, self.parse(eid, payload, now) if eid != IDLE else [])
            for _, eid, payload in values
            if eid is not None
        ]

    def missing(self, entries: list[tuple[str, list[Any]]]) -> list[str]:
        """Contacts of ``entries`` whose state is not in memory."""
        # Not ``set - contacts.keys()``: that copies every key in memory (3.7 ms per call
        # with 100k contacts in memory).
        contacts = self.contacts
        wanted = {e.contact for _, items in entries for e in items if type(e) is Event}
        for _, items in entries:
            for item in items:
                if type(item) is Handover:  # the visitor taken, the known contact given to
                    wanted.add(item.visitor if item.kind == "take" else item.into)
        return [c for c in wanted if c not in contacts]

    def loaded(
        self, missing: list[str], blobs: dict[str, bytes], known: dict[str, str] | None = None
    ) -> None:
        """Take in the states Redis had for ``missing`` (new contacts start empty); ``known``:
        the aliases their worker looked up for them (WorkerLogics.aliases_of)."""
        new_state = self.engine.new_state
        for contact in missing:
            blob = blobs.get(contact)
            self.contacts[contact] = decode(blob) if blob is not None else new_state()
        if self.merging:
            # An id without state here may have been merged into another contact: its
            # events (and hand-overs) go to that contact, whose state may then be needed.
            self.learn_aliases([c for c in missing if c not in blobs], known)
            # Only an id the alias cache holds resolves to another (most hold none).
            resolve, into = self.aliases.resolve, self.aliases.into
            roots: set[str] = set()
            for contact in missing:
                if contact in into and (root := resolve(contact)) != contact:
                    # Not a contact of its own: an alias (its state, if Redis still has it,
                    # was handed over by a checkpoint this partition has not committed yet).
                    del self.contacts[contact]
                    if self.home(root) == self.p:
                        roots.add(root)
            self.load(roots)

    @cython.locals(event=Event, high=cython.double)
    def apply(self, entries: list[tuple[str, list[Any]]], now: float) -> None:
        """Apply parsed entries in stream order (their contacts are in memory)."""
        scored, duplicates = self.scored, self.duplicates
        dirty, touched = self.dirty, self.touched
        for entry_id, items in entries:
            if entry_id == IDLE:
                self.caught_up = True
                self.advance_clock(now)
                continue
            self.caught_up = False
            # An entry's items in order: events by the shard logic's loop (merged ids and
            # merging identifies through score()), hand-overs and dead letters by other().
            score_events(self, items)
            high = self.clock
            for item in items:
                if type(item) is Event:
                    event = item
                    if event.ts > high:
                        high = event.ts
            self.acks.append(entry_id)
            self.pending += len(items)
            # score() marks the contacts it changed (a duplicate changes nothing): once per
            # entry rather than once per event, before reschedule() clears the mark.
            dirty.update(touched)
            # Between entries, whatever the batching: the same input gives the same firings.
            self.reschedule()
            self.advance_clock(high if high < now else now)  # min: no time moved by a future event
        metrics.EVENTS_SCORED.inc(self.scored - scored)
        metrics.DUPLICATES.inc(self.duplicates - duplicates)
        self.plan_flush(now)

    def other(self, item: Any) -> None:
        """What an entry holds besides events: a hand-over message, or a dead letter."""
        if type(item) is Handover:
            self.handle(item)
        else:
            self.rejected[item.reject.code] += 1
            metrics.DEAD_LETTERS.labels(item.reject.code).inc()
            self.emit("dead_letter", item.record())

    def score(self, event: Event) -> None:
        """:meth:`LiveMerges.score`, which only an id merged into another needs: any other
        event (nearly every one) goes straight to the shard logic's, one call less."""
        if event.contact in self.aliases.into:
            LiveMerges.score(self, event)
        else:
            ShardLogic.score(self, event)

    def due(self, now: float) -> bool:
        """Whether a checkpoint is due: ``flush_events`` pending, or the deadline passed."""
        if now < self.held_until:
            return False  # a publish holds the partition (see moved)
        return self.pending >= self.config.flush_events or (
            self.deadline is not None and now >= self.deadline
        )

    def take_ready(self) -> list[tuple[str, bytes]]:
        ready, self.ready = self.ready, []
        return ready

    def plan_flush(self, now: float) -> None:
        """Set the flush deadline of what is pending: ``flush_ms`` after the first of it.

        Caught up (the last value was the IDLE marker), flush as soon as the last checkpoint
        is ``flush_ms`` old, at once if it already is: nothing else is coming to batch with,
        so waiting longer would only add latency. A partition that catches up between entries
        arriving faster than that still makes at most one checkpoint per ``flush_ms``: load
        does not multiply the checkpoints (flushing at every catch-up made 1.5x as many at
        0.5x d1 and fell further behind).
        """
        flush_s = self.config.flush_ms / 1000.0
        if self.deadline is None and (self.acks or self.dirty or self.out):
            self.deadline = now + flush_s
        if self.caught_up and self.deadline is not None:
            self.deadline = min(self.deadline, max(now, self.flushed_at + flush_s))

    def notify_at(self) -> datetime | None:
        # Bytewax calls this for every partition after the on_batch calls of an activation:
        # the first call applies what all of them queued (see WorkerLogics).
        self.worker.run()
        if self.ready:
            return datetime.now(UTC)  # committed records to hand out at on_notify
        due = self.timers[0][0] if self.timers and self.caught_up else None
        if self.deadline is not None and (due is None or self.deadline < due):
            due = self.deadline
        if due is None:
            return None
        wake_by(due)  # a blocking source read on this thread would delay the notification
        return wake_time(due)  # clamped: a timer may be due after the year 9999

    def on_notify(self) -> tuple[list[tuple[str, bytes]], bool]:
        self.worker.run()
        if self.caught_up:
            self.advance_clock(time.time())  # may set the deadline to time.time()
        self.worker.commit_due(time.time())
        return self.take_ready(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, bytes]], bool]:
        self.worker.run()
        # Drained (tail=False, no stop): nothing is left to read, so timers follow the wall
        # clock as when caught up. Stopped: unread entries may be older than the wall clock,
        # so only what was read is committed; the next run goes on from the same clock.
        if not self.config.tail and not self.stop.is_set():
            self.advance_clock(time.time())
        out = self.flush()
        self.worker.maintain([self], force=True)  # the run ends: trim what it acknowledged
        if self.on_end is not None:
            self.on_end()
            self.on_end = None
        if self.worker.settle:
            self.worker.settle = False
            release_heap()  # the run ends: nothing stays frozen in a longer-lived process
        return out, StatefulBatchLogic.RETAIN

    def advance_clock(self, t: float) -> None:
        """Move the clock to ``t`` (never back) and fire the timers due by then."""
        if t > self.clock:
            self.clock = t
        if self.timers and self.timers[0][0] <= self.clock:
            self.fire_due(self.clock)

    # ---- input

    @cython.locals(event=Event, i=cython.Py_ssize_t, marked=cython.bint, messages=cython.bint)
    def parse(self, entry_id: str, payload: bytes, now: float) -> list[Any]:
        """An entry's events in line order; a bad line becomes a dead letter, a blank one
        nothing. One chunk parse per entry: entries carry up to a hundred lines."""
        lines = payload.split(b"\n")
        items: list[Any] = []
        known = self.known
        # Live, a missing ts is the time the entry was read; one past the wall clock by more
        # than max_future is rejected, so no sender's clock can move a partition's timers.
        archived = self.archived
        latest = latest_ts(now, self.config.max_future)
        # hand-overs between partitions (flows/handover.py) come in entries of their own; a
        # line of an events entry can only start with their mark if the entry holds a '$'
        # (one memchr: most hold none, and the mark's own search costs ~7x more per byte)
        messages = type(payload) is Messages
        marked = messages or (b"$" in payload and MESSAGE_MARK in payload)
        accepted = 0
        i = 0
        for value in parse_events(lines, now, latest, False, self.decode):
            if marked and lines[i].startswith(MESSAGE_MARK):
                if not messages:
                    value = _RESERVED  # forged: only a checkpoint writes hand-overs
                else:
                    message = parse_message(lines[i], now)
                    if type(message) is Handover and not self.merging:
                        message = _LIVE_MERGE  # sent before the deployment moved to a cluster
                    elif type(message) is Handover or (
                        type(message) is Event and message.action in known
                    ):
                        items.append(message)  # a forwarded event was archived where it arrived
                        i += 1
                        continue
                    value = message
            if type(value) is Event:
                event = value
                if event.merge is not None and not self.merging:
                    # Redis Cluster: scored as a plain identify, the merge refused.
                    items.append(DeadLetter(f"{self.stream}/{entry_id}/{i}", lines[i], _LIVE_MERGE))
                    event.merge = None
                if event.action in known:
                    items.append(event)
                    if archived is not None:
                        archived.append(archive_line(lines[i], event))
                        accepted += 1
                    i += 1
                    continue
                value = Reject(
                    "unknown_action",
                    f"action {event.action!r} is not used by any rule; add it to the rules "
                    "or to known_actions",
                )
            raw = lines[i]
            if raw.strip():
                items.append(DeadLetter(f"{self.stream}/{entry_id}/{i}", raw, value))
            i += 1
        if archived is not None:
            self.archived_entries.append((entry_id, MESSAGES if messages else accepted))
        return items

    def take_archived(self) -> Archived:
        """The accepted input lines parsed since the last checkpoint and the entries they
        came from (for ``--archive``)."""
        taken = Archived(self.p, self.archived_entries, self.archived or [])
        self.archived, self.archived_entries = [], []
        return taken

    def load(self, contacts: set[str]) -> None:
        """MGET the states of contacts not in memory, in one round trip per batch."""
        missing = [c for c in contacts if c not in self.contacts]
        if not missing:
            return
        blobs = self.store.load_states(self.p, missing)
        new_state = self.engine.new_state
        for contact in missing:
            blob = blobs.get(contact)
            self.contacts[contact] = decode(blob) if blob is not None else new_state()

    # ---- timers

    def fire_due(self, now: float) -> list[str]:
        """Fire every decay crossing due by ``now``; returns the contacts advanced.

        Contacts not in memory are loaded with one MGET per round. A timer is checked against
        the contact's state first (one re-armed from Redis may predate a change), and one that
        would not move forward is dropped with a warning instead of firing in a loop.
        """
        timers, due_of, engine = self.timers, self.due_of, self.engine
        advanced: list[str] = []
        while timers and timers[0][0] <= now:
            due_now: list[tuple[float, str]] = []
            while timers and timers[0][0] <= now:
                due, contact = heapq.heappop(timers)
                if due_of.get(contact) == due:  # else the contact moved on since it was set
                    del due_of[contact]
                    due_now.append((due, contact))
            self.load({contact for _, contact in due_now})
            for due, contact in due_now:
                state = self.contacts[contact]
                advanced.append(contact)
                actual = engine.next_due(state)
                if actual == due:
                    self.record(contact, engine.advance(state, due))
                    after = engine.next_due(state)
                    if after is not None and after <= due:
                        log.warning(
                            "contact %r: the decay timer at %s does not move forward; dropped "
                            "until the contact's next event (engine bug)",
                            contact,
                            format_ts(due),
                        )
                        continue
                else:  # stale: re-arm at the real time (its durable copy is fixed at flush)
                    after = actual
                if after is not None:
                    due_of[contact] = after
                    heapq.heappush(timers, (after, contact))
        if advanced:
            self.dirty.update(advanced)
            self.plan_flush(time.time())
        return advanced

    def timer_state(self, contact: str) -> Any:
        if contact not in self.contacts:
            self.load({contact})  # it left memory (or the process restarted) with a timer set
        return self.contacts[contact]

    # ---- output

    def flush(self) -> list[tuple[str, bytes]]:
        """One checkpoint of this partition now (after applying what its worker queued):
        everything applied since the last one, with its acknowledgements. Returns the
        committed records, after any its worker's run committed on the way (those wait in
        ``ready``: at the end of input no later callback would hand them out)."""
        self.worker.run()
        self.switched = False
        committed = self.worker.commit([self], keep=False)[0]
        if self.switched:  # a publish switched the partition: commit under the new rules
            committed += self.worker.commit([self], keep=False)[0]
        return self.take_ready() + committed

    def begin_flush(self) -> tuple[Checkpoint, float] | None:
        """The checkpoint of everything applied since the last one (None if nothing is)."""
        self.deadline = None
        merges = self.merge_writes()
        if (
            not self.dirty
            and not self.acks
            and not self.out
            and not merges
            and self.clock == self.committed_clock
        ):
            return None
        self.flushed_at = time.time()
        started = time.perf_counter()
        document = self.documents.encode
        contacts, due_of, durable = self.contacts, self.due_of, self.durable
        # One pass per dirty contact: its state, its read model and, if it moved, its timer.
        states: dict[str, bytes] = {}
        read_models: dict[str, bytes] = {}
        timers: dict[str, float | None] = {}
        for c in self.dirty:
            state = contacts[c]
            states[c] = encode(state)
            read_models[c] = document(c, state)
            due = due_of.get(c)
            if durable.get(c) != due:
                timers[c] = due
        for c in self.gone:  # handed over to another contact: its timer goes too
            if c in durable:
                timers[c] = None
        self.seq += 1
        batch = Checkpoint(
            self.p,
            self.seq,
            states=states,
            read_models=read_models,
            triggers=self.out.get("triggers", []),
            changes=self.out.get("changes", []),
            dead=self.out.get("dead_letter", []),
            ack_ids=self.acks,
            timers=timers,
            clock=self.clock if self.clock != self.committed_clock else None,
            **merges,
        )
        return batch, started

    def end_flush(self, batch: Checkpoint, started: float) -> list[tuple[str, bytes]]:
        """After ``batch`` committed: bookkeeping, metrics, eviction; the committed records."""
        self.committed_clock = self.clock
        durable = self.durable
        for contact, due in (batch.timers or {}).items():
            if due is None:
                durable.pop(contact, None)
            else:
                durable[contact] = due
        size = checkpoint_bytes(batch)
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        # Triggers are counted per checkpoint from ShardLogic's counter, not per effect.
        reported = self.reported
        for trigger, n in self.fired.items():
            if n != reported.get(trigger, 0):
                metrics.TRIGGERS.labels(trigger).inc(n - reported.get(trigger, 0))
                reported[trigger] = n
        metrics.CHECKPOINT_BYTES.observe(size)
        self.retention.acked(self.acks)
        self.uncommitted = []
        self.held_since = None
        self.dirty.clear()
        self.merges_committed()
        self.acks = []
        self.pending = 0
        committed = self.drain()
        self.evict()
        metrics.CONTACTS_IN_MEMORY.labels(str(self.p)).set(len(self.contacts))
        return committed

    def evict(self) -> None:
        """Let the oldest-loaded contacts leave memory: Redis holds their committed state."""
        excess = len(self.contacts) - self.config.max_contacts
        if excess <= 0:
            return
        for contact in list(self.contacts)[:excess]:
            del self.contacts[contact]

    def snapshot(self) -> None:
        return None


# --------------------------------------------------------------------------- plumbing


class _StartPartition(StatelessSourcePartition[tuple[str, Value]]):
    def __init__(self, parts: list[int]) -> None:
        self._parts = parts

    def next_batch(self) -> list[tuple[str, Value]]:
        if not self._parts:
            raise StopIteration
        batch = [(str(p), (p, None, b"")) for p in self._parts]
        self._parts = []
        return batch


class StartSource(DynamicSource[tuple[str, Value]]):
    """One start value per partition, at once: Bytewax builds a partition's logic only when a
    value reaches it, and a restarted partition with no new input must still fire the decay
    timers it committed before the restart."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StartPartition:
        return _StartPartition(list(range(self.partitions)) if worker_index == 0 else [])


class _Discard(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        return None


class DiscardSink(DynamicSink[Any]):
    """Live results live in Redis; Bytewax still wants every stream to end in an output."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Discard:
        return _Discard()


def take_lease(config: FlowConfig, keys: Keys) -> FlowLease:
    """This process's share of the deployment's flow lease (``state/lease.py``).

    Process 0 (or the only one) takes it now, before Bytewax connects the cluster: it waits
    while another flow holds it (or is refused, ``lease_wait=False``) and fences every
    partition with its new token before anything is read. The other processes of a cluster
    join it lazily, from inside the running dataflow, when process 0 holds it.
    """
    stop = config.stop if config.stop is not None else STOP
    lease = FlowLease(
        config.redis_url,
        prefix=config.prefix,
        cluster=config.cluster,
        ttl=config.lease_ttl,
        process=config.process_id,
        stop=stop,
    )
    if config.process_id == 0:
        lease.acquire(range(config.partitions), keys.fence, wait=config.lease_wait)
    LEASES.append(lease)
    return lease


LEASES: list[FlowLease] = []
"""The leases this process's flows took (``release_leases`` gives them up at exit)."""


def release_leases() -> None:
    """Give up every lease this process holds: a standby flow takes over at once."""
    while LEASES:
        LEASES.pop().release()


def add_redis_scoring(flow: Dataflow, config: FlowConfig, engine: Engine) -> None:
    """Streams in, checkpoints out; committed records also go to `config.out` when set."""
    with RedisStore(config.redis_url, prefix=config.prefix, cluster=config.cluster) as store:
        keys = store.ensure(config.partitions)
        text = Path(config.rules).read_bytes()
        check_rules(store.r, keys, text, config.rules, publish=config.publish)
    lease = take_lease(config, keys)
    stop = config.stop if config.stop is not None else STOP
    source = RedisStreamSource(
        config.redis_url,
        keys,
        config.partitions,
        cluster=config.cluster,
        tail=config.tail,
        stop=stop,
        mark_idle=True,
        count=READ_COUNT,
        guard=lambda: _guard(lease),
    )
    entries = op.input("read", flow, source)
    # The logic needs its partition number and Bytewax only gives keys to the operator.
    tagged = op.map("tag", entries, lambda kv: (kv[0], (int(kv[0]), *kv[1])))
    started = op.input("start", flow, StartSource(config.partitions))
    values = op.merge("values", started, tagged)
    workers = WorkerThreads(config, lease)
    results = op.stateful_batch("score", values, lambda _resume: workers.build(engine))
    by_kind = op.map("by_kind", results, lambda kv: kv[1])
    sink = ResultsSink(config.out) if config.out else DiscardSink()
    op.output("write", by_kind, sink)
