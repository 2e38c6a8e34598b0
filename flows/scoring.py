"""The scoring dataflow: parse -> key by shard -> engine -> sinks.

Keyed logically by contact but physically by shard (``crc32(contact) % shards``), because a
Bytewax key costs microseconds and a shard's dict of contacts costs nanoseconds. The shard
count is fixed config, so results do not depend on how many workers run.

Time in a file replay is event time. Every input partition broadcasts its progress as ticks;
a shard's clock is the slowest partition's progress (a watermark), so a decay timer never
fires ahead of events a slower partition still has to deliver. Live, the clock is the wall
clock. Firings happen at their exact due time either way (see ``Engine.advance``).

Run it the Bytewax way::

    LEADSCORE_RULES=examples/rules.yaml LEADSCORE_EVENTS=events.jsonl LEADSCORE_OUT=out \\
        python -m bytewax.run flows.scoring:flow -w 2

or with ``leadscore run``.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zlib import crc32

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from flows.heap import release_heap, settle_heap
from flows.io import OUTPUT_KINDS, JsonlSource, ResultsSink
from leadscore.engine import (
    ContactState,
    Duplicate,
    Effect,
    Engine,
    TriggerFired,
)
from leadscore.events import Event, Reject, parse_events
from leadscore.explain import effect_record as record_of
from leadscore.rules import Rules, load_rules

log = logging.getLogger("leadscore.flow")
INF = float("inf")


@dataclass
class FlowConfig:
    """Everything a run needs; built from CLI options or ``LEADSCORE_*`` variables."""

    rules: str
    events: list[str] = field(default_factory=list)
    out: str | None = None
    shards: int = 64
    source: str = "files"  # "files" or "redis"
    redis_url: str = "redis://127.0.0.1:6379/0"
    partitions: int = 16
    prefix: str = "ls"
    flush_events: int = 2000
    flush_ms: int = 20
    max_contacts: int = 100_000
    changes_maxlen: int = 100_000
    tail: bool = True  # Redis: keep waiting for new entries; False stops once drained
    cluster: bool = False  # Redis: the URL names one node of a Redis Cluster
    metrics_port: int | None = None  # Redis: serve Prometheus metrics (prepare_process)
    metrics_host: str = "127.0.0.1"
    # Redis: setting it ends the run cleanly (read input checkpointed); None means
    # flows.redis_flow.STOP, which SIGTERM/SIGINT set once prepare_process installed handlers.
    stop: threading.Event | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FlowConfig:
        env = dict(os.environ if env is None else env)
        rules = env.get("LEADSCORE_RULES")
        if not rules:
            raise ValueError(
                "LEADSCORE_RULES is not set: point it at a rules file, "
                "e.g. LEADSCORE_RULES=examples/rules.yaml"
            )
        defaults = cls(rules=rules)
        return cls(
            rules=rules,
            events=env.get("LEADSCORE_EVENTS", "").replace(",", " ").split(),
            out=env.get("LEADSCORE_OUT") or None,
            shards=int(env.get("LEADSCORE_SHARDS", defaults.shards)),
            source=env.get("LEADSCORE_SOURCE", defaults.source),
            redis_url=env.get("LEADSCORE_REDIS_URL", defaults.redis_url),
            partitions=int(env.get("LEADSCORE_PARTITIONS", defaults.partitions)),
            prefix=env.get("LEADSCORE_PREFIX", defaults.prefix),
            flush_events=int(env.get("LEADSCORE_FLUSH_EVENTS", defaults.flush_events)),
            flush_ms=int(env.get("LEADSCORE_FLUSH_MS", defaults.flush_ms)),
            max_contacts=int(env.get("LEADSCORE_MAX_CONTACTS", defaults.max_contacts)),
            changes_maxlen=int(env.get("LEADSCORE_CHANGES_MAXLEN", defaults.changes_maxlen)),
            tail=_flag(env.get("LEADSCORE_TAIL"), defaults.tail),
            cluster=_flag(env.get("LEADSCORE_CLUSTER"), defaults.cluster),
            metrics_port=int(env["LEADSCORE_METRICS_PORT"])
            if env.get("LEADSCORE_METRICS_PORT")
            else None,
            metrics_host=env.get("LEADSCORE_METRICS_HOST", defaults.metrics_host),
        )


def _flag(value: str | None, default: bool) -> bool:
    """An on/off environment variable: 1/true/yes/on or 0/false/no/off (unset: default)."""
    if value is None or not value.strip():
        return default
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected an on/off value such as 1 or 0, got {value!r}")


def shard_of(contact: str, shards: int) -> int:
    return crc32(contact.encode()) % shards


# --------------------------------------------------------------------------- records


class DeadLetter:
    """A rejected input on its way to the dead-letter output; it is counted, never lost."""

    __slots__ = ("position", "raw", "reject")

    def __init__(self, position: str, raw: bytes, reject: Reject) -> None:
        self.position = position
        self.raw = raw
        self.reject = reject

    def __reduce__(self) -> tuple[Any, ...]:
        return DeadLetter, (self.position, self.raw, self.reject)

    def record(self) -> bytes:
        return orjson.dumps(
            {
                "position": self.position,
                "reason": self.reject.reason,
                "code": self.reject.code,
                "raw": self.raw.decode("utf-8", "replace"),
            }
        )


class Tick:
    """Input partition ``part`` has delivered every event up to ``mark`` (inf once done)."""

    __slots__ = ("high", "mark", "part")

    def __init__(self, part: int, mark: float, high: float) -> None:
        self.part = part
        self.mark = mark
        self.high = high

    def __reduce__(self) -> tuple[Any, ...]:
        return Tick, (self.part, self.mark, self.high)


def effect_record(contact: str, effect: Effect) -> tuple[str, bytes]:
    """The output kind and JSON line for one effect (the record format lives in explain)."""
    kind = "triggers" if type(effect) is TriggerFired else "changes"
    return kind, _dumps(record_of(contact, effect))


_dumps = orjson.dumps  # a global, not an attribute lookup, once per output record


# --------------------------------------------------------------------------- shard logic


class ShardLogic(StatefulBatchLogic[Any, tuple[str, bytes], None]):
    """The contacts of one shard: their states, their timers and their counters.

    Emits ``(kind, chunk)`` pairs, one per output kind per batch, so downstream costs are
    per batch rather than per effect.
    """

    def __init__(self, engine: Engine, parts: int, live: bool, *, settle: bool = False) -> None:
        self.engine = engine
        self.live = live
        # A file flow's logics manage the garbage collector (settle_heap) until on_eof;
        # logics driven by hand (tests) and the Redis flow's leave it alone.
        self.settle = settle
        self.contacts: dict[str, ContactState] = {}
        self.timers: list[tuple[float, str]] = []
        self.marks = [-INF] * parts
        self.high = -INF
        self.clock = -INF
        self.scored = 0
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()
        self.fired: Counter[str] = Counter()
        self.out: dict[str, list[bytes]] = {}
        self.touched: set[str] = set()  # contacts whose timer may have moved in this batch
        self.due_of: dict[str, float] = {}  # the one live timer of each contact

    # ---- Bytewax callbacks

    def on_batch(self, values: list[Any]) -> tuple[list[tuple[str, bytes]], bool]:
        score = self.score
        for value in values:
            kind = type(value)
            if kind is list:  # Parser sends one list per shard per chunk (in line order)
                for item in value:
                    if type(item) is Event:
                        score(item)
                    else:
                        self.other(item)
            elif kind is Event:
                score(value)
            else:
                self.other(value)
        self.reschedule()
        if self.settle:
            settle_heap()
        return self.drain(), StatefulBatchLogic.RETAIN

    def other(self, value: Any) -> None:
        """A tick or a dead letter: what arrives besides events."""
        kind = type(value)
        if kind is Tick:
            self.tick(value)
        elif kind is DeadLetter:
            self.rejected[value.reject.code] += 1
            self.emit("dead_letter", value.record())

    def notify_at(self) -> datetime | None:
        if not self.timers:
            return None
        due = self.timers[0][0]
        if self.live:
            return datetime.fromtimestamp(due, UTC)
        return datetime.now(UTC) if due <= self.clock else None

    def on_notify(self) -> tuple[list[tuple[str, bytes]], bool]:
        self.fire_due(time.time() if self.live else self.clock)
        return self.drain(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, bytes]], bool]:
        if self.settle:
            self.settle = False
            release_heap()  # the run ends: nothing stays frozen in a longer-lived process
        if not self.live:
            self.fire_due(self.clock)
            view = self.engine.view
            for contact, state in self.contacts.items():
                self.emit("contacts", orjson.dumps(view(contact, state)))
            self.emit("summary", orjson.dumps(self.summary()))
            chunks = self.drain()
            # An empty chunk for every output: each file is opened (and so truncated) even when
            # this run has nothing for it, so no stale file from an earlier run survives.
            written = {kind for kind, _ in chunks}
            chunks += [(kind, b"") for kind in OUTPUT_KINDS if kind not in written]
            return chunks, StatefulBatchLogic.RETAIN
        return self.drain(), StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None  # file replays restart from the top; Redis holds the truth live

    # ---- scoring

    def score(self, event: Event) -> None:
        contact = event.contact
        state = self.contacts.get(contact)
        if state is None:
            state = self.contacts[contact] = self.engine.new_state()
        effects = self.engine.apply(state, event)
        if effects:  # most events change nothing worth a record
            if type(effects[0]) is Duplicate:
                self.duplicates += 1
                return
            self.record(contact, effects)
        self.scored += 1
        self.touched.add(contact)

    def record(self, contact: str, effects: list[Effect]) -> None:
        # effect_record and emit inlined: this runs once per output record.
        out = self.out
        for effect in effects:
            line = _dumps(record_of(contact, effect))
            if type(effect) is TriggerFired:
                self.fired[effect.trigger] += 1
                kind = "triggers"
            else:
                kind = "changes"
            lines = out.get(kind)
            if lines is None:
                out[kind] = [line]
            else:
                lines.append(line)

    def reschedule(self) -> None:
        """Once per batch, not per event: a busy contact's timer is computed once."""
        for contact in self.touched:
            self.schedule(contact, self.contacts[contact])
        self.touched.clear()

    def schedule(self, contact: str, state: ContactState) -> None:
        due = self.engine.wake_at(state)  # maybe a bound: fire_due checks it against next_due
        if due is not None and due <= self.clock:
            # A bound the clock has passed would wake at once only to re-arm: solve it now.
            # (Live, event times trail the wall clock, so a contact's bound often has.)
            due = self.engine.next_due(state)
        if due is None:
            self.due_of.pop(contact, None)
        elif self.due_of.get(contact) != due:
            self.due_of[contact] = due
            heapq.heappush(self.timers, (due, contact))

    def tick(self, tick: Tick) -> None:
        if tick.mark > self.marks[tick.part]:
            self.marks[tick.part] = tick.mark
        if tick.high > self.high:
            self.high = tick.high
        self.clock = min(min(self.marks), self.high)

    def fire_due(self, now: float) -> list[str]:
        """Fire every decay crossing due by ``now``; returns the contacts advanced."""
        timers = self.timers
        advanced = []
        while timers and timers[0][0] <= now:
            due, contact = heapq.heappop(timers)
            if self.due_of.get(contact) != due:
                continue  # the contact moved on since this timer was set
            del self.due_of[contact]
            state = self.timer_state(contact)
            if state is None:
                continue
            actual = self.engine.next_due(state)
            if actual is None:
                continue
            if actual > due:  # set at a bound (see Engine.wake_at): wait for the crossing
                self.due_of[contact] = actual
                heapq.heappush(timers, (actual, contact))
                continue
            self.record(contact, self.engine.advance(state, due))
            following = self.engine.next_due(state)
            if following is not None and following <= due:
                # The engine must make progress past a due time; never spin on one that doesn't.
                log.error("contact %s: decay timer at %s did not advance; dropped", contact, due)
            else:
                self.schedule(contact, state)
            advanced.append(contact)
        return advanced

    def timer_state(self, contact: str) -> ContactState | None:
        return self.contacts.get(contact)

    # ---- output

    def emit(self, kind: str, line: bytes) -> None:
        lines = self.out.get(kind)
        if lines is None:
            self.out[kind] = [line]
        else:
            lines.append(line)

    def drain(self) -> list[tuple[str, bytes]]:
        if not self.out:
            return []
        chunks = [(kind, b"\n".join(lines) + b"\n") for kind, lines in self.out.items()]
        self.out = {}
        return chunks

    def summary(self) -> dict[str, Any]:
        return {
            "scored": self.scored,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
            "contacts": len(self.contacts),
            "triggers": dict(self.fired),
        }


