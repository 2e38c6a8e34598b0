"""The shard logic both flows run: a shard's contacts, their timers, and what they emit.

Keyed logically by contact but physically by shard (``crc32(contact) % shards``), because a
Bytewax key costs microseconds and a shard's dict of contacts costs nanoseconds. The file flow
(``flows.scoring``) runs :class:`ShardLogic` as is; the Redis flow (``flows.redis_flow``)
subclasses it with checkpoints. Neither flow's wiring lives here.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from zlib import crc32

import orjson
from bytewax.operators import StatefulBatchLogic

from flows.heap import release_heap, settle_heap
from flows.io import OUTPUT_KINDS
from leadscore.engine import (
    ContactState,
    Duplicate,
    Effect,
    Engine,
    TriggerFired,
)
from leadscore.events import MAX_EVENT_BYTES, Event, Reject, format_ts
from leadscore.identity import Aliases
from leadscore.merge import Merged, absorb
from leadscore.records import effect_line, view_line

try:
    import cython  # compiled: local types below; interpreted: Cython's shadow, which ignores them
except ImportError:  # Cython not installed (a plain `pip install`): nothing is compiled anyway
    from leadscore import _pure as cython

log = logging.getLogger("leadscore.flow")
RAW_HEAD_BYTES = 1024  # what a dead letter keeps of a line over MAX_EVENT_BYTES
INF = float("inf")


def shard_of(contact: str, shards: int) -> int:
    return crc32(contact.encode()) % shards


# --------------------------------------------------------------------------- records


# The last instant a datetime (and RFC 3339) can hold: 9999-12-31T23:59:59Z.
LAST_INSTANT = 253402300799.0


def wake_time(due: float) -> datetime:
    """``due`` as the datetime Bytewax's ``notify_at`` takes, for any float.

    A timer due after the year 9999 (an award in 9999 that expires years later) is armed at the
    last instant instead: fromtimestamp would raise, and the live flow crashed on it at every
    restart (issue 11). It cannot come sooner than due: the clock never passes 9999 either.
    """
    if not due < LAST_INSTANT:  # NaN too
        due = LAST_INSTANT
    return datetime.fromtimestamp(max(due, 0.0), UTC)


class DeadLetter:
    """A rejected input on its way to the dead-letter output; it is counted, never lost.

    A line over the event size limit keeps only its first ``RAW_HEAD_BYTES`` and its
    ``size``: enough to find and recognise it, without copying megabytes between workers and
    into the output (or Redis).
    """

    __slots__ = ("position", "raw", "reject", "size")

    def __init__(self, position: str, raw: bytes, reject: Reject, size: int | None = None) -> None:
        self.position = position
        self.size = len(raw) if size is None else size
        self.raw = raw if self.size <= MAX_EVENT_BYTES else raw[:RAW_HEAD_BYTES]
        self.reject = reject

    def __reduce__(self) -> tuple[Any, ...]:
        return DeadLetter, (self.position, self.raw, self.reject, self.size)

    def record(self) -> bytes:
        record: dict[str, Any] = {
            "position": self.position,
            "reason": self.reject.reason,
            "code": self.reject.code,
            "raw": self.raw.decode("utf-8", "replace"),
        }
        if self.size > len(self.raw):
            record["size"] = self.size  # raw is its first RAW_HEAD_BYTES
        return orjson.dumps(record)


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
    """The output kind and JSON line for one effect (the record format: leadscore.records)."""
    kind = "triggers" if type(effect) is TriggerFired else "changes"
    return kind, effect_line(contact, effect)  # type: ignore[return-value]  # not a Duplicate


_dumps = orjson.dumps  # a global, not an attribute lookup


# --------------------------------------------------------------------------- shard logic


class ShardLogic(StatefulBatchLogic[Any, tuple[str, bytes], None]):
    """The contacts of one shard: their states, their timers and their counters.

    Emits ``(kind, chunk)`` pairs, one per output kind per batch, so downstream costs are
    per batch rather than per effect.
    """

    def __init__(
        self,
        engine: Engine,
        parts: int,
        live: bool,
        *,
        settle: bool = False,
        as_of: float | None = None,
    ) -> None:
        self.engine = engine
        self.live = live
        self.as_of = as_of  # files: the time the final views are brought to (see on_eof)
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
        # Ids merged into other contacts (identify with merge): their events go to the root.
        # The file flow routes every id a merge may join to one shard (flows.scoring), so
        # each merge finds both states here.
        self.aliases = Aliases()
        self.merged = 0

    # ---- Bytewax callbacks

    def on_batch(self, values: list[Any]) -> tuple[list[tuple[str, bytes]], bool]:
        score = self.score
        cls = type(self)  # a subclass that scores or records its own way: its methods, per event
        plain = cls.score is ShardLogic.score and cls.record is ShardLogic.record
        for value in values:
            kind = type(value)
            if kind is list:  # Parser sends one list per shard per chunk (in line order)
                if plain:
                    score_events(self, value)
                    continue
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
            return wake_time(due)
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
            # Every contact's scores at one time: the run's clock (at the end of input, the
            # latest accepted event time, the same in every shard), or a later --as-of. Each
            # view's updated_at stays its own last event or trigger.
            clock = self.clock if self.clock > -INF else None
            at = clock
            summary = self.summary()
            if self.as_of is not None:
                if clock is None or self.as_of >= clock:
                    at = self.as_of
                else:  # refused: the outputs stay at the clock, and the summary says why
                    summary["as_of_refused"] = format_ts(self.as_of)
            if at is not None:
                summary["as_of"] = format_ts(at)
            views = final_views(self.engine, self.contacts, at)
            if views:  # a shard without contacts writes no line (drain would write a blank one)
                self.out.setdefault("contacts", []).extend(views)
            self.emit("summary", orjson.dumps(summary))
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

    @cython.locals(event=Event)  # compiled: the C type, its fields read as struct members
    def score(self, event: Event) -> None:
        contact = event.contact
        if self.aliases.into:  # an empty dict is false: no cost until the first merge
            contact = self.aliases.resolve(contact)
        if event.merge is not None:
            self.absorb(contact, event)
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

    def absorb(self, known: str, event: Event) -> None:
        """Merge the ids of an identify's ``merge`` list into ``known`` (a root), before the
        event itself is applied: the identify comes after the visitor's history.

        The merge is recorded (kind ``merge``) with its effects; a refused one (the id was
        merged into another contact before) is a dead letter saying so, counted as
        ``merge_refused``, while the event itself is still scored."""
        changed, refused = absorb(self.engine, self.contacts, self.aliases, known, event)
        for reason in refused:
            reject = Reject("merge_refused", f"{reason}; the identify was scored without it")
            self.rejected[reject.code] += 1
            self.emit("dead_letter", self.refusal(event, reject))
        for change in changed:
            if type(change) is Merged:
                self.due_of.pop(change.visitor, None)  # its timer finds no state: skipped
                self.touched.discard(change.visitor)
                self.merged += 1
        if changed:
            self.record(known, changed)  # type: ignore[arg-type]
            self.touched.add(known)

    def refusal(self, event: Event, reject: Reject) -> bytes:
        """A dead letter for a merge refused while its event was scored."""
        raw = _dumps(event.to_dict())
        return DeadLetter(f"merge:{event.contact}", raw, reject).record()

    def record(self, contact: str, effects: list[Effect]) -> None:
        record_effects(self.out, self.fired, contact, effects)

    def reschedule(self) -> None:
        """Once per batch, not per event: a busy contact's timer is computed once."""
        engine, contacts, timers, due_of, clock = (
            self.engine,
            self.contacts,
            self.timers,
            self.due_of,
            self.clock,
        )
        for contact in self.touched:
            schedule_timer(engine, timers, due_of, clock, contact, contacts[contact])
        self.touched.clear()

    def schedule(self, contact: str, state: ContactState) -> None:
        schedule_timer(self.engine, self.timers, self.due_of, self.clock, contact, state)

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
        summary = {
            "scored": self.scored,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(self.rejected),
            "contacts": len(self.contacts),
            "triggers": dict(self.fired),
        }
        if self.merged:  # ids merged into other contacts (absent from contacts.jsonl)
            summary["merged"] = self.merged
        return summary


