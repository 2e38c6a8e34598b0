"""Why did this event earn nothing? The engine's conditions, evaluated again, with words.

The engine's hot path only decides; it never says why a rule did not award, because
building those sentences for every event would cost more than scoring it. ``explain`` asks
here instead, once per event of the one contact it replays: :func:`pending_reasons` reads the
contact's state *before* :meth:`Engine.apply` (it changes nothing) and follows the same
checks in the same order as ``apply``; :func:`event_reasons` then adds what only the
outcome shows (a cap, a rule worth 0 points). tests/test_reasons.py checks the two agree
with the engine: an event that earned nothing always has a reason, one that earned has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zlib import crc32

from leadscore.durations import format_duration
from leadscore.engine import (
    NEVER,
    ContactState,
    Duplicate,
    Effect,
    Engine,
    PointChange,
)
from leadscore.events import Event, format_ts
from leadscore.rules import REPEAT_COOLDOWN, REPEAT_ONCE, REPEAT_WINDOW, ActionRule

_MISSING = object()


@dataclass(slots=True)
class Reason:
    """One rule that gave this event nothing (``rule`` None: no rule at all), and why."""

    rule: str | None
    code: str  # no_rule, where, inactive, hits, returns_within, returns_after, cooldown,
    # once, window, cap, zero_points, duplicate, no_fit_change
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "code": self.code, "text": self.text}


def pending_reasons(
    engine: Engine,
    state: ContactState,
    event: Event,
    awarded_at: Mapping[str, float] | None = None,
) -> list[Reason]:
    """Why each rule ``event`` selects would not award, read from the state before it.

    ``awarded_at`` (rule id -> time of its last award, kept by the caller) lets a once-ever
    rule say when it was awarded: the state keeps only that it was. Rules that would award
    are absent; :func:`event_reasons` decides whether the event earned anything.
    """
    rules = engine.rules
    event_id = event.id
    if event_id is not None and crc32(event_id.encode()) in state.recent_ids:
        return [Reason(None, "duplicate", f"duplicate id {event_id!r}: this contact already "
                       "had an event with it (a producer retry); nothing applied")]  # fmt: skip
    t = event.ts
    out: list[Reason] = []
    candidates = rules.by_action.get(event.action, ())
    if not candidates:
        moves = " (its rules only move the stage)" if event.action in rules.stages_by_action else ""
        out.append(Reason(None, "no_rule", f"no rule scores action {event.action!r}{moves}"))
    for r in candidates:
        reason = _rule_reason(r, state, event, t, awarded_at or {})
        if reason is not None:
            out.append(Reason(r.id, reason[0], reason[1]))
    return out


def event_reasons(
    engine: Engine, pending: list[Reason], event: Event, effects: list[Effect]
) -> list[Reason]:
    """The reasons to show for one applied event: none if it earned points, else every one."""
    if effects and type(effects[0]) is Duplicate:
        return pending
    changes = [e for e in effects if type(e) is PointChange]  # advance() makes none
    if any(e.applied for e in changes):
        return []
    out = list(pending)
    groups = engine.rules.groups
    for e in changes:
        if e.delta == 0:
            out.append(Reason(e.rule, "zero_points", f"{e.rule}: the rule gives 0 points"))
        elif e.capped:
            spec = groups[e.group]
            bound = f"max {spec.max:g}" if e.delta > 0 else f"min {spec.min:g}"
            out.append(Reason(e.rule, "cap", f"{e.rule}: cap reached, {e.group} is at its {bound}"))
    if event.traits and engine.rules.fit and not changes:
        out.append(Reason(None, "no_fit_change", "its traits changed no fit rule"))
    if not out:  # never expected: say so rather than show an event without a reason
        out.append(Reason(None, "unknown", "no points, for a reason explain cannot name"))
    return out


def _rule_reason(
    r: ActionRule, state: ContactState, event: Event, t: float, awarded_at: Mapping[str, float]
) -> tuple[str, str] | None:
    """The first check of ``Engine.apply`` that ``r`` fails for ``event``, in its order."""
    for cond in r.where:
        if not cond.holds(event.props):
            path = ".".join(cond.keys)
            value = _lookup(event.props, cond.keys)
            got = "it is missing" if value is _MISSING else f"got {_short(value)}"
            return "where", f"{r.id}: where {path}: {_short(cond.expected)} did not match ({got})"
    if r.active_from is not None and t < r.active_from:
        return "inactive", f"{r.id}: rule inactive, active from {format_ts(r.active_from)}"
    if r.active_until is not None and t > r.active_until:
        return "inactive", f"{r.id}: rule inactive, active until {format_ts(r.active_until)}"
    if not r.tracked:
        return None
    if r.id in state.tracked:
        i = state.tracked.index(r.id) * 3
        hits, previous, award = state.tracks[i], state.tracks[i + 1], state.tracks[i + 2]
    else:
        hits, previous, award = 0.0, NEVER, NEVER
    count = hits + 1.0
    if r.hits and count < r.hits:
        return "hits", f"{r.id}: hits not reached, {int(count)} of {r.hits}"
    if r.returns_within is not None and not 0 <= t - previous <= r.returns_within:
        within = format_duration(r.returns_within)
        if previous == NEVER:
            return "returns_within", f"{r.id}: returns_within {within} not met: no earlier match"
        return "returns_within", (
            f"{r.id}: returns_within {within} not met: the previous match was at "
            f"{format_ts(previous)}"
        )
    if r.returns_after is not None and (previous == NEVER or t - previous < r.returns_after):
        after = format_duration(r.returns_after)
        if previous == NEVER:
            return "returns_after", f"{r.id}: returns_after {after} not met: no earlier match"
        return "returns_after", (
            f"{r.id}: returns_after {after} not met: the previous match was at "
            f"{format_ts(previous)}"
        )
    if r.repeat == REPEAT_COOLDOWN:
        if abs(t - award) < r.cooldown:
            return "cooldown", (
                f"{r.id}: cooldown until {format_ts(award + r.cooldown)} "
                f"(awarded at {format_ts(award)})"
            )
    elif r.repeat == REPEAT_ONCE:
        if award != NEVER:
            when = awarded_at.get(r.id)
            at = f" at {format_ts(when)}" if when is not None else ""
            return "once", f"{r.id}: once ever, already awarded{at}"
    elif r.repeat == REPEAT_WINDOW:
        windows = state.windows
        if r.id in windows:
            awards: Any = windows[windows.index(r.id) + 1]
            if len(awards) >= r.repeat_max and t - awards[0] < r.repeat_per:
                return "window", (
                    f"{r.id}: window full, {r.repeat_max} of {r.repeat_max} per "
                    f"{format_duration(r.repeat_per)} since {format_ts(awards[0])}"
                )
    return None


def _lookup(props: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """The value a condition read (Condition.holds' own lookup), or _MISSING."""
    if len(keys) == 1:
        return props.get(keys[0], _MISSING)
    value: Any = props
    for key in keys:
        if type(value) is not dict or key not in value:
            return props.get(".".join(keys), _MISSING)
        value = value[key]
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
