"""Identity merges in publish's rebuild: the live flow's hand-overs replayed in its order.

The live flow merges through messages in the partitions' own input streams (field ``m``,
``flows/handover.py``): ``$take`` in the visitor's partition, ``$give`` in the known
contact's, ``$fwd`` for an event of a merged id. Those entries are the record of what the
flow did and in what order: which identify took a visitor first (a later one was refused,
``merge_refused``), where the known contact's own events fall around the merge, and which
events of an old id came after it. So the rebuild replays the messages; it does not
recompute merges from the identify events. Recomputing could not tell which of two
identifies in two partitions reached a visitor first: only the visitor's stream records
that. Each message is replayed with the live flow's own decisions (``LiveMerges``): resolve
ids through the aliases, refuse an id merged before, merge with ``leadscore.merge.merge``
at the message's time. Only the states differ: the visitor's state is its state in the
generation being built (under the new rules), not the one the message carries.

A merge moves a state from one partition to another, so partitions are no longer
independent. Each partition replays on its own up to its first message (states are
independent until then). From there, every partition left replays together, entry by entry
in entry id order (``Redis`` ids are times from one clock; a message is always written
after its cause), which is the order the live flow saw them in. A ``$give`` whose ``$take`` is
not replayed yet (the same millisecond) waits for it. The states in memory are shared
between the partitions (``max_contacts`` in all), and every partition is written in ONE
transaction every page, so a crash resumes from a point where every hand-over is either
not taken, taken and waiting (``Keys.handed``), or merged.

The aliases are not built: ``{prefix}:aliases`` is the same in every generation (merges do
not depend on the rules: ``identify`` is always a known action). The replay keeps its own
map of the links made so far; resuming part way (after a crash, or a rollback catching up
on the old generation) it starts from ``{prefix}:aliases`` minus the links made by the
``$take`` entries still to replay.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from typing import Any

from flows.handover import MESSAGE_MARK, Handover, _never_scored, merge_visitor, parse_message
from leadscore.events import Event
from leadscore.identity import Aliases
from state.codec import decode, encode
from state.generations import PublishError, id_tuple
from state.keys import Keys, partition_of

Rebuilder = Any
"""A ``leadscore.rescore.Rebuilder`` (not imported: rescore imports this module)."""
Progress = Any
"""A ``leadscore.rescore.Progress``."""

log = logging.getLogger("leadscore.publish")

NONE = b""
"""A handed-over state of an id that never took an event (the live flow sends ``null``)."""


class Handed:
    """States between their ``$take`` and their ``$give``, shared by every partition's replay:
    in memory, and in Redis (``Keys.handed``) once the take's page is written."""

    def __init__(self, r: Any, keys: Keys) -> None:
        self.r, self.keys = r, keys
        self.states: dict[str, bytes] = {}
        self.taken: set[str] = set()  # visitors this replay took (a second copy: merged)
        self.unwritten: dict[str, bytes] = {}  # taken since the last write
        self.merged: set[str] = set()  # merged since the last write, written before

    def key(self, visitor: str) -> str:
        return self.keys.handed(partition_of(visitor, self.keys.partitions), visitor)

    def put(self, visitor: str, blob: bytes) -> None:
        self.states[visitor] = self.unwritten[visitor] = blob
        self.taken.add(visitor)

    def get(self, visitor: str) -> bytes | None:
        blob = self.states.get(visitor)
        if blob is None:
            blob = self.r.get(self.key(visitor))
        return blob

    def consume(self, visitor: str) -> None:
        """The visitor's state is merged: forget it (in Redis too, with the give's page)."""
        self.states.pop(visitor, None)
        self.taken.add(visitor)
        if self.unwritten.pop(visitor, None) is None:
            self.merged.add(visitor)

    def write(self, pipe: Any) -> None:
        """Queue the states taken and merged since the last write (in its transaction)."""
        for visitor, blob in self.unwritten.items():
            pipe.set(self.key(visitor), blob)
        if self.merged:
            pipe.delete(*(self.key(v) for v in self.merged))
        self.unwritten, self.merged = {}, set()


