"""Publishing rules to a live deployment: rebuild a generation from history, then switch.

``leadscore publish`` (``leadscore/cli/publish.py``) parses and renders; the work is here.
A rescoring publish replays the retained input streams under the new rules into a new
generation of state (``state/generations.py``), partition by partition, in bounded memory:
states are written to Redis and leave memory as the replay goes (``max_contacts`` per
partition stay), and a contact evicted earlier is read back when it shows up again. The live
flow keeps scoring under the old rules meanwhile. The replay then catches up with what the
flow acknowledged since, holds every partition (the flow's checkpoints are refused, so the old
generation stops moving), replays the last few entries, computes each contact's trigger
differences between the generations (the switch firings), and switches every partition in
one transaction. The flow reloads each partition at its next checkpoint and applies its
uncommitted input again, under the new rules: nothing is lost or scored twice.

Firings found while replaying history are never delivered. Every step records where it is
in Redis, so a publish killed at any point is resumed by running it again.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flows.archive import MESSAGES
from flows.handover import MESSAGE_MARK, Handover
from flows.shards import ShardLogic, effect_record
from leadscore.engine import ContactState, Engine, TriggerFired
from leadscore.events import DEFAULT_MAX_FUTURE, Event, latest_ts
from leadscore.history import ArchiveHistory, HistoryError, oldest_retained
from leadscore.identity import Aliases
from leadscore.publish import CHEAP, RESCORE, UNCHANGED, Change, classify
from leadscore.readmodel import DocumentWriter
from leadscore.rebuild_merges import (
    Handed,
    ReplayMerges,
    aliases_before,
    messages_in,
    replay_together,
)
from leadscore.rules import load_rules_text
from leadscore.typed import parse_events
from state.codec import decode, encode
from state.generations import (
    SWITCHED,
    PublishError,
    Publishing,
    RulesRecord,
    abort,
    acked_upto,
    begin_publishing,
    ensure_live_record,
    finish,
    fire_once,
    hold,
    id_tuple,
    live_generation,
    marker,
    next_generation,
    next_version,
    publishing,
    read_markers,
    record_rules,
    release_lock,
    removed_entries,
    renew_lock,
    rules_record,
    set_phase,
    take_lock,
)
from state.keys import Keys, parse_live
from state.versions import live_rules, rules_digest

log = logging.getLogger("leadscore.publish")

PAGE = 500
"""Input entries per XRANGE of a replay; each page is applied, then written (one MULTI)."""

PAGE_EVENTS = 5000
"""Events a page aims at: entries packing many events (``send`` packs 100) make pages of fewer
entries, so that the contacts one page loads and writes (beside ``max_contacts``) stay few
whatever the number of contacts."""

MAX_CONTACTS = 50_000
"""Contact states a replay keeps in memory per partition; the oldest loaded leave first."""

PREPARED_FOR = 3600.0
"""Seconds after the differences are marked within which the hold must start for the switch
to re-check only the marked contacts (see Differences.mark); later, it checks every contact."""

CATCH_UP_ROUNDS = 5
"""Rounds of catching up with the live flow before holding it (each replays what the flow
acknowledged during the previous one)."""


def engine_of(text: bytes, source: str) -> Engine:
    return Engine(load_rules_text(text.decode(), source))


# --------------------------------------------------------------------------- progress


@dataclass
class Progress:
    """What a publish has done so far; ``update`` is called after every page."""

    partitions: int
    phase: str = "rebuild"
    partition: int = 0
    done_partitions: int = 0
    events: int = 0
    entries: int = 0
    fired: int = 0
    started: float = field(default_factory=time.monotonic)
    update: Callable[[Progress], None] | None = None
    total: int = 0  # input entries to replay (all retained), for the ETA
    #: events and entries the generation held when this process started (a resumed publish)
    resumed_events: int = 0
    resumed_entries: int = 0

    def tick(self) -> None:
        if self.update is not None:
            self.update(self)

    @property
    def rate(self) -> float:
        """Events per second replayed by this process."""
        elapsed = time.monotonic() - self.started
        return (self.events - self.resumed_events) / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every entry is replayed at this process's rate (None: no rate yet);
        0 once the rebuild is past them."""
        left = self.total - self.entries
        if left <= 0 or self.phase not in ("rebuild", "catch-up"):
            return 0.0
        done = self.entries - self.resumed_entries
        elapsed = time.monotonic() - self.started
        return left * elapsed / done if done > 0 else None


# --------------------------------------------------------------------------- rebuild


