"""Merging contacts in the live Redis flow: hand-over messages between partitions.

The two ids of a merge usually live in different partitions, often on different workers,
and only a partition may write its contacts. So a merge travels as messages through the
partitions' own input streams, each sent by the checkpoint that consumed its cause
(docs/redis.md, "Merging contacts"):

1. ``identify`` of K with ``merge: [V]`` is scored in K's partition like any identify; its
   checkpoint XADDs ``{"$take": V, "into": K, "at": t}`` to V's partition.
2. V's partition takes V's state out of memory; its checkpoint deletes V's state and read
   model, writes ``V -> K`` into ``{prefix}:aliases`` and XADDs ``{"$give": V, "into": K,
   "at": t, "state": <msgpack, base64>}`` to K's partition, with the XACK of the take.
3. K's partition merges the state (``leadscore.merge.merge``) in the checkpoint that XACKs
   the give: the merge record, the corrections and any trigger leave exactly once.

A crash before a checkpoint replays its input onto the state before it; after it, the next
step's message is in the next partition's stream. Events for V that reach V's partition after
step 2 (or any partition where V has no state) are resolved through the aliases and forwarded
to the partition of the contact's root, which scores them as its own.

Messages are lines whose first key starts with ``$``, in input entries of their own (field
``m``) that only the checkpoint script writes; a line that looks like one in an events entry
(field ``e``) is dead-lettered as ``reserved`` (``flows.redis_io.Messages``).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from flows import metrics
from flows.shards import DeadLetter
from leadscore.engine import ContactState
from leadscore.events import Event, Reject, format_ts, validate_event
from leadscore.identity import MAX_CHAIN
from leadscore.merge import Merged, merge
from state.codec import decode, encode
from state.keys import partition_of

MESSAGE_MARK = b'{"$'


class Handover:
    """A merge message: ``take`` (to the visitor's partition) or ``give`` (to the known's)."""

    __slots__ = ("at", "into", "kind", "raw", "state", "visitor")

    def __init__(
        self, kind: str, visitor: str, into: str, at: float, state: bytes | None, raw: bytes
    ) -> None:
        self.kind = kind
        self.visitor = visitor
        self.into = into
        self.at = at
        self.state = state
        self.raw = raw


def take_line(visitor: str, into: str, at: float) -> bytes:
    return orjson.dumps({"$take": visitor, "into": into, "at": at})


def give_line(visitor: str, into: str, at: float, state: bytes | None) -> bytes:
    blob = None if state is None else base64.b64encode(state).decode()
    return orjson.dumps({"$give": visitor, "into": into, "at": at, "state": blob})


def forward_line(event: Event) -> bytes:
    """An event for a merged id, on its way to the partition of the contact it went to.

    Wrapped, so the receiving partition neither archives it again (the sender's archive has
    it as it arrived) nor takes it for input from outside."""
    return orjson.dumps({"$fwd": event.to_dict()})


def parse_message(raw: bytes, now: float) -> Handover | Event | Reject:
    """A hand-over line or a forwarded event, or why it is neither (dead-lettered)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        return Reject("invalid_json", str(err))
    if type(obj) is not dict:
        return Reject("bad_message", "a hand-over message must be an object")
    if "$fwd" in obj:
        return validate_event(obj["$fwd"], now)
    kind = "take" if "$take" in obj else "give" if "$give" in obj else None
    visitor, into, at = obj.get(f"${kind}"), obj.get("into"), obj.get("at")
    state = obj.get("state")
    if (
        kind is None
        or type(visitor) is not str
        or type(into) is not str
        or type(at) not in (int, float)
        or (state is not None and type(state) is not str)
    ):
        return Reject("bad_message", "not a hand-over message ($take or $give, into, at)")
    try:
        blob = None if state is None else base64.b64decode(state, validate=True)
    except ValueError:
        return Reject("bad_message", "the state of a $give message is not base64")
    return Handover(kind, visitor, into, float(at), blob, raw)


def merge_visitor(logic: Any, known: str, visitor: ContactState | None, m: Handover) -> None:
    """Merge a handed-over visitor's state into ``known`` (its state in ``logic.contacts``),
    record it with its effects: the give of the live flow and of a publish's replay alike."""
    contacts: dict[str, ContactState] = logic.contacts
    merged, effects = merge(logic.engine, contacts.get(known), visitor, m.at, visitor_id=m.visitor)
    contacts[known] = merged
    logic.record(known, [Merged(m.visitor, m.at), *effects])
    logic.merged += 1
    logic.touched.add(known)