# --------------------------------------------------------------------------- parsing


_SHARD_CACHE_MAX = 1 << 17


class Parser:
    """Turns a source chunk into keyed events, keyed dead letters and clock ticks."""

    def __init__(self, rules: Rules, shards: int) -> None:
        self.rules = rules
        self.shards = shards
        self.keys = [str(s) for s in range(shards)]
        # contact -> shard: a dict probe instead of encode + crc32 per event; bounded.
        self.shard_of_contact: dict[str, int] = {}

    def __call__(self, chunk: tuple[int, str, int, list[bytes] | None]) -> list[tuple[str, Any]]:
        """One ``(shard key, [items in line order])`` per shard with anything from the chunk.

        One Bytewax item per shard rather than per event: routing and batching cost Bytewax
        per item, and a shard's items keep their order inside the list.
        """
        part, path, first_line, lines = chunk
        shards = self.shards
        if lines is None:  # the partition is done: it will send nothing older than anything
            return [(key, Tick(part, INF, -INF)) for key in self.keys]
        now = time.time()
        known = self.rules.known_actions
        by_shard: list[list[Any]] = [[] for _ in range(shards)]
        shard_of_contact = self.shard_of_contact
        high = -INF
        for offset, event in enumerate(parse_events(lines, now)):
            if type(event) is Event:
                if event.action in known:
                    contact = event.contact
                    shard = shard_of_contact.get(contact)
                    if shard is None:
                        if len(shard_of_contact) >= _SHARD_CACHE_MAX:
                            shard_of_contact.clear()
                        shard = shard_of_contact[contact] = crc32(contact.encode()) % shards
                    by_shard[shard].append(event)
                    if event.ts > high:
                        high = event.ts
                    continue
                event = Reject(
                    "unknown_action",
                    f"action {event.action!r} is not used by any rule; add it to the rules "
                    "or to known_actions",
                )
            position = f"{path}:{first_line + offset}"
            dead = DeadLetter(position, lines[offset], event)
            by_shard[crc32(position.encode()) % shards].append(dead)
        if high > -INF:
            tick = Tick(part, high, high)
            for items in by_shard:
                items.append(tick)
        return [(key, items) for key, items in zip(self.keys, by_shard, strict=True) if items]