class MergesInHistory(PublishError):
    """Identity merges the rebuild cannot replay: their hand-over messages are gone (an
    archive keeps none, only the streams hold them)."""


class Rebuilder(ReplayMerges, ShardLogic):
    """Replays partition ``p``'s input entries under ``engine`` into one generation's keys.

    The same per-entry semantics as the live flow's partition logic on a backlog: events in
    stream order, then the partition's clock moves to the newest event time of the entry
    (never past the entry's own time) and due decay timers fire. Firings are not delivered:
    they only change the states. After every page the dirty states, read models, timers, the
    clock and the position (``upto``) are written in one transaction, so a crash resumes from
    a consistent point. Identity merges (input entries of hand-over messages) are replayed by
    :func:`replay_all` (``leadscore/rebuild_merges.py``): :meth:`replay` stops before the
    first one (``stopped``).
    """

    def __init__(
        self,
        r: Any,
        keys: Keys,
        p: int,
        engine: Engine,
        *,
        max_contacts: int = MAX_CONTACTS,
        max_future: float = DEFAULT_MAX_FUTURE,
        history: ArchiveHistory | None = None,
    ) -> None:
        super().__init__(engine, parts=1, live=True)
        self.r = r
        self.history = history  # --history: what the stream lost comes from the archive
        self.keys = keys
        self.p = p
        self.max_contacts = max_contacts
        self.max_future = max_future
        self.documents = DocumentWriter(engine)
        self.known = engine.rules.known_actions
        self.dirty: set[str] = set()
        self.upto: str | None = None
        self.events_done = 0
        self.entries_done = 0
        self.fired_total = 0
        self.track = False  # also add what each flush writes to the generation's recheck set
        self.stopped = False  # replay stopped before an entry of hand-over messages
        self.init_merges()
        self.bind()

    def bind(self) -> None:
        """Resume from what this generation holds for the partition (nothing: the start)."""
        keys, p = self.keys, self.p
        raw = self.r.hgetall(keys.upto(p))
        self.upto = raw[b"id"].decode() if b"id" in raw else None
        self.events_done = int(raw.get(b"events", 0))
        self.entries_done = int(raw.get(b"entries", 0))  # the first N entries are in it
        clock = self.r.get(keys.clock(p))
        self.clock = float(clock) if clock is not None else float("-inf")
        for member, due in self.r.zrange(keys.timers(p), 0, -1, withscores=True):
            contact = member.decode()
            self.due_of[contact] = due
            self.timers.append((due, contact))
        heapq.heapify(self.timers)

    # -- input

    def replay(self, end: str | None, progress: Progress | None = None, *, page: int = PAGE) -> int:
        """Apply the entries after ``upto`` up to ``end`` (inclusive), stopping before the
        first entry of hand-over messages (``stopped``); returns events applied.

        Entries the stream lost (trimmed) come from the archive (``history``); without one,
        or when it lacks some, refuses (HistoryError): the generation would miss events.
        """
        if end is None:
            return 0
        applied = 0
        stop = id_tuple(end)
        count = min(page, PAGE_EVENTS // 100)  # small until the events per entry are known
        while self.upto is None or id_tuple(self.upto) < stop:
            start = "-" if self.upto is None else "(" + self.upto
            batch = self.r.xrange(self.keys.input(self.p), min=start, max=end, count=count)
            if self._trimmed():  # entries after upto are gone from the stream (read or not)
                applied += self._replay_archive(end, progress, page)
                continue
            if not batch:
                break
            events = self._take(batch, progress)
            applied += events
            if self.stopped or len(batch) < count:
                break
            count = max(1, min(page, PAGE_EVENTS * len(batch) // max(events, 1)))
        return applied

    def _take(self, batch: list[Any], progress: Progress | None) -> int:
        """Apply one page of entries (up to the first of hand-over messages), then write it
        with the position it reached."""
        events, entries = self._apply_page(batch)
        self.entries_done += entries
        self.flush()
        if progress is not None:
            progress.events += events
            progress.entries += entries
            progress.tick()
        return events

    def read_entries(self, after: str | None, end: str, count: int) -> list[Any]:
        """``(entry id, fields)`` of up to ``count`` input entries after ``after`` (None: from
        the start) up to ``end``, for partitions replaying together (merges): from the
        stream only, since an archive keeps no hand-over messages."""
        start = "-" if after is None else "(" + after
        batch = self.r.xrange(self.keys.input(self.p), min=start, max=end, count=count)
        if self._trimmed():
            raise MergesInHistory(
                f"partition {self.p}: input entries after {after or 'the start'} were trimmed "
                "while identity merges were replayed, which needs their hand-over messages "
                "and only the streams hold them: nothing was switched. Keep more history "
                "(leadscore run --source ... --retain) and publish again"
            )
        return batch  # type: ignore[no-any-return]

    def _trimmed(self) -> bool:
        """Whether entries after ``upto`` were trimmed (the generation holds the first
        ``entries_done``; trimming removes the oldest first)."""
        gone = removed_entries(self.r, self.keys, self.p)
        if gone <= self.entries_done:
            return False
        if self.history is None:
            raise HistoryError(
                f"partition {self.p}: the oldest {gone:,} input entries were trimmed but this "
                f"generation holds only the first {self.entries_done:,} "
                f"(up to {self.upto or 'the start'}): the retained history is incomplete, so the "
                "new generation would miss events. Nothing was switched. Publish with "
                "--history DIR, the flow's --archive directory, or keep more history "
                "(leadscore run --source ... --retain / --retain-entries)"
            )
        return True

    def _replay_archive(self, end: str, progress: Progress | None, page: int) -> int:
        """Apply the archived entries after ``upto`` that the stream no longer holds (below
        its oldest retained entry); refuses if the archive lacks some of them."""
        assert self.history is not None
        gone = removed_entries(self.r, self.keys, self.p)  # before the seam is read
        before = oldest_retained(self.r, self.keys, self.p)
        applied = 0
        batch: list[tuple[bytes, dict[bytes, bytes]]] = []
        for entry_id, n, lines in self.history.entries(
            self.p, after=self.upto, before=before, end=end
        ):
            if n == MESSAGES:
                raise MergesInHistory(
                    f"partition {self.p}, input entry {entry_id} (archived): hand-over "
                    "messages of identity merges, which publish does not replay from an "
                    "archive: nothing was switched, the live rules and state are unchanged"
                )
            batch.append((entry_id.encode(), {b"e": b"\n".join(lines)}))
            if len(batch) >= page:
                applied += self._take(batch, progress)
                batch = []
        if batch:
            applied += self._take(batch, progress)
        if gone > self.entries_done:
            raise HistoryError(
                f"partition {self.p}: the stream lost its oldest {gone:,} input entries but "
                f"the archive {self.history.directory} holds only {self.entries_done:,} of them "
                f"(up to {self.upto or 'none'}): it has a gap (files missing or moved, or the "
                "flow ran without --archive for a while), so the new generation would miss "
                "events. Nothing was switched. Put the missing files back, or score the "
                "history in a new deployment"
            )
        return applied

    def _parse_entry(self, entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[float, list[Any]]:
        """An entry's time and items (events whose action the rules know, hand-overs)."""
        now = int(entry_id.split(b"-", 1)[0]) / 1000.0
        if b"m" in fields:  # the flow's own hand-over messages (flows/handover.py)
            return now, [
                m for m in messages_in(fields, now) if type(m) is Handover or m.action in self.known
            ]
        payload = fields.get(b"e", b"")
        lines = payload.split(b"\n")
        events = parse_events(lines, now, latest_ts(now, self.max_future))
        forged = MESSAGE_MARK in payload  # dead-lettered live as `reserved`
        return now, [
            e
            for i, e in enumerate(events)
            if type(e) is Event
            and e.action in self.known
            and not (forged and lines[i].startswith(MESSAGE_MARK))
        ]

    def _apply_items(self, now: float, items: list[Any]) -> int:
        """One entry's items, as the live flow applies an entry; returns events scored."""
        high = self.clock
        applied = 0
        for item in items:
            if type(item) is Event:
                applied += self.replay_event(item)
                if item.ts > high:
                    high = item.ts
            elif item.kind == "take":
                self.take(item)
            else:
                self.give(item)
        self.dirty.update(self.touched)
        self.reschedule()
        self.advance_to(min(high, now))
        self.events_done += applied
        self.out = {}  # firings while replaying history are never delivered
        return applied

    def _apply_page(self, batch: list[Any]) -> tuple[int, int]:
        """Apply entries up to the first of hand-over messages; (events, entries) applied."""
        parsed: list[tuple[bytes, float, list[Any]]] = []
        for entry_id, fields in batch:
            if b"m" in fields:
                self.stopped = True  # replay_all goes on, every partition together
                break
            parsed.append((entry_id, *self._parse_entry(entry_id, fields)))
        wanted = {e.contact for _, _, items in parsed for e in items}
        self._load([c for c in wanted if c not in self.contacts])
        applied = 0
        for _, now, items in parsed:
            applied += self._apply_items(now, items)
        if parsed:
            self.upto = parsed[-1][0].decode()
        return applied, len(parsed)

    def apply_entry(self, entry_id: bytes, now: float, items: list[Any]) -> int | None:
        """Apply one parsed entry (``replay_together``); None: a ``$give`` in it waits for its
        ``$take`` (see ``waiting``), and nothing of the entry was applied."""
        for item in items:
            if type(item) is Handover and item.kind == "give" and not self.can_give(item):
                return None
        applied = self._apply_items(now, items)
        self.upto = entry_id.decode()
        self.entries_done += 1
        return applied

    def _load(self, contacts: list[str]) -> None:
        keys, p = self.keys, self.p
        for i in range(0, len(contacts), 1000):
            chunk = contacts[i : i + 1000]
            blobs = self.r.mget([keys.state(p, c) for c in chunk])
            for contact, blob in zip(chunk, blobs, strict=True):
                self.contacts[contact] = (
                    decode(blob) if blob is not None else self.engine.new_state()
                )

    def timer_state(self, contact: str) -> ContactState | None:
        if contact not in self.contacts:
            self._load([contact])
        return self.contacts[contact]

    def advance_to(self, t: float) -> None:
        """Move the clock to ``t`` (never back) and fire the timers due by then."""
        if t > self.clock:
            self.clock = t
        if self.timers and self.timers[0][0] <= self.clock:
            fired = sum(self.fired.values())
            self.dirty.update(self.fire_due(self.clock))
            self.fired_total += sum(self.fired.values()) - fired
        self.out = {}

    # -- output

    def flush(self, pipe: Any = None) -> None:
        """Write what changed (one transaction), then let the oldest contacts leave memory.
        Given ``pipe`` (a transaction of several partitions), only queue the writes: the
        caller executes it, then calls :meth:`written`."""
        keys, p = self.keys, self.p
        own = pipe is None
        if own:
            pipe = self.r.pipeline(transaction=True)
        items: dict[str, bytes] = {}
        due: dict[str, float] = {}
        gone: list[str] = []
        for contact in self.dirty:
            state = self.contacts[contact]
            items[keys.state(p, contact)] = encode(state)
            items[keys.read_model(p, contact)] = self.documents.encode(contact, state)
            at = self.due_of.get(contact)
            if at is None:
                gone.append(contact)
            else:
                due[contact] = at
        self.merge_writes(pipe)
        if items:  # MSET by name: redis-py's cluster pipeline refuses .mset (one slot here)
            pipe.execute_command("MSET", *(x for kv in items.items() for x in kv))
        if due:
            pipe.zadd(keys.timers(p), due)
        if gone:
            pipe.zrem(keys.timers(p), *gone)
        if self.track and self.dirty:
            pipe.sadd(keys.recheck(p), *self.dirty)
        if self.clock > float("-inf"):
            pipe.set(keys.clock(p), repr(self.clock))
        mapping: dict[str, Any] = {"events": self.events_done, "entries": self.entries_done}
        if self.upto is not None:
            mapping["id"] = self.upto
        pipe.hset(keys.upto(p), mapping=mapping)
        if own:
            pipe.execute()
            self.written()

    def written(self) -> None:
        """After the flush's transaction: forget what it wrote, evict the oldest contacts."""
        self.dirty.clear()
        self.merges_written()
        excess = len(self.contacts) - self.max_contacts
        if excess > 0:
            for contact in list(self.contacts)[:excess]:
                del self.contacts[contact]


def replay_all(
    make: Callable[[int], Rebuilder],
    ends: dict[int, str | None],
    progress: Progress | None = None,
    *,
    aliases: Aliases,
    handed: Handed,
    final: bool = False,
    done: Callable[[Rebuilder], None] | None = None,
    max_contacts: int = MAX_CONTACTS,
    page: int = PAGE,
) -> int:
    """Replay every partition to its end (``ends``), merges included; returns events applied.

    Without links made before (``aliases`` empty), each partition replays alone, one at a
    time in memory, up to its first entry of hand-over messages; the partitions left then
    replay together in entry id order (``leadscore/rebuild_merges.py``). ``done`` is called
    with each partition's replay once it is at its end.
    """
    together: dict[int, Rebuilder] = {}
    applied = 0
    for p in sorted(ends):
        rb = make(p)
        rb.aliases = aliases
        rb.init_merges(handed)
        if progress is not None:
            progress.partition = p
        if not aliases.into:
            applied += rb.replay(ends[p], progress, page=page)
            if not rb.stopped:
                if done is not None:
                    done(rb)
                continue
            rb.max_contacts = max(1, max_contacts // len(ends))
            rb.written()  # evict down to its share while the others replay
        together[p] = rb
    waiting = {p: end for p, end in ends.items() if p in together and end is not None}
    if waiting:
        applied += replay_together(
            {p: together[p] for p in waiting},
            waiting,  # type: ignore[arg-type]
            progress,
            final=final,
            page=page,
            max_contacts=max_contacts,
        )
    if done is not None:
        for rb in together.values():
            done(rb)
    return applied


# --------------------------------------------------------------------------- switch firings


def _past(packed: int | None) -> bool:
    """Whether a trigger's packed state says the contact is past it (fired, not re-armed)."""
    return packed is not None and packed > 0


def switch_firings(
    contact: str,
    old: ContactState | None,
    new: ContactState,
    engine: Engine,
    version: int,
    at: float,
) -> list[TriggerFired]:
    """What differs in a contact's triggers between the generations, as firings under the new
    rules: a trigger the contact is past under the new rules and was not under the old ones
    fires; one it was past and no longer is fires the new rules' ``below`` triggers that
    follow it (``after``), e.g. MQL lost gives its ``cooled`` handoff."""
    before = old.triggers if old is not None else {}
    after = new.triggers
    cause = f"rules published: v{version}"
    out: list[str] = []
    triggers = engine.rules.triggers
    for trigger in triggers:
        if _past(after.get(trigger.id)) and not _past(before.get(trigger.id)):
            out.append(trigger.id)
    for trigger in triggers:
        if _past(before.get(trigger.id)) and not _past(after.get(trigger.id)):
            for follower in triggers:
                if follower.below and follower.after == trigger.id and follower.id not in out:
                    out.append(follower.id)
    if not out:
        return []
    view = engine.view(contact, new, max(at, new.last_ts))
    by_id = {t.id: t for t in triggers}
    fired = []
    for tid in out:
        trigger = by_id[tid]
        score = (
            view["total"] if trigger.score == "total" else view["scores"].get(trigger.score, 0.0)
        )
        fired.append(TriggerFired(tid, float(score), at, list(trigger.actions), cause))
    return fired


def _state_batches(r: Any, keys: Keys, batch: int) -> Iterator[tuple[int, list[str]]]:
    """``(partition, contacts)`` of every contact with a state in ``keys``' generation, from
    ONE SCAN of the keyspace (a SCAN per partition would walk every key once per partition),
    at most ``batch`` contacts of one partition at a time."""
    pending: dict[int, list[str]] = {}
    # every generation's state key is PREFIX:{p}:[gN:]s:CONTACT (state/keys.py)
    pattern = keys.state(0, "*").replace("{0}", "{*}", 1)
    for raw in r.scan_iter(match=pattern, count=5000):
        name = raw.decode()
        tag_end = name.index("}:", len(keys.prefix) + 2)
        p = int(name[len(keys.prefix) + 2 : tag_end])
        head = keys.state(p, "")
        if not name.startswith(head):
            continue  # another generation's key that the pattern also matches
        contacts = pending.setdefault(p, [])
        contacts.append(name[len(head) :])
        if len(contacts) >= batch:
            yield p, pending.pop(p)
    for p in sorted(pending):
        yield p, pending.pop(p)


def _set_batches(r: Any, key: str, batch: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for member in r.sscan_iter(key, count=batch):
        chunk.append(member.decode())
        if len(chunk) >= batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Differences:
    """Each contact's switch firings: its trigger differences between two generations."""

    def __init__(
        self, r: Any, old_keys: Keys, new_keys: Keys, engine: Engine, version: int
    ) -> None:
        self.r, self.old_keys, self.new_keys = r, old_keys, new_keys
        self.engine, self.version = engine, version

    def of(self, p: int, contacts: list[str], at: float) -> list[tuple[str, bytes]]:
        """``(contact, trigger record)`` of every switch firing of ``contacts``."""
        news = self.r.mget([self.new_keys.state(p, c) for c in contacts])
        olds = self.r.mget([self.old_keys.state(p, c) for c in contacts])
        firings: list[tuple[str, bytes]] = []
        for contact, new_raw, old_raw in zip(contacts, news, olds, strict=True):
            if new_raw is None:
                continue
            new = decode(new_raw)
            old = decode(old_raw) if old_raw is not None else None
            for effect in switch_firings(contact, old, new, self.engine, self.version, at):
                firings.append((contact, effect_record(contact, effect)[1]))
        return firings

    def mark(self, *, batch: int = 500, on_batch: Callable[[], None] | None = None) -> None:
        """Before the hold: remember (``differ``) every contact whose triggers differ now. The
        hold then re-checks only them and the contacts whose state may change meanwhile
        (``recheck``), instead of every contact while the flow's checkpoints wait."""
        for p, contacts in _state_batches(self.r, self.new_keys, batch):
            differ = sorted({c for c, _ in self.of(p, contacts, time.time())})
            if differ:
                self.r.sadd(self.new_keys.differ(p), *differ)
            if on_batch is not None:
                on_batch()

    def recheck_timers(self, horizon: float, *, page: int = 5000) -> None:
        """Contacts whose old-generation decay timer is due by ``horizon``: the live flow may
        change their state (fire, re-arm) before the hold; the hold re-checks them."""
        for p in range(self.old_keys.partitions):
            start = 0
            while True:
                due = self.r.zrangebyscore(
                    self.old_keys.timers(p), "-inf", horizon, start=start, num=page
                )
                if due:
                    self.r.sadd(self.new_keys.recheck(p), *due)
                if len(due) < page:
                    break
                start += page

    def fire(
        self,
        at: float,
        *,
        everyone: bool,
        batch: int = 500,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Write the switch firings (each contact once, resumable: ``switched``); returns how
        many were written now. ``everyone``: every contact of the new generation (no
        ``mark`` before the hold, or the hold came after its horizon); else the contacts of
        ``differ`` and ``recheck``."""
        if everyone:
            batches: Iterator[tuple[int, list[str]]] = _state_batches(self.r, self.new_keys, batch)
        else:
            batches = (
                (p, contacts)
                for p in range(self.new_keys.partitions)
                for key in (self.new_keys.differ(p), self.new_keys.recheck(p))
                for contacts in _set_batches(self.r, key, batch)
            )
        written = 0
        for n, (p, contacts) in enumerate(batches):
            written += fire_once(self.r, self.new_keys, p, self.of(p, contacts, at))
            if on_batch is not None:
                on_batch(n)
        return written


# --------------------------------------------------------------------------- publish


@dataclass
class Plan:
    """What a publish is about to do (or resumes)."""

    job: Publishing | None  # None: nothing to do (unchanged)
    change: Change
    record: RulesRecord | None
    resumed: bool = False
    #: where a `predict:` model path of the rules is relative to (the rules file given)
    source: str = "<rules>"


class PublishInProgress(PublishError):
    """Another publish is in progress with other rules."""


def plan(
    r: Any,
    keys: Keys,
    text: bytes | None,
    *,
    source: str = "<new rules>",
    on_switch: str = "fire",
    rollback: bool = False,
    seen_actions: set[str] | None = None,
) -> Plan:
    """Decide and record what to publish: the target generation and rules version.

    ``text`` None with ``rollback``: the previous live rules (``rules_previous``). A publish
    in progress with the same rules is resumed; with other rules it is refused.
    """
    take_lock(r, keys)  # held until execute() ends (or lapses after the process dies)
    try:
        made = _plan(r, keys, text, source, on_switch, rollback, seen_actions)
    except BaseException:
        release_lock(r, keys)
        raise
    if made.job is None:
        release_lock(r, keys)
    if source and not source.startswith("<"):
        made.source = source
    return made


def _plan(
    r: Any,
    keys: Keys,
    text: bytes | None,
    source: str,
    on_switch: str,
    rollback: bool,
    seen_actions: set[str] | None,
) -> Plan:
    live_rec = ensure_live_record(r, keys)
    current = publishing(r, keys)
    if rollback and current is not None and current.kind == "rollback":
        resumed = rules_record(r, keys, current.version)  # the meta may be switched already
        text = resumed.text if resumed is not None else None  # (Redis Cluster: finish)
    elif rollback:
        previous = r.hget(keys.meta, "rules_previous")
        if previous is None:
            raise PublishError("nothing to roll back to: no publish has switched this deployment")
        gen, version, _ = parse_live(previous)
        assert version is not None
        rec = rules_record(r, keys, version)
        if rec is None or rec.pruned:
            raise PublishError(
                f"cannot roll back to rules v{version}: generation {gen} was pruned "
                "(publish those rules again to rescore them)"
            )
        text = rec.text
    digest = rules_digest(text) if text is not None else ""
    if current is not None:
        target = rules_record(r, keys, current.version)
        if target is None or target.sha256 != digest:
            raise PublishInProgress(
                f"a publish of rules v{current.version} is in progress (phase "
                f"{current.phase}): run it again to finish it (same rules file, or "
                "--rollback if it was a rollback) before publishing other rules"
            )
        change = Change(current.kind if current.kind != "rollback" else RESCORE, ["resumed"])
        return Plan(current, change, target, resumed=True)
    assert text is not None
    markers = set(read_markers(r, keys))
    if len(markers) != 1:
        raise PublishError(
            f"partitions disagree on what is live ({sorted(markers)}) and no publish is "
            "recorded in progress: inspect {prefix}:{p}:live before publishing"
        )
    raw_source = markers.pop()
    live_gen = live_generation(r, keys)
    previous = marker(live_gen, live_rec.version)
    if rollback:
        version = int(parse_live(r.hget(keys.meta, "rules_previous"))[1] or 0)
        rec = rules_record(r, keys, version)
        assert rec is not None
        change = Change(RESCORE, [f"rollback to rules v{version} (generation {rec.generation})"])
        job = Publishing(
            raw_source, marker(rec.generation, version), previous, "rebuild", on_switch, "rollback"
        )
        begin_publishing(r, keys, job)
        return Plan(job, change, rec)
    if digest == live_rec.sha256:
        return Plan(None, Change(UNCHANGED, []), live_rec)
    change = classify(live_rec.text, text, seen_actions, new_source=source)
    if change.kind == UNCHANGED:
        # a different file that scores the same (comments, names): a cheap switch all the same
        change = Change(CHEAP, ["only comments, names or formatting changed"])
    version = next_version(r, keys)
    gen = live_gen if change.kind == CHEAP else next_generation(r, keys)
    record_rules(r, keys, version, digest, text, gen)
    # counted now, not at the switch: an aborted publish's version and generation are not
    # given out again (its partial generation may still be in Redis until --prune)
    top_gen = max(int(r.hget(keys.meta, "generation_max") or 0), gen)
    r.hset(keys.meta, mapping={"rules_version_max": version, "generation_max": top_gen})
    rec = rules_record(r, keys, version)
    assert rec is not None
    job = Publishing(
        raw_source,
        marker(gen, version),
        previous,
        "rebuild",
        on_switch,
        "cheap" if change.kind == CHEAP else "rescore",
    )
    begin_publishing(r, keys, job)
    return Plan(job, change, rec)


@dataclass
class Outcome:
    """What a publish did."""

    generation: int
    version: int
    events: int
    fired: int
    seconds: float
    held_seconds: float


def execute(
    r: Any,
    keys: Keys,
    the_plan: Plan,
    *,
    progress: Progress | None = None,
    max_contacts: int = MAX_CONTACTS,
    max_future: float = DEFAULT_MAX_FUTURE,
    pause: Callable[[str], None] | None = None,
    history: ArchiveHistory | None = None,
) -> Outcome:
    """Run a planned publish to its end (rebuild, catch up, hold, fire, switch).

    ``pause(step)`` is called between steps (tests use it to kill the process there).
    ``history``: the archive the entries the streams lost are replayed from.
    """
    try:
        return _execute(r, keys, the_plan, progress, max_contacts, max_future, pause, history)
    except (MergesInHistory, HistoryError):
        assert the_plan.job is not None
        abort(r, keys, the_plan.job)  # before the switch: back to the old generation
        raise
    finally:
        release_lock(r, keys)


def _execute(
    r: Any,
    keys: Keys,
    the_plan: Plan,
    progress: Progress | None,
    max_contacts: int,
    max_future: float,
    pause: Callable[[str], None] | None,
    history: ArchiveHistory | None = None,
) -> Outcome:
    job, rec = the_plan.job, the_plan.record
    assert job is not None and rec is not None
    started = time.monotonic()
    progress = progress or Progress(keys.partitions)
    outer = progress.update

    def update(p: Progress) -> None:
        renew_lock(r, keys)
        if outer is not None:
            outer(p)

    progress.update = update
    source_gen = parse_live(job.previous)[0]
    old_keys, new_keys = keys.at(source_gen), keys.at(job.generation)
    step = pause or (lambda _step: None)
    if job.kind == "cheap" or job.phase == SWITCHED:  # SWITCHED: committed, roll forward
        if job.phase != SWITCHED:
            set_phase(r, keys, "switch")
            # held first: on Redis Cluster the markers switch one by one after the commit,
            # and no partition may checkpoint under the old rules once it is made
            for p in range(keys.partitions):
                hold(r, keys, p, job.source, job.target)
        finish(r, keys, job, rec, published=time.time(), step=step)
        return Outcome(job.generation, job.version, 0, 0, time.monotonic() - started, 0.0)
    engine = engine_of(rec.text, the_plan.source)
    differences = Differences(r, old_keys, new_keys, engine, job.version)

    def rebuilder(p: int) -> Rebuilder:
        # resumed from Redis each time: one partition's contacts and timers in memory at most
        # (unless merges make the partitions replay together: leadscore/rebuild_merges.py)
        return Rebuilder(
            r, new_keys, p, engine, max_contacts=max_contacts, max_future=max_future,
            history=history,
        )  # fmt: skip

    # Identity merges: the links made before the replay's position (none when it starts from
    # scratch) and the states between a $take and its $give, for every pass below.
    starts = [
        (raw.decode() if (raw := r.hget(new_keys.upto(p), "id")) else None)
        for p in range(keys.partitions)
    ]
    aliases = aliases_before(r, keys, starts)
    handed = Handed(r, new_keys)

    def replay(ends: dict[int, str | None], **options: Any) -> int:
        return replay_all(
            options.pop("make", rebuilder),
            ends,
            progress,
            aliases=aliases,
            handed=handed,
            max_contacts=max_contacts,
            **options,
        )

    def ends() -> dict[int, str | None]:
        return {p: acked_upto(r, keys, p) for p in range(keys.partitions)}

    if job.phase == "rebuild":
        progress.phase = "rebuild"
        for p in range(keys.partitions):  # a resumed publish counts what is already rebuilt
            events, entries = r.hmget(new_keys.upto(p), ["events", "entries"])
            progress.events += int(events or 0)
            progress.entries += int(entries or 0)
        progress.resumed_events, progress.resumed_entries = progress.events, progress.entries

        def rebuilt(rb: Rebuilder) -> None:
            progress.done_partitions += 1
            progress.tick()
            step(f"rebuilt:{rb.p}")

        replay(ends(), done=rebuilt)
        progress.phase = "catch-up"
        for _ in range(CATCH_UP_ROUNDS):
            caught = replay(ends())
            step("caught-up")
            if caught < 1000:
                break
        if job.on_switch == "fire":
            progress.phase = "differences"
            progress.tick()
            horizon = time.time() + PREPARED_FOR
            differences.recheck_timers(horizon)
            differences.mark(on_batch=progress.tick)
            r.hset(keys.publishing, "prepared", repr(horizon))
            step("marked")
        set_phase(r, keys, "switch")
    progress.phase = "switch"
    progress.tick()
    held = time.monotonic()
    for p in range(keys.partitions):
        hold(r, keys, p, job.source, job.target)
    prepared = r.hget(keys.publishing, "prepared")
    # every partition is held: the old generation changes no more
    everyone = prepared is None or time.time() > float(prepared)
    step("held")
    at = time.time()
    last = ends()

    def tracked(p: int) -> Rebuilder:
        rb = rebuilder(p)
        rb.track = True  # what the last replay changes is checked for differences again
        return rb

    def stopped(rb: Rebuilder) -> None:
        old_clock = r.get(old_keys.clock(rb.p))
        if old_clock is not None:
            rb.advance_to(float(old_clock))
        rb.flush()
        end = last[rb.p]
        if end is not None:  # where the old generation stops: a rollback resumes it from here
            r.hset(old_keys.upto(rb.p), mapping={"id": end, "entries": rb.entries_done})
        progress.tick()

    replay(last, make=tracked, final=True, done=stopped)
    if job.on_switch == "fire":
        progress.phase = "switch firings"
        progress.fired += differences.fire(
            at, everyone=everyone, on_batch=lambda n: (progress.tick(), step(f"fired:{n}"))
        )
    finish(r, keys, job, rec, published=time.time(), step=step)
    progress.phase = "done"
    progress.done_partitions = keys.partitions
    progress.tick()
    step("done")
    return Outcome(
        job.generation,
        job.version,
        progress.events,
        progress.fired,
        time.monotonic() - started,
        time.monotonic() - held,
    )


def status(r: Any, keys: Keys) -> dict[str, Any]:
    """What is live and what is in progress, for messages."""
    live = live_rules(r, keys)
    job = publishing(r, keys)
    return {
        "generation": live_generation(r, keys),
        "version": live.version if live else None,
        "publishing": job,
    }


__all__ = [
    "CHEAP",
    "RESCORE",
    "UNCHANGED",
    "Outcome",
    "Plan",
    "Progress",
    "PublishError",
    "PublishInProgress",
    "Rebuilder",
    "execute",
    "plan",
    "switch_firings",
]