class ReplayMerges:
    """The rebuild's part in merges (a mixin of ``leadscore.rescore.Rebuilder``): the live
    flow's ``LiveMerges`` on recorded messages, without sending anything.

    Expects of its host: ``engine``, ``contacts``, ``aliases``, ``keys``, ``p``, ``dirty``,
    ``touched``, ``due_of``, ``record``, ``merged``, ``_load``.
    """

    def init_merges(self, handed: Handed | None = None) -> None:
        self.handed = handed
        self.gone: set[str] = set()  # visitors taken: their state, read model, timer go
        self.waiting: str | None = None  # the visitor whose take a $give waits for

    def home(self, contact: str) -> int:
        return partition_of(contact, self.keys.partitions)  # type: ignore[attr-defined]

    def absorb(self, known: str, event: Event) -> None:
        """An identify with merge: the live flow sent ``$take`` messages, replayed where they
        are in the visitors' streams (nothing to do here)."""

    def replay_event(self, event: Event) -> bool:
        """Score ``event`` where the live flow did; False: it forwarded it (``$fwd``), and the
        forwarded copy is replayed in the partition it went to."""
        aliases: Aliases = self.aliases  # type: ignore[attr-defined]
        contact = event.contact
        if aliases.into:
            root = aliases.resolve(contact)
            if root != contact:
                if self.home(root) != self.p:  # type: ignore[attr-defined]
                    return False
                contact = root
        if contact not in self.contacts:  # type: ignore[attr-defined]
            self._load([contact])  # type: ignore[attr-defined]
        self.score(event)  # type: ignore[attr-defined]
        return True

    def take(self, m: Handover) -> None:
        """In the visitor's partition (``LiveMerges.take``): hand its state over, or nothing
        (the live flow refused it, ``merge_refused``, or it was merged already)."""
        aliases: Aliases = self.aliases  # type: ignore[attr-defined]
        known = aliases.resolve(m.into)
        root = aliases.resolve(m.visitor)
        if root == known or root != m.visitor:
            return
        self.hand_over(m.visitor)
        aliases.into[m.visitor] = known

    def hand_over(self, visitor: str) -> None:
        """Take ``visitor``'s state out of this partition, for its ``$give``."""
        contacts = self.contacts  # type: ignore[attr-defined]
        if visitor not in contacts:
            self._load([visitor])  # type: ignore[attr-defined]
        state = contacts.pop(visitor, None)
        blob = NONE if state is None or _never_scored(state) else encode(state)
        self.dirty.discard(visitor)  # type: ignore[attr-defined]
        self.touched.discard(visitor)  # type: ignore[attr-defined]
        self.due_of.pop(visitor, None)  # type: ignore[attr-defined]
        self.gone.add(visitor)
        assert self.handed is not None
        self.handed.put(visitor, blob)

    def target(self, m: Handover) -> str:
        """The contact a ``$give`` merges into (``LiveMerges.give``): the root of ``into``,
        or in a cycle (two ids merged into each other at once) its smallest id."""
        aliases: Aliases = self.aliases  # type: ignore[attr-defined]
        chain = aliases.chain(m.into)
        known = chain[-1]
        if known in aliases.into:
            known = min(chain[chain.index(aliases.into[known]) :])
        return known

    def can_give(self, m: Handover) -> bool:
        """False (``waiting`` set): the ``$give`` must wait for its ``$take``'s replay."""
        if self.home(self.target(m)) != self.p:  # type: ignore[attr-defined]
            return True
        assert self.handed is not None
        if m.visitor in self.aliases.into or self.handed.get(m.visitor) is not None:  # type: ignore[attr-defined]
            return True
        self.waiting = m.visitor
        return False

    def give(self, m: Handover) -> None:
        """In the known contact's partition (``LiveMerges.give``): merge the visitor's state
        (its take was replayed: ``can_give``), unless the live flow forwarded this copy."""
        aliases: Aliases = self.aliases  # type: ignore[attr-defined]
        known = self.target(m)
        if self.home(known) != self.p:  # type: ignore[attr-defined]
            return  # forwarded by the live flow: replayed where it went
        assert self.handed is not None
        blob = self.handed.get(m.visitor)
        if blob is None:
            if m.visitor in self.handed.taken:
                return  # a copy of a give merged already
            # Taken before this replay started (a rollback catching up on a generation the
            # live flow wrote): the message carries that generation's own state.
            blob = NONE if m.state is None else m.state
        else:
            self.handed.consume(m.visitor)
            aliases.into.setdefault(m.visitor, known)  # (set already, unless handed at its give)
        if known in aliases.into:  # our own id, in a cycle: a root again
            del aliases.into[known]
        if known not in self.contacts:  # type: ignore[attr-defined]
            self._load([known])  # type: ignore[attr-defined]
        merge_visitor(self, known, decode(blob) if blob else None, m)

    def merge_writes(self, pipe: Any) -> None:
        """Queue what merges changed since the last write (in the page's transaction)."""
        keys, p = self.keys, self.p  # type: ignore[attr-defined]
        if self.gone:
            gone = sorted(self.gone)
            pipe.delete(*(k for c in gone for k in (keys.state(p, c), keys.read_model(p, c))))
            pipe.zrem(keys.timers(p), *gone)

    def merges_written(self) -> None:
        self.gone = set()


