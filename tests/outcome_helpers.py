"""Brute-force references for the calibration tests: each contact replayed on its own."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leadscore.engine import Engine
from leadscore.events import Event, parse_event


def in_band(s: float, lo: float, hi: float, last: bool) -> bool:
    """lo inclusive, hi exclusive; the last band includes its top."""
    return lo <= s < hi or (last and s == hi)


def independent_rows(
    rules: Any, paths: Sequence[Path], as_of: float, window: float, conversion: str = "purchase"
) -> list[tuple[str, float, bool]]:
    """(contact, total at as_of, converts in the window) for everyone in play at as_of.

    Groups lines by contact, replays each contact alone in a fresh engine up to as_of, and
    labels from the conversion times by hand: nothing shared with leadscore.outcomes.
    """
    by_contact: dict[str, list[Event]] = defaultdict(list)
    for path in paths:
        for line in Path(path).read_bytes().splitlines():
            e = parse_event(line, 0.0)
            if type(e) is Event and (e.action in rules.known_actions or e.action == conversion):
                by_contact[e.contact].append(e)
    rows: list[tuple[str, float, bool]] = []
    for contact, events in sorted(by_contact.items()):
        buys = [e.ts for e in events if e.action == conversion]
        before = [e for e in events if e.ts <= as_of and e.action != conversion]
        if not before or any(t <= as_of for t in buys):
            continue
        engine = Engine(rules)
        state = engine.new_state()
        for e in before:
            engine.apply(state, e)
        engine.advance(state, as_of)
        label = any(as_of < t <= as_of + window for t in buys)
        rows.append((contact, engine.view(contact, state)["total"], label))
    return rows


def independent_bands(
    rules: Any, paths: Sequence[Path], as_of: float, window: float, edges: list[float]
) -> list[tuple[int, int]]:
    """(contacts, converted) per band [edges[i], edges[i + 1]), counted by hand."""
    rows = independent_rows(rules, paths, as_of, window)
    out = []
    for i in range(len(edges) - 1):
        last = i == len(edges) - 2
        inside = [y for _, s, y in rows if in_band(s, edges[i], edges[i + 1], last)]
        out.append((len(inside), sum(inside)))
    return out