# --------------------------------------------------------------------------- building


def build_flow(config: FlowConfig, rules: Rules | None = None) -> Dataflow:
    """The dataflow for ``config``; raises RulesError or FileNotFoundError before running."""
    rules = rules or load_rules(config.rules)
    engine = Engine(rules)
    flow = Dataflow("leadscore")
    if config.source == "redis":
        from flows.redis_flow import add_redis_scoring

        add_redis_scoring(flow, config, engine)
        return flow
    if config.source != "files":
        raise ValueError(f"unknown source {config.source!r}; expected 'files' or 'redis'")
    source = JsonlSource(config.events)
    chunks = op.input("read", flow, source)
    keyed = op.flat_map("parse", chunks, Parser(rules, config.shards))
    parts = len(config.events)
    results = op.stateful_batch(
        "score", keyed, lambda _resume: ShardLogic(engine, parts, live=False, settle=True)
    )
    by_kind = op.map("by_kind", results, lambda kv: kv[1])
    op.output("write", by_kind, ResultsSink(config.out))
    return flow


def __getattr__(name: str) -> Any:
    # `python -m bytewax.run flows.scoring:flow` builds the flow from the environment, lazily,
    # so importing this module for build_flow needs no environment at all.
    if name == "flow":
        config = FlowConfig.from_env()
        if config.source == "redis":  # a live run: SIGTERM/Ctrl-C stop it cleanly, metrics
            from flows.redis_flow import prepare_process

            prepare_process(config)
        return build_flow(config)
    raise AttributeError(name)
