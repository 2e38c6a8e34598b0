"""Live scoring from Redis Streams with transactional checkpoints to Redis.

Each partition's logic applies whole stream entries, then commits in ONE MULTI/EXEC the new
states and read models of the contacts it touched, the trigger and change records, the dead
letters and the XACK of exactly those entries. A crash anywhere replays only unacknowledged
entries onto the states that match them: nothing is lost, nothing is applied twice, and each
trigger leaves exactly once.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows import metrics
from flows.io import ResultsSink
from flows.redis_io import RedisStreamSource
from flows.scoring import DeadLetter, FlowConfig, ShardLogic
from leadscore.engine import Engine
from leadscore.events import Event, Reject, parse_event
from state.codec import decode, encode
from state.redis_store import RedisStore

log = logging.getLogger("leadscore.flow")


class PartitionLogic(ShardLogic):
    """One Redis partition: lazy state loads, flush policy, checkpoints, bounded memory."""

    def __init__(self, engine: Engine, config: FlowConfig) -> None:
        super().__init__(engine, parts=1, live=True)
        self.config = config
        self.store = RedisStore(
            config.redis_url,
            prefix=config.prefix,
            partitions=config.partitions,
            changes_maxlen=config.changes_maxlen,
        )
        self.p = -1  # learnt from the first entry: Bytewax does not hand the key to builders
        self.seq = 0
        self.stream = ""
        self.dirty: set[str] = set()
        self.acks: list[bytes | str] = []
        self.pending = 0
        self.deadline: float | None = None
        self.known = engine.rules.known_actions

    def bind(self, p: int) -> None:
        """Resume this partition's checkpoint sequence: a restart continues where it left."""
        self.p = p
        self.seq = self.store.last_checkpoint(p)
        self.stream = self.store.keys.input(p)

    # ---- Bytewax callbacks

    def on_batch(self, values: list[Any]) -> tuple[list[tuple[str, bytes]], bool]:
        now = time.time()
        if self.p < 0:
            self.bind(values[0][0])
        entries = [(eid, self.parse(eid, payload, now)) for _, eid, payload in values]
        self.load({e.contact for _, items in entries for e in items if type(e) is Event})
        scored, duplicates = self.scored, self.duplicates
        for entry_id, items in entries:
            for item in items:
                if type(item) is Event:
                    self.score(item)
                    self.dirty.add(item.contact)
                else:
                    self.rejected[item.reject.code] += 1
                    metrics.DEAD_LETTERS.labels(item.reject.code).inc()
                    self.emit("dead_letter", item.record())
            self.acks.append(entry_id)
            self.pending += len(items)
        self.reschedule()
        metrics.EVENTS_SCORED.inc(self.scored - scored)
        metrics.DUPLICATES.inc(self.duplicates - duplicates)
        if self.deadline is None:
            self.deadline = now + self.config.flush_ms / 1000.0
        if self.pending >= self.config.flush_events:
            return self.flush(), StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = self.timers[0][0] if self.timers else None
        if self.deadline is not None and (due is None or self.deadline < due):
            due = self.deadline
        return None if due is None else datetime.fromtimestamp(due, UTC)

    def on_notify(self) -> tuple[list[tuple[str, bytes]], bool]:
        now = time.time()
        self.fire_due(now)
        if self.deadline is not None and now >= self.deadline:
            return self.flush(), StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, bytes]], bool]:
        # The source stops on SIGTERM: commit what was applied, then leave cleanly.
        return self.flush(), StatefulBatchLogic.RETAIN

    # ---- input

    def parse(self, entry_id: bytes | str, payload: bytes, now: float) -> list[Any]:
        items: list[Any] = []
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        for i, raw in enumerate(payload.split(b"\n")):
            if not raw.strip():
                continue
            event = parse_event(raw, now)
            if type(event) is Event and event.action not in self.known:
                event = Reject(
                    "unknown_action",
                    f"action {event.action!r} is not used by any rule; add it to the rules "
                    "or to known_actions",
                )
            if type(event) is Event:
                items.append(event)
            else:
                items.append(DeadLetter(f"{self.stream}/{eid}/{i}", raw, event))
        return items

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

    def fire_due(self, now: float) -> list[str]:
        advanced = super().fire_due(now)
        if advanced:
            self.dirty.update(advanced)
            if self.deadline is None:
                self.deadline = now + self.config.flush_ms / 1000.0
        return advanced

    def timer_state(self, contact: str) -> Any:
        if contact not in self.contacts:
            self.load({contact})  # it left memory with its timer still set
        return self.contacts[contact]

    # ---- output

    def record(self, contact: str, effects: list[Any]) -> None:
        super().record(contact, effects)
        for effect in effects:
            trigger = getattr(effect, "trigger", None)
            if trigger is not None:
                metrics.TRIGGERS.labels(trigger).inc()

    def flush(self) -> list[tuple[str, bytes]]:
        """One checkpoint: everything applied since the last one, with its acknowledgements."""
        self.deadline = None
        if not self.dirty and not self.acks and not self.out:
            return []
        started = time.perf_counter()
        view = self.engine.view
        states = {c: encode(self.contacts[c]) for c in self.dirty}
        read_models = {c: orjson.dumps(view(c, self.contacts[c])) for c in self.dirty}
        triggers = self.out.get("triggers", [])
        changes = self.out.get("changes", [])
        dead = self.out.get("dead_letter", [])
        self.seq += 1
        self.store.checkpoint(
            self.p,
            self.seq,
            states=states,
            read_models=read_models,
            triggers=triggers,
            changes=changes,
            dead=dead,
            ack_ids=self.acks,
        )
        size = sum(map(len, states.values())) + sum(map(len, read_models.values()))
        size += sum(map(len, triggers)) + sum(map(len, changes)) + sum(map(len, dead))
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        metrics.CHECKPOINT_BYTES.observe(size)
        self.dirty.clear()
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


class _Discard(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        return None


class DiscardSink(DynamicSink[Any]):
    """Live results live in Redis; Bytewax still wants every stream to end in an output."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Discard:
        return _Discard()


def add_redis_scoring(flow: Dataflow, config: FlowConfig, engine: Engine) -> None:
    """Streams in, checkpoints out; committed records also go to `config.out` when set."""
    with RedisStore(config.redis_url, prefix=config.prefix) as store:
        keys = store.ensure(config.partitions)
    source = RedisStreamSource(config.redis_url, keys, config.partitions, tail=config.tail)
    entries = op.input("read", flow, source)
    # The logic needs its partition number and Bytewax only gives keys to the operator.
    tagged = op.map("tag", entries, lambda kv: (kv[0], (int(kv[0]), *kv[1])))
    results = op.stateful_batch("score", tagged, lambda _resume: PartitionLogic(engine, config))
    by_kind = op.map("by_kind", results, lambda kv: kv[1])
    sink = ResultsSink(config.out) if config.out else DiscardSink()
    op.output("write", by_kind, sink)