def score_events(logic: ShardLogic, items: list[Any]) -> None:
    """:meth:`ShardLogic.score` for each event of a list (what the parser sends, in line
    order), and :meth:`ShardLogic.other` for the rest: the logic's attributes read once per
    list rather than several times per event, and compiled, the engine called in C (types in
    shards.pxd). Events of merged ids and identifies that merge take ``score`` itself; the
    records go through :func:`record_effects`, as ``record`` writes them."""
    engine = logic.engine
    contacts = logic.contacts
    touched = logic.touched
    # The merged ids (Aliases.into): one dict for the logic's life, changed in place by merges
    # (absorb), so read once per list and tested per event as a C size check, not an attribute
    # lookup on the Aliases object (~170 instructions an event).
    merged = logic.aliases.into
    out = logic.out  # a batch's lines; drain() replaces it only between batches
    fired = logic.fired
    scored = 0
    duplicates = 0
    for item in items:
        if type(item) is not Event:
            logic.other(item)
            continue
        event = item  # compiled: the C type, its fields read as struct members
        if merged or event.merge is not None:
            logic.score(event)
            continue
        contact = event.contact
        state = contacts.get(contact)
        if state is None:
            state = contacts[contact] = engine.new_state()
        effects = engine.apply(state, event)
        if effects:  # most events change nothing worth a record
            if type(effects[0]) is Duplicate:
                duplicates += 1
                continue
            record_effects(out, fired, contact, effects)
        scored += 1
        touched.add(contact)
    logic.scored += scored
    logic.duplicates += duplicates


def schedule_timer(
    engine: Engine,
    timers: list[tuple[float, str]],
    due_of: dict[str, float],
    clock: float,
    contact: str,
    state: ContactState,
) -> None:
    """Arm ``contact``'s one live timer (``due_of``, on the heap ``timers``) for its next
    decay work, or drop it. A function: compiled, the engine's calls are C calls."""
    due = engine.wake_at(state)  # maybe a bound: fire_due checks it against next_due
    if due is not None and due <= clock:
        # A bound the clock has passed would wake at once only to re-arm: solve it now.
        # (Live, event times trail the wall clock, so a contact's bound often has.)
        due = engine.next_due(state)
    if due is None:
        due_of.pop(contact, None)
    elif due_of.get(contact) != due:
        due_of[contact] = due
        heapq.heappush(timers, (due, contact))


def record_effects(
    out: dict[str, list[bytes]], fired: Counter[str], contact: str, effects: list[Effect]
) -> None:
    """Each effect's output line into ``out`` (changes or triggers), triggers counted in
    ``fired``: :meth:`ShardLogic.record`, once per event with effects."""
    for effect in effects:
        line = effect_line(contact, effect)
        if type(effect) is TriggerFired:
            fired[effect.trigger] += 1
            kind = "triggers"
        else:
            kind = "changes"
        lines = out.get(kind)
        if lines is None:
            out[kind] = [line]
        else:
            lines.append(line)


def final_views(engine: Engine, contacts: dict[str, ContactState], at: float | None) -> list[bytes]:
    """Every contact's view as of ``at``, one JSON line each (``contacts.jsonl``)."""
    return [view_line(engine, contact, state, at) for contact, state in contacts.items()]
