"""Merging an anonymous visitor's state into the known contact's (pure, like the engine).

A lead browses for weeks under a cookie id, then fills in a form under an email address. The
merged contact's state is what one contact doing both histories would have, as far as bounded
state allows; docs/ARCHITECTURE.md ("Merging contacts") gives each rule with its reason.

The merge is a function of the two states and the merge time only, so a flow may run it on
whichever worker holds the known contact, replay it after a crash, and get the same bits.
"""

from __future__ import annotations

from array import array
from bisect import insort
from dataclasses import dataclass
from math import inf

from leadscore.engine import (
    NEVER,
    NO_GROUPS,
    NO_TRAITS,
    NO_TRIGGERS,
    RECENT_IDS,
    ContactState,
    Effect,
    Engine,
    PointChange,
    SegmentChanged,
    StageChanged,
    TagChanged,
    _below_armed,
    _last_fire,
)
from leadscore.events import Event
from leadscore.identity import Aliases
from leadscore.rules import REPEAT_COOLDOWN, REPEAT_ONCE, REPEAT_WINDOW, GroupSpec

MERGE = "merge"  # the rule of the visitor's points, and the cause of what the merge changes


@dataclass(slots=True)
class Merged:
    """The record of a merge itself: ``visitor``'s history became the contact's at ``at``.

    The flows record it (kind ``merge``) before the merge's own effects, even when the visitor
    never existed, so a contact's change log says which ids it absorbed and when: ``explain``
    follows it to the points each visitor earned under its own id."""

    visitor: str
    at: float


def merge(
    engine: Engine,
    known: ContactState | None,
    visitor: ContactState | None,
    at: float,
    *,
    visitor_id: str | None = None,
) -> tuple[ContactState, list[Effect]]:
    """The known contact's state after taking the visitor's over at ``at``, and what changed.

    Neither input is changed. ``None`` is a contact that never existed: merging it is the
    other state unchanged (a visitor that never existed adds nothing). A state merged into
    itself (the same object) is unchanged too: one contact cannot count its history twice.
    Effects are relative to the known contact: the visitor's points arrive as one change per
    group (rule ``merge``), corrections name their rule and say why, triggers fire with cause
    ``merge``.
    """
    if known is None:
        known = engine.new_state()
    if visitor is None or visitor is known:
        return _copy(known), []
    source = f"from {visitor_id}" if visitor_id else "from the visitor"
    merged = _copy(known)
    visitor = _copy(visitor)
    effects: list[Effect] = []
    t = max(at, known.last_ts, visitor.last_ts, *_anchors(known), *_anchors(visitor))
    merged.last_ts = t

    # Corrections first, on the known side, so caps then apply to the corrected sum.
    _take_back_repeats(engine, merged, visitor, t, source, effects)
    _merge_fit(engine, merged, visitor, t, source, effects)
    _add_groups(engine, merged, visitor, t, source, effects)

    stage = max(merged.stage, visitor.stage)
    if stage != merged.stage:
        order = engine.rules.stage_order
        previous = order[merged.stage] if merged.stage >= 0 else None
        merged.stage = stage
        effects.append(StageChanged(order[stage], previous, t, MERGE))
    for segment in visitor.segments:
        if segment not in merged.segments:
            merged.segments += (segment,)
            effects.append(SegmentChanged(segment, True, t, MERGE))
    for tag in visitor.tags:
        if tag not in merged.tags:
            merged.tags += (tag,)
            effects.append(TagChanged(tag, True, t, MERGE))

    recent = array("I", (h for h in visitor.recent_ids if h not in merged.recent_ids))
    merged.recent_ids = (merged.recent_ids + recent)[-RECENT_IDS:]
    _merge_triggers(engine, merged, visitor)
    merged.due, merged.idle, merged.floor = -1.0, False, -inf  # timers: recompute
    if engine.rules.triggers:
        fired: list[Effect] = []
        engine._evaluate(merged, t, Event("", MERGE, t), fired)  # cause: "merge"
        effects.extend(fired)
        merged.due, merged.idle, merged.floor = -1.0, False, -inf
    return merged, effects


# --------------------------------------------------------------------------- the parts


