"""Small helpers shared by the engine tests: inline rules, events and effect filters.

Every test builds its own rules from a short YAML string so it reads on its own; these
helpers only remove the boilerplate around that.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from typing import Any, TypeVar

from leadscore.engine import Engine, PointChange
from leadscore.events import Event
from leadscore.rules import Rules, load_rules_text

T = TypeVar("T")

# 2026-06-01T00:00:00Z: a fixed, readable epoch for every test.
T0 = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
SECOND = 1.0
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY


def rules(text: str, source: str = "rules.yaml") -> Rules:
    """Compile an inline YAML rules document (indentation is removed first)."""
    return load_rules_text(textwrap.dedent(text), source)


def engine(text: str) -> Engine:
    return Engine(rules(text))


def ev(
    action: str,
    ts: float = T0,
    id: str | None = None,
    props: dict[str, Any] | None = None,
    traits: dict[str, Any] | None = None,
    contact: str = "c-1",
    **kw: Any,
) -> Event:
    """An event; keyword arguments beyond the named ones become props."""
    merged = dict(props or {})
    merged.update(kw)
    return Event(contact, action, ts, id=id, props=merged, traits=traits)


def of_type(effects: list[Any], kind: type[T]) -> list[T]:
    return [e for e in effects if isinstance(e, kind)]


def run(eng: Engine, state: Any, events: list[Event]) -> list[Any]:
    """Apply events in order and return every effect, concatenated."""
    out: list[Any] = []
    for e in events:
        out.extend(eng.apply(state, e))
    return out


def awards(effects: list[Any], rule: str | None = None) -> list[PointChange]:
    """PointChanges that actually moved a score (or that were capped), optionally for one rule."""
    return [
        p
        for p in of_type(effects, PointChange)
        if (rule is None or p.rule == rule) and (p.applied != 0 or p.capped)
    ]


def awarded(eng: Engine, state: Any, event: Event, rule: str | None = None) -> bool:
    """Apply one event; True when it produced a PointChange (for ``rule`` if given)."""
    return bool([p for p in of_type(eng.apply(state, event), PointChange) if _is(p, rule)])


def _is(p: PointChange, rule: str | None) -> bool:
    return rule is None or p.rule == rule


def scores_at(eng: Engine, state: Any, t: float) -> dict[str, float]:
    """Group scores once decay is settled up to ``t``."""
    eng.advance(state, t)
    return dict(eng.view("c-1", state)["scores"])


def score(eng: Engine, state: Any, group: str = "engagement") -> float:
    """A group's score as the read model shows it now (no further decay)."""
    return float(eng.view("c-1", state)["scores"][group])
