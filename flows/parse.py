"""The file flow's parse step: a source chunk -> per shard, its events, dead letters and ticks.

Runs once per chunk of lines, its loop once per line, so it is compiled with the hot path
(``leadscore/accel.py``; ``Parser`` is a C type, ``parse.pxd``). ``flows.scoring`` wires it
between the source and the shard logic (``flows.shards``).
"""

from __future__ import annotations

import time
from typing import Any
from zlib import crc32

from flows.shards import INF, DeadLetter, Tick
from leadscore.events import DEFAULT_MAX_FUTURE, NO_TS, Event, Reject, latest_ts
from leadscore.rules import Rules
from leadscore.typed import line_decoder, parse_events, unended

try:
    import cython  # compiled: local types below; interpreted: Cython's shadow, which ignores them
except ImportError:  # Cython not installed (a plain `pip install`): nothing is compiled anyway
    from leadscore import _pure as cython

_SHARD_CACHE_MAX = 1 << 17
_UNDATED = Reject(
    "bad_ts",
    "field 'ts' is missing and no earlier event in this file gives the time to take: add a ts "
    "(RFC 3339 with Z or an offset, or epoch seconds)",
)


_UNROUTED = Reject(
    "merge_unsupported",
    "an identify with 'merge' needs its input read twice (the ids it joins are scored "
    "together from their first event): give the events as files, not standard input, or "
    "send them to a live flow (leadscore send, run --source)",
)


class Parser:
    """Turns a source chunk into keyed events, keyed dead letters and clock ticks."""

    def __init__(
        self,
        rules: Rules,
        shards: int,
        max_future: float = DEFAULT_MAX_FUTURE,
        groups: dict[str, str] | None = None,
    ) -> None:
        self.rules = rules
        # id -> the representative of the ids merges join (identity.merge_groups): the whole
        # group is scored in its representative's shard. None: merges cannot be routed (the
        # input is read once, from standard input) and are dead-lettered.
        self.groups = groups
        self.shards = shards
        self.max_future = max_future
        # Each input partition's replay clock: its latest accepted event time so far. An event
        # without ts takes it; the wall clock would move every contact's decay to today.
        self.clocks: dict[int, float] = {}
        self.keys = [str(s) for s in range(shards)]
        # contact -> shard: a dict probe instead of encode + crc32 per event; bounded.
        self.shard_of_contact: dict[str, int] = {}
        # The line decoder that hands back the rules' own action strings (typed.line_decoder).
        self.decode = line_decoder(rules.known_actions)

    @cython.locals(
        e=Event,
        ts=cython.double,
        clock=cython.double,
        offset=cython.Py_ssize_t,
        shard=cython.Py_ssize_t,
        by_shard=list,
    )
    def __call__(self, chunk: tuple[int, str, int, list[bytes] | None]) -> list[tuple[str, Any]]:
        """One ``(shard key, [items in line order])`` per shard with anything from the chunk.

        One Bytewax item per shard rather than per event: routing and batching cost Bytewax
        per item, and a shard's items keep their order inside the list.
        """
        part, path, first_line, lines = chunk
        shards = self.shards
        if lines is None:  # the partition is done: it will send nothing older than anything
            return [(key, Tick(part, INF, -INF)) for key in self.keys]
        # An event dated more than max_future past the wall clock is rejected: one line dated
        # 2099 would otherwise become every shard's clock and fire everyone's decay.
        latest = latest_ts(time.time(), self.max_future)
        known = self.rules.known_actions
        by_shard: list[list[Any]] = [[] for _ in range(shards)]
        shard_of_contact = self.shard_of_contact
        clock = self.clocks.get(part, -INF)
        accepted = False
        for offset, event in enumerate(parse_events(lines, NO_TS, latest, True, self.decode)):
            if type(event) is Event:
                e = event  # compiled: the C type, its fields read and written as struct members
                if e.action in known:
                    ts = e.ts
                    if ts > clock:
                        if ts < 0.0:  # NO_TS, and nothing earlier in the file to date it by
                            position = f"{path}:{first_line + offset}"
                            dead = DeadLetter(position, unended(lines[offset]), _UNDATED)
                            by_shard[crc32(position.encode()) % shards].append(dead)
                            continue
                        clock = ts
                    elif ts < 0.0:  # NO_TS: the partition's replay clock
                        e.ts = clock
                    if e.merge is not None and self.groups is None:
                        position = f"{path}:{first_line + offset}"
                        dead = DeadLetter(position, unended(lines[offset]), _UNROUTED)
                        by_shard[crc32(path.encode()) % shards].append(dead)
                        continue
                    accepted = True
                    contact = e.contact
                    # compiled: the shard a C index into by_shard (no boxed int, no generic
                    # item lookup); the dict's value is read once, as an object
                    found = shard_of_contact.get(contact)
                    if found is None:
                        if len(shard_of_contact) >= _SHARD_CACHE_MAX:
                            shard_of_contact.clear()
                        routed = self.groups.get(contact, contact) if self.groups else contact
                        found = shard_of_contact[contact] = crc32(routed.encode()) % shards
                    shard = found
                    by_shard[shard].append(event)
                    continue
                event = Reject(
                    "unknown_action",
                    f"action {event.action!r} is not used by any rule; add it to the rules "
                    "or to known_actions",
                )
            position = f"{path}:{first_line + offset}"
            dead = DeadLetter(position, unended(lines[offset]), event)
            # Every dead letter of a file goes to one shard, which emits them in the order it
            # receives them: dead_letter.jsonl keeps each file's line order, whatever the
            # workers (spread by line, shards would interleave them).
            by_shard[crc32(path.encode()) % shards].append(dead)
        if accepted:
            self.clocks[part] = clock
            tick = Tick(part, clock, clock)
            for items in by_shard:
                items.append(tick)
        return [(key, items) for key, items in zip(self.keys, by_shard, strict=True) if items]