def _take_back_repeats(
    engine: Engine,
    merged: ContactState,
    visitor: ContactState,
    t: float,
    source: str,
    effects: list[Effect],
) -> None:
    """Merge repeat trackers and windows; take back awards the merged history would refuse."""
    rules = {r.id: r for r in engine.rules.actions}
    tracks = merged.tracks
    for j, rule_id in enumerate(visitor.tracked):
        v = visitor.tracks[3 * j : 3 * j + 3]
        if rule_id not in merged.tracked:
            merged.tracked = (*merged.tracked, rule_id)
            tracks = tracks + v
            continue
        i = 3 * merged.tracked.index(rule_id)
        rule = rules.get(rule_id)
        both = tracks[i + 2] != NEVER and v[2] != NEVER
        if rule is not None and both and rule.repeat == REPEAT_ONCE:
            # When it was earned is not kept: taken back at face value, never short.
            why = f"awarded once ever, and earned both here and {source}"
            _correct(engine, merged, rule.group, -rule.points, t, rule_id, effects, why)
        elif (
            rule is not None
            and both
            and rule.repeat == REPEAT_COOLDOWN
            and abs(tracks[i + 2] - v[2]) < rule.cooldown
        ):
            why = f"within the cooldown of the award {source}"
            later = max(tracks[i + 2], v[2])  # the one a single contact would not have earned
            _correct(engine, merged, rule.group, -rule.points, later, rule_id, effects, why)
        tracks[i] += v[0]  # hits add
        tracks[i + 1] = max(tracks[i + 1], v[1])  # last seen: the latest
        tracks[i + 2] = max(tracks[i + 2], v[2])  # last award (cooldown) / awarded (once)
    merged.tracks = tracks

    windows = list(merged.windows)
    for k in range(0, len(visitor.windows), 2):
        rule_id = visitor.windows[k]
        times: array[float] = visitor.windows[k + 1]  # type: ignore[assignment]
        rule = rules.get(rule_id)  # type: ignore[arg-type]
        if rule_id not in windows:
            windows += [rule_id, array("d", times)]
            continue
        index = windows.index(rule_id) + 1
        union = sorted([*windows[index], *times])  # type: ignore[misc]
        if rule is None or rule.repeat != REPEAT_WINDOW:
            windows[index] = array("d", union[-len(times) :])
            continue
        kept, dropped = _replay_window(union, rule.repeat_max, rule.repeat_per)
        why = f"at most {rule.repeat_max} awards per window, counting those {source}"
        for when in dropped:  # taken back as of when it was earned: decayed or expired alike
            _correct(engine, merged, rule.group, -rule.points, when, rule.id, effects, why)
        windows[index] = array("d", kept[-rule.repeat_max :])
    merged.windows = tuple(windows)


def _replay_window(times: list[float], most: int, per: float) -> tuple[list[float], list[float]]:
    """Awards in time order as the engine grants them: at most ``most`` in any ``per``."""
    kept: list[float] = []
    dropped: list[float] = []
    for t in times:
        if len(kept) >= most and t - kept[-most] < per:
            dropped.append(t)
        else:
            kept.append(t)
    return kept, dropped


def _merge_fit(
    engine: Engine,
    merged: ContactState,
    visitor: ContactState,
    t: float,
    source: str,
    effects: list[Effect],
) -> None:
    """Known traits win, the visitor's fill the gaps; fit is recomputed once on the result."""
    if visitor.traits is NO_TRAITS:
        traits = merged.traits
    else:
        traits = {**visitor.traits, **merged.traits}
        merged.traits = traits
    matched = tuple(r.id for r in engine.rules.fit if r.test(traits.get(r.trait)))
    for r in engine.rules.fit:
        earned = (r.id in merged.fit) + (r.id in visitor.fit)
        owed = (r.id in matched) - earned
        if owed:
            why = (
                f"fit awarded once, and earned both here and {source}"
                if earned == 2 and owed == -1
                else "fit recomputed on the merged traits"
            )
            _correct(engine, merged, r.group, owed * r.points, t, r.id, effects, why)
    merged.fit = matched


def _add_groups(
    engine: Engine,
    merged: ContactState,
    visitor: ContactState,
    t: float,
    source: str,
    effects: list[Effect],
) -> None:
    """Each group's scores add, both decayed to the merge time first; caps apply to the sum."""
    specs = engine.rules.groups
    for name, vg in visitor.groups.items():
        spec = specs.get(name)
        if spec is None:
            continue  # a group the rules no longer have scores nothing
        Engine._settle(spec, vg, t)
        if merged.groups is NO_GROUPS:
            merged.groups = {}
        g = merged.groups.get(name)
        if g is None:
            g = merged.groups[name] = [0.0, t] if spec.expire_after is None else [0.0, t, []]
        Engine._settle(spec, g, t)
        g[1] = t
        before, points = g[0], vg[0]
        after, capped = _capped(spec, before, points)
        applied = after - before
        g[0] = after
        if spec.expire_after is not None and points:
            scale = applied / points
            for expires, amount in vg[2]:
                _add_bucket(g[2], expires, amount * scale, spec.expire_after)
        if points or applied:
            change = PointChange(MERGE, name, points, applied, after, None, t, capped)
            change.reason = f"points earned {source}"
            effects.append(change)