def messages_in(fields: dict[bytes, bytes], now: float) -> list[Any]:
    """The hand-overs and forwarded events of an ``m`` entry (bad lines: nothing, the live
    flow dead-lettered them)."""
    out: list[Any] = []
    for line in fields[b"m"].split(b"\n"):
        if line.startswith(MESSAGE_MARK):
            message = parse_message(line, now)
            if type(message) in (Handover, Event):
                out.append(message)
    return out


# --------------------------------------------------------------------------- aliases so far


def aliases_before(r: Any, keys: Keys, starts: list[str | None], *, page: int = 500) -> Aliases:
    """The links ``{prefix}:aliases`` held when a generation's replay stood at ``starts``
    (each partition's ``upto``): all of them minus those made by a ``$take`` after its
    partition's start. A take made a link iff its ``$give`` (same visitor and time) was sent:
    a refused one sends nothing. Reads the streams after ``starts`` once, for ``m`` entries."""
    if all(s is None for s in starts):
        return Aliases()  # the whole history is replayed: every link is made again
    live = {
        k.decode(): v.decode() for k, v in r.hgetall(keys.aliases).items() if v
    }  # after this read, any new link's messages are in the streams read below
    if not live:
        return Aliases()
    takes: set[tuple[str, float]] = set()
    gives: set[tuple[str, float]] = set()
    for p, start in enumerate(starts):
        lower = "-" if start is None else "(" + start
        while True:
            batch = r.xrange(keys.input(p), min=lower, max="+", count=page)
            for _, fields in batch:
                if b"m" not in fields:
                    continue
                for m in messages_in(fields, 0.0):
                    if type(m) is Handover:
                        (takes if m.kind == "take" else gives).add((m.visitor, m.at))
            if len(batch) < page:
                break
            lower = "(" + batch[-1][0].decode()
    made = {visitor for visitor, at in takes & gives}
    return Aliases({k: v for k, v in live.items() if k not in made})


# --------------------------------------------------------------------------- all together


AHEAD = 2000
"""Events each partition replaying together reads ahead (parsed, their states loaded)."""


