"""Who is who: the ids merged into other contacts (identify with ``merge``), pure.

A visitor id merged into a known contact is an alias of it from then on: its later events are
the known contact's. An id is merged once: the first merge that names it decides where its
history went, and later events for it follow that contact (through chains: A merged into B,
then B into C, sends A's events to C). :class:`Aliases` holds that map and decides each merge;
both flows and the readers use it (the live flow keeps the same map in Redis,
``state.keys.Keys.aliases``). :func:`merge_groups` is the file flow's first pass: which ids
will end up together, so they can be scored in one shard from their first event on.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from leadscore.events import MAX_EVENT_BYTES, NO_TS, Event, parse_event
from leadscore.inputs import close_input, open_input

MAX_CHAIN = 64
"""Links followed to a root at most. Every merge points at a root, so a chain grows by one
only when a contact that already absorbed others is merged in turn: 64 is far beyond real
data, and a bound keeps a corrupted map (a cycle written by hand) from looping forever."""


@dataclass(frozen=True, slots=True)
class MergeStep:
    """What one id of an identify's ``merge`` list does: merge ``visitor`` into ``known``,
    or nothing, with ``refused`` saying why when the merge was refused."""

    visitor: str
    known: str
    merge: bool
    refused: str | None = None


class Aliases:
    """``old id -> the contact it was merged into``; :meth:`resolve` follows it to the root."""

    __slots__ = ("into",)

    def __init__(self, into: dict[str, str] | None = None) -> None:
        self.into: dict[str, str] = {} if into is None else into

    def __len__(self) -> int:
        return len(self.into)

    def resolve(self, contact: str) -> str:
        """The contact ``contact``'s events go to: itself unless it was merged."""
        into = self.into
        seen = 0
        while contact in into and seen < MAX_CHAIN:
            contact = into[contact]
            seen += 1
        return contact

    def chain(self, contact: str) -> list[str]:
        """``contact`` and every id it was merged into, in order (the last is the root); a
        cycle (two ids merged into each other at once, live) ends before it repeats."""
        out = [contact]
        while out[-1] in self.into and len(out) <= MAX_CHAIN:
            nxt = self.into[out[-1]]
            if nxt in out:
                break
            out.append(nxt)
        return out

    def plan(self, known: str, visitors: Iterable[str]) -> list[MergeStep]:
        """What an identify of ``known`` (a root) merging ``visitors`` does, in order, and the
        map updated as it goes (call :meth:`record` for each step that merges).

        - a visitor whose root is ``known`` (itself, or merged into it before): nothing;
        - a visitor merged before into another contact: refused, it stays there (an id is
          merged once; merging the other contact too would pull in a third person's history);
        - otherwise (a root, with or without history): merged into ``known``.
        """
        steps: list[MergeStep] = []
        for visitor in visitors:
            root = self.resolve(visitor)
            if root == known:
                steps.append(MergeStep(visitor, known, False))
            elif visitor in self.into:
                steps.append(
                    MergeStep(
                        visitor,
                        known,
                        False,
                        f"{visitor!r} was merged into {root!r} before; an id is merged once",
                    )
                )
            else:
                steps.append(MergeStep(visitor, known, True))
                self.into[visitor] = known
        return steps


def merge_groups(lines: Iterable[bytes]) -> dict[str, str]:
    """Every id that an identify may merge with another, mapped to one id of its group.

    The file flow's first pass: ids linked by any ``merge`` (directly or through chains) form
    a group, and the flow scores the whole group in the shard of its representative (the
    smallest id, so the result does not depend on file order), where every merge between them
    is local. Liberal on purpose: a line that the flow later dead-letters (a time in the
    future, say) only puts ids in one shard that did not need to be; it never separates two
    that a merge joins. Only lines that mention ``"merge"`` are parsed (a C substring search
    for the rest), so a file without merges costs one read.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for raw in lines:
        if b'"merge"' not in raw:
            continue
        event = parse_event(raw.rstrip(b"\r\n"), NO_TS)
        if type(event) is not Event or not event.merge:
            continue
        a = find(event.contact)
        for other in event.merge:
            b = find(other)
            if a != b:
                a, b = min(a, b), max(a, b)
                parent[b] = a
                parent.setdefault(a, a)
    return {x: find(x) for x in parent}


_BLOCK = 1 << 20


def merge_lines(paths: Iterable[str]) -> Iterator[bytes]:
    """The lines of ``paths`` (files, ``.gz`` files) that mention ``"merge"``.

    Read a MiB at a time and searched whole (in C): a block without the word costs no line
    splitting, so the first pass over files without merges is about one read of them."""
    needle = b'"merge"'
    for path in paths:
        try:
            stream = open_input(path)
        except OSError:
            continue  # the flow itself reports a file it cannot open
        try:
            yield from _merge_lines(stream, needle)
        except (OSError, EOFError, zlib.error):
            # A file that goes bad part way (a truncated .gz) fails the run when the flow
            # reads it, with the error runs always gave: the groups then no longer matter.
            continue
        finally:
            close_input(stream)


def _merge_lines(stream: IO[bytes], needle: bytes) -> Iterator[bytes]:
    carry = b""  # the start of a line the last block cut
    edge = len(needle) - 1
    for block in iter(lambda: stream.read(_BLOCK), b""):
        cut = block.rfind(b"\n")
        if cut < 0:
            # A line longer than an event may be is dead-lettered by the flow: only its end
            # is still needed, to find where the next line starts.
            carry = b"" if len(carry) > MAX_EVENT_BYTES else carry + block
            continue
        # The block is searched where it lies: copies only when it holds the word. The line
        # the last block cut (carry) is searched with the block's start, for a word across.
        if needle in block or (carry and needle in carry + block[:edge]):
            head = carry + block[: cut + 1]
            yield from (line for line in head.split(b"\n") if needle in line)
        carry = block[cut + 1 :]
    if needle in carry:
        yield carry


__all__ = ["MAX_CHAIN", "Aliases", "MergeStep", "merge_groups", "merge_lines"]