def _capped(spec: GroupSpec, before: float, points: float) -> tuple[float, bool]:
    after = before + points
    if spec.max is not None and points > 0 and after > spec.max:
        return max(before, spec.max), True
    if spec.min is not None and points < 0 and after < spec.min:
        return min(before, spec.min), True
    return after, False


def _add_bucket(buckets: list[list[float]], expires: float, amount: float, window: float) -> None:
    """An expiring award into a group's buckets, sharing one within 1% as the engine does."""
    for bucket in buckets:
        if abs(bucket[0] - expires) <= window * 0.01:
            bucket[1] += amount
            return
    insort(buckets, [expires, amount])


def _correct(
    engine: Engine,
    state: ContactState,
    group: str,
    points: float,
    t: float,
    rule: str,
    effects: list[Effect],
    reason: str,
) -> None:
    """Points given or taken back by the merge itself, with a change record saying why."""
    if group not in engine.rules.groups:
        return
    changes: list[Effect] = []
    engine._award(state, group, points, t, rule, None, changes)
    for change in changes:
        if type(change) is PointChange:
            change.reason = reason
    effects.extend(changes)


def _merge_triggers(engine: Engine, merged: ContactState, visitor: ContactState) -> None:
    """A trigger fired on either side is fired and not armed; it is not fired again now.

    Sequence numbers order firings for ``after``; the visitor's come after the known
    contact's (their real order is not kept), offset past them.
    """
    offset = merged.seq
    triggers: dict[str, int] = {} if merged.triggers is NO_TRIGGERS else dict(merged.triggers)
    for trigger in engine.rules.triggers:
        k = merged.triggers.get(trigger.id)
        v = visitor.triggers.get(trigger.id)
        if v is None and k is None:
            continue
        visitor_last = _last_fire(trigger, v)
        last = max(_last_fire(trigger, k), visitor_last + offset if visitor_last else 0)
        if last:
            triggers[trigger.id] = last  # fired, not armed (both kinds)
        elif trigger.below and (_below_armed(trigger, k) or _below_armed(trigger, v)):
            triggers[trigger.id] = -1  # armed, never fired
        elif trigger.below:
            triggers[trigger.id] = 0
    merged.triggers = triggers if triggers else NO_TRIGGERS
    merged.seq = merged.seq + visitor.seq


def _anchors(state: ContactState) -> list[float]:
    return [g[1] for g in state.groups.values()]


def _copy(state: ContactState) -> ContactState:
    """A state that shares nothing mutable with ``state`` (the engine updates in place)."""
    out = ContactState()
    out.groups = (
        NO_GROUPS
        if state.groups is NO_GROUPS
        else {
            name: [g[0], g[1], [list(b) for b in g[2]]] if len(g) > 2 else [g[0], g[1]]
            for name, g in state.groups.items()
        }
    )
    out.tracked = state.tracked
    out.tracks = array("d", state.tracks)
    out.windows = tuple(w if isinstance(w, str) else array("d", w) for w in state.windows)
    out.triggers = state.triggers if state.triggers is NO_TRIGGERS else dict(state.triggers)
    out.seq = state.seq
    out.stage = state.stage
    out.segments = state.segments
    out.tags = state.tags
    out.traits = state.traits if state.traits is NO_TRAITS else dict(state.traits)
    out.fit = state.fit
    out.last_ts = state.last_ts
    out.recent_ids = array("I", state.recent_ids)
    out.due, out.idle, out.floor = state.due, state.idle, state.floor
    return out


__all__ = ["MERGE", "Merged", "merge"]


def absorb(
    engine: Engine,
    states: dict[str, ContactState],
    aliases: Aliases,
    known: str,
    event: Event,
) -> tuple[list[Merged | Effect], list[str]]:
    """Merge the ids of ``event.merge`` into ``known`` (a root) in ``states``, as the file flow
    does at an identify: each visitor's state leaves ``states``, ``aliases`` learns where it
    went. Returns what changed for ``known`` (each :class:`Merged` before its effects) and why
    any merge was refused (an id is merged once)."""
    changed: list[Merged | Effect] = []
    refused: list[str] = []
    for step in aliases.plan(known, event.merge or ()):
        if step.refused is not None:
            refused.append(step.refused)
        elif step.merge:
            visitor = states.pop(step.visitor, None)
            merged, effects = merge(
                engine, states.get(known), visitor, event.ts, visitor_id=step.visitor
            )
            states[known] = merged
            changed.append(Merged(step.visitor, event.ts))
            changed.extend(effects)
    return changed, refused