class _Cursor:
    """One partition's entries after its replay's ``upto`` up to ``end``, a page at a time:
    parsed when read, and the states of the page's contacts loaded in one MGET per 1000. A
    page holds about ``AHEAD`` events (entries carry 1 to 100), at most ``page`` entries."""

    def __init__(self, rb: Rebuilder, end: str, page: int) -> None:
        self.rb, self.end, self.page = rb, end, page
        self.count = max(1, min(page, AHEAD // 100))  # until the first page says better
        self.buffer: deque[tuple[bytes, float, list[Any]]] = deque()
        self.read_to = rb.upto
        self.exhausted = rb.upto is not None and id_tuple(rb.upto) >= id_tuple(end)

    def peek(self) -> tuple[bytes, float, list[Any]] | None:
        if not self.buffer and not self.exhausted:
            rb = self.rb
            batch = rb.read_entries(self.read_to, self.end, self.count)
            wanted: set[str] = set()
            events = 0
            for entry_id, fields in batch:
                now, items = rb._parse_entry(entry_id, fields)
                self.buffer.append((entry_id, now, items))
                wanted.update(e.contact for e in items if type(e) is Event)
                events += len(items)
            # loaded now, used when their entries come: memory is never older than Redis
            # (an id merged away may still be in Redis until the next write: never loaded)
            into = rb.aliases.into
            rb._load([c for c in wanted if c not in rb.contacts and c not in into])
            if batch:
                self.read_to = batch[-1][0].decode()
            if len(batch) < self.count:
                self.exhausted = True
            elif events:
                self.count = max(1, min(self.page, AHEAD * len(batch) // events))
        return self.buffer[0] if self.buffer else None


def replay_together(
    rebuilders: dict[int, Rebuilder],
    ends: dict[int, str],
    progress: Progress | None,
    *,
    final: bool,
    page: int,
    max_contacts: int,
) -> int:
    """Replay every partition of ``rebuilders`` to its end, entry by entry in id order
    (module doc); every ``page`` entries all of them are written in one transaction. A
    ``$give`` waits for its ``$take``; one still waiting when nothing else can go on means
    the replay and the live flow parted (a race the record cannot settle): in the ``final``
    replay (every partition held) the visitor is then handed over as it stands, so no state
    is lost or kept twice; otherwise the replay stops there and the next one goes on."""
    share = max(1, max_contacts // max(1, len(rebuilders)))
    for rb in rebuilders.values():
        rb.max_contacts = share
    cursors = {p: _Cursor(rb, ends[p], page) for p, rb in rebuilders.items()}
    heap: list[tuple[tuple[int, int], int]] = []

    def push(p: int) -> None:
        entry = cursors[p].peek()
        if entry is not None:
            heapq.heappush(heap, (id_tuple(entry[0].decode()), p))

    for p in cursors:
        push(p)
    waiting: dict[int, tuple[tuple[int, int], str]] = {}  # partition -> (its entry, visitor)
    applied = written = 0
    first = next(iter(rebuilders.values()))
    while True:
        if waiting:
            for p, (at, visitor) in list(waiting.items()):
                if first.handed is not None and visitor in first.handed.states:
                    del waiting[p]
                    heapq.heappush(heap, (at, p))
        soonest = min((at for at, _ in waiting.values()), default=None)
        if heap and (soonest is None or heap[0][0][0] <= soonest[0]):
            at, p = heapq.heappop(heap)
            rb = rebuilders[p]
            entry = cursors[p].peek()
            assert entry is not None
            done = rb.apply_entry(*entry)
            if done is None:
                assert rb.waiting is not None
                waiting[p] = (at, rb.waiting)
                rb.waiting = None
                continue
            cursors[p].buffer.popleft()
            applied += done
            written += 1
            if progress is not None:
                progress.events += done
                progress.entries += 1
            push(p)
            if written >= page:
                write_together(rebuilders, progress)
                written = 0
        elif waiting and final:
            p, (at, visitor) = min(waiting.items(), key=lambda kv: kv[1][0])
            _hand_over_now(rebuilders, visitor)
            del waiting[p]
            heapq.heappush(heap, (at, p))
        else:
            break
    write_together(rebuilders, progress)
    return applied


def _hand_over_now(rebuilders: dict[int, Rebuilder], visitor: str) -> None:
    any_rb = next(iter(rebuilders.values()))
    rb = rebuilders.get(partition_of(visitor, any_rb.keys.partitions))
    if rb is None:
        raise PublishError(f"a hand-over of {visitor!r} waits for a partition not replayed")
    log.warning(
        "the replayed hand-over of %r differs from the live flow's (the merge raced "
        "another): its state is handed over as it stands at its give",
        visitor,
    )
    rb.hand_over(visitor)


def write_together(rebuilders: dict[int, Rebuilder], progress: Progress | None) -> None:
    """Write every partition's changes in ONE transaction: a hand-over is never half done."""
    first = next(iter(rebuilders.values()))
    pipe = first.r.pipeline(transaction=True)
    for rb in rebuilders.values():
        rb.flush(pipe)
    if first.handed is not None:
        first.handed.write(pipe)
    pipe.execute()
    for rb in rebuilders.values():
        rb.written()
    if progress is not None:
        progress.tick()


__all__ = [
    "Handed",
    "ReplayMerges",
    "aliases_before",
    "messages_in",
    "replay_together",
    "write_together",
]