class LiveMerges:
    """The partition logic's part in merges (a mixin of ``flows.redis_flow.PartitionLogic``).

    Expects of its host: ``engine``, ``contacts``, ``aliases`` (leadscore.identity.Aliases,
    a cache of ``{prefix}:aliases``), ``store``, ``p``, ``dirty``, ``touched``, ``due_of``,
    ``durable``, ``record``, ``emit``, ``rejected``, ``load``, ``stream``.
    """

    # ---- before applying: who is where

    def init_merges(self) -> None:
        self.sends: list[tuple[str, bytes]] = []  # (input stream, line) to send at commit
        self.gone: set[str] = set()  # ids handed over: state and read model to delete
        self.new_aliases: dict[str, str] = {}  # old id -> contact, for {prefix}:aliases
        self.handed: list[str] = []  # states a publish's replay took, merged: keys to delete

    def alias_lookups(self, ids: list[str]) -> list[str]:
        """The ids :meth:`learn_aliases` looks up first for ``ids``: their chains' ends."""
        aliases = self.aliases  # type: ignore[attr-defined]
        into = aliases.into
        return [aliases.chain(i)[-1] if i in into else i for i in ids]  # chain(i): [i]

    def learn_aliases(self, ids: list[str], known: dict[str, str] | None = None) -> None:
        """Look up the ends of these ids' known chains in ``{prefix}:aliases``, then the ids
        those point at, until every chain is known to its root (one HMGET per link of the
        longest new chain; usually one). ``known``: the first link already looked up (its
        ids, ``""`` for none; a live worker asks for all of its partitions at once)."""
        aliases = self.aliases  # type: ignore[attr-defined]
        into = aliases.into
        wanted = set(self.alias_lookups(ids))
        for _ in range(MAX_CHAIN):
            if not wanted:
                return
            if known is not None:
                found = {k: v for k in wanted if (v := known.get(k))}
                rest = [k for k in wanted if k not in known]
                if rest:
                    found.update(self.store.load_aliases(rest))  # type: ignore[attr-defined]
                known = None
            else:
                found = self.store.load_aliases(list(wanted))  # type: ignore[attr-defined]
            found = {k: v for k, v in found.items() if into.get(k) != v}
            into.update(found)
            wanted = {aliases.chain(v)[-1] for v in found.values()}

    def home(self, contact: str) -> int:
        return partition_of(contact, self.store.keys.partitions)  # type: ignore[attr-defined]

    def send(self, contact: str, line: bytes) -> None:
        """Queue ``line`` for the input stream of ``contact``'s partition (at commit)."""
        self.sends.append((self.store.keys.input(self.home(contact)), line))  # type: ignore[attr-defined]

    # ---- events

    def score(self, event: Event) -> None:
        aliases = self.aliases  # type: ignore[attr-defined]
        contact = event.contact
        if contact in aliases.into:  # a merged id (resolve answers any other id itself)
            root = aliases.resolve(contact)
            if root != contact:
                if self.home(root) != self.p:  # type: ignore[attr-defined]
                    self.send(root, forward_line(event))  # its history is elsewhere now
                    metrics.MERGES.labels("forward").inc()
                    return
                self.load({root})  # type: ignore[attr-defined]  # (only those not in memory)
        super().score(event)  # type: ignore[misc]

    def absorb(self, known: str, event: Event) -> None:
        """An identify with merge: ask each visitor's partition to hand its history over."""
        for visitor in event.merge or ():
            self.send(visitor, take_line(visitor, known, event.ts))

    # ---- messages

    def handle(self, message: Handover) -> None:
        if message.kind == "take":
            self.take(message)
        else:
            self.give(message)

    def take(self, m: Handover) -> None:
        """In the visitor's partition: hand the visitor's state over, or say why not."""
        aliases = self.aliases  # type: ignore[attr-defined]
        self.learn_aliases([m.into])  # where the known contact's history is (takes are rare)
        known = aliases.resolve(m.into)
        root = aliases.resolve(m.visitor)
        if root == known:
            return  # merged into it before, or the known contact was merged into the visitor
        if root != m.visitor:
            self.refuse(
                m,
                f"{m.visitor!r} was merged into {root!r} before; an id is merged once",
            )
            return
        contacts: dict[str, ContactState] = self.contacts  # type: ignore[attr-defined]
        state = contacts.pop(m.visitor, None)
        blob = None if state is None or _never_scored(state) else encode(state)
        self.dirty.discard(m.visitor)  # type: ignore[attr-defined]
        self.touched.discard(m.visitor)  # type: ignore[attr-defined]
        self.due_of.pop(m.visitor, None)  # type: ignore[attr-defined]
        self.gone.add(m.visitor)
        aliases.into[m.visitor] = known
        self.new_aliases[m.visitor] = known
        self.send(known, give_line(m.visitor, known, m.at, blob))
        metrics.MERGES.labels("take").inc()

    def give(self, m: Handover) -> None:
        """In the known contact's partition: merge the visitor's state in (or pass it on to
        where the known contact's history went meanwhile).

        Two ids merged into each other at the same time (each partition took its own before
        it could see the other's alias) make a cycle of aliases: it is broken at its smallest
        id, which becomes the root again (its alias removed by its own partition), so both
        histories end up there and nothing circulates."""
        aliases = self.aliases  # type: ignore[attr-defined]
        self.learn_aliases([m.into])
        chain = aliases.chain(m.into)
        known = chain[-1]
        if known in aliases.into:  # the chain loops back: a cycle
            known = min(chain[chain.index(aliases.into[known]) :])
        if self.home(known) != self.p:  # type: ignore[attr-defined]
            self.send(known, m.raw)
            metrics.MERGES.labels("forward").inc()
            return
        if known in aliases.into:  # our own id, in a cycle: a root again
            del aliases.into[known]
            self.new_aliases[known] = ""
        self.load({known})  # type: ignore[attr-defined]  # its state, unless in memory
        blob = self.handed_state(m)
        visitor = None if blob is None else decode(blob)
        merge_visitor(self, known, visitor, m)
        metrics.MERGES.labels("give").inc()

    def handed_state(self, m: Handover) -> bytes | None:
        """The visitor's state to merge: the message's, unless a publish's replay took the
        visitor in the generation served (its take came before the switch, this give after:
        ``Keys.handed``, under that generation's rules); that one then, deleted with this
        checkpoint. One GET per give (gives are rare)."""
        key, blob = self.store.load_handed(self.p, m.visitor)  # type: ignore[attr-defined]
        if blob is None:
            return m.state
        self.handed.append(key)
        return blob or None

    def refuse(self, m: Handover, why: str) -> None:
        reject = Reject("merge_refused", f"{why}; the identify of {m.into!r} was scored without it")
        self.rejected[reject.code] += 1  # type: ignore[attr-defined]
        metrics.MERGES.labels("refused").inc()
        metrics.DEAD_LETTERS.labels(reject.code).inc()
        line = DeadLetter(f"{self.stream}/merge {format_ts(m.at)}", m.raw, reject).record()  # type: ignore[attr-defined]
        self.emit("dead_letter", line)  # type: ignore[attr-defined]

    # ---- the checkpoint's share

    def merge_writes(self) -> dict[str, Any]:
        """Checkpoint fields for what merges changed since the last commit."""
        if not (self.sends or self.gone or self.new_aliases or self.handed):
            return {}
        p = self.p  # type: ignore[attr-defined]
        keys = self.store.keys_of(p)  # type: ignore[attr-defined]  # the generation served
        deletes = [k for c in self.gone for k in (keys.state(p, c), keys.read_model(p, c))]
        deletes += self.handed
        return {"deletes": deletes, "aliases": dict(self.new_aliases), "sends": list(self.sends)}

    def merges_committed(self) -> None:
        self.sends, self.gone, self.new_aliases, self.handed = [], set(), {}, []


def _never_scored(state: ContactState) -> bool:
    """A state that never took an event (an id that never existed): merging it adds nothing."""
    return state.last_ts == 0.0 and not state.groups and not state.traits and not state.tracked


__all__ = [
    "MESSAGE_MARK",
    "Handover",
    "LiveMerges",
    "forward_line",
    "give_line",
    "parse_message",
    "take_line",
]
