"""Why is this lead hot? Rebuild a contact's score story from its change log.

Pure functions over the output records (the dicts written to ``changes.jsonl`` and
``triggers.jsonl`` or the Redis ``changes``/``triggers`` streams), so the CLI and the HTTP
service explain a score the same way whether the log came from a file, a stream or a replay.
:func:`replay` produces those records by running the engine over raw event lines for one
contact; it mirrors the flow (same rejections, same end-of-input timers) so its answer
matches what ``leadscore run`` wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from leadscore.engine import (
    Duplicate,
    Effect,
    Engine,
    PointChange,
    SegmentChanged,
    StageChanged,
    TagChanged,
    TriggerFired,
)
from leadscore.events import Event, format_ts, parse_event, round4
from leadscore.rules import Rules


@dataclass(slots=True)
class RuleInfo:
    """What a person needs to recognise a rule id: its kind, name and description."""

    kind: str  # "action", "fit" or "unknown" (a rule no longer in the file)
    name: str = ""
    description: str = ""
    category: str = ""
    on: tuple[str, ...] = ()


@dataclass(slots=True)
class PointLine:
    """One point change, with the rule that caused it."""

    rule: str
    kind: str
    name: str
    description: str
    group: str
    delta: float
    applied: float
    capped: bool
    score_after: float
    event_id: str | None
    action: str | None
    at: str


@dataclass(slots=True)
class RuleTotal:
    """A rule's contribution: how often it awarded and how many points that applied."""

    rule: str
    name: str
    count: int
    applied: float


@dataclass(slots=True)
class Explanation:
    """Everything that moved one contact, in the order it happened, and where it ended."""

    contact: str
    points: list[PointLine] = field(default_factory=list)
    by_rule: list[RuleTotal] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)
    applied: dict[str, float] = field(default_factory=dict)  # per group, sum of applied points
    applied_total: float = 0.0
    final: dict[str, Any] | None = None  # the read model (Engine.view), when known
    decay: dict[str, float] | None = None  # per group: final score minus applied points
    decay_total: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Replay:
    """The result of running the engine over raw lines for one contact."""

    contact: str
    records: list[dict[str, Any]]
    view: dict[str, Any] | None
    events: int  # the contact's accepted events, duplicates included
    duplicates: int
    lines: int  # every non-blank line read, for any contact
    end: float | None  # the replay clock: the latest accepted event time of any contact


def rule_catalog(rules: Rules) -> dict[str, RuleInfo]:
    """Rule id -> RuleInfo for every action and fit rule in ``rules``."""
    catalog: dict[str, RuleInfo] = {}
    for r in rules.actions:
        catalog[r.id] = RuleInfo("action", r.name, r.description, r.category, r.on)
    for f in rules.fit:
        catalog[f.id] = RuleInfo("fit", f"fit: {f.trait}")
    return catalog


def effect_record(contact: str, effect: Effect, action: str | None = None) -> dict[str, Any] | None:
    """The output record for one effect: THE format of the flow's outputs; None for duplicates.

    Point changes also carry the event's ``action`` when the caller knows it, because the
    change log alone does not say which action earned the points.
    """
    # One dict literal per kind, in output key order: no merges or temporary dicts, as this
    # runs once per output record of the flow.
    t = type(effect)
    if t is PointChange:
        rec: dict[str, Any] = {
            "contact": contact,
            "kind": "points",
            "rule": effect.rule,
            "group": effect.group,
            "delta": effect.delta,
            "applied": effect.applied,
            "score_after": round4(effect.score_after),
            "capped": effect.capped,
            "event_id": effect.event_id,
            "at": format_ts(effect.at),
        }
        if action is not None:
            rec["action"] = action
        return rec
    if t is StageChanged:
        return {
            "contact": contact,
            "kind": "stage",
            "stage": effect.stage,
            "previous": effect.previous,
            "cause": effect.cause,
            "at": format_ts(effect.at),
        }
    if t is TriggerFired:
        return {
            "contact": contact,
            "trigger": effect.trigger,
            "score": effect.score,
            "at": format_ts(effect.at),
            "actions": effect.actions,
            "cause": effect.cause,
        }
    if t is SegmentChanged:
        return {
            "contact": contact,
            "kind": "segment",
            "segment": effect.segment,
            "added": effect.added,
            "cause": effect.cause,
            "at": format_ts(effect.at),
        }
    if t is TagChanged:
        return {
            "contact": contact,
            "kind": "tag",
            "tag": effect.tag,
            "added": effect.added,
            "cause": effect.cause,
            "at": format_ts(effect.at),
        }
    if t is Duplicate:
        return None
    raise TypeError(f"no record for {effect!r}")


def explain(
    contact: str,
    records: Iterable[Mapping[str, Any]],
    view: Mapping[str, Any] | None = None,
    rules: Rules | None = None,
) -> Explanation:
    """Turn a contact's change and trigger records (oldest first) into an explanation.

    Records of other contacts are ignored, so a mixed log can be passed as is. With the
    contact's ``view``, the difference between each final score and the points applied is
    reported as decay (or expiry): the part of the score no single event explains.
    """
    catalog = rule_catalog(rules) if rules is not None else {}
    out = Explanation(contact)
    totals: dict[str, RuleTotal] = {}
    for rec in records:
        if rec.get("contact", contact) != contact:
            continue
        if "trigger" in rec:
            out.triggers.append(_pick(rec, ("trigger", "score", "at", "actions", "cause")))
            continue
        kind = rec.get("kind")
        if kind == "points":
            info = catalog.get(rec["rule"], RuleInfo("unknown" if catalog else ""))
            line = PointLine(
                rule=rec["rule"],
                kind=info.kind,
                name=info.name,
                description=info.description,
                group=rec["group"],
                delta=rec["delta"],
                applied=rec["applied"],
                capped=bool(rec.get("capped")),
                score_after=rec["score_after"],
                event_id=rec.get("event_id"),
                action=rec.get("action"),
                at=rec["at"],
            )
            out.points.append(line)
            out.applied[line.group] = out.applied.get(line.group, 0.0) + line.applied
            total = totals.get(line.rule)
            if total is None:
                total = totals[line.rule] = RuleTotal(line.rule, line.name, 0, 0.0)
            if line.applied:
                total.count += 1
                total.applied += line.applied
        elif kind == "stage":
            out.stages.append(_pick(rec, ("stage", "previous", "at", "cause")))
        elif kind == "segment":
            out.segments.append(_pick(rec, ("segment", "added", "at", "cause")))
        elif kind == "tag":
            out.tags.append(_pick(rec, ("tag", "added", "at", "cause")))
    out.applied = {g: round(v, 4) for g, v in out.applied.items()}
    out.applied_total = round(sum(out.applied.values()), 4)
    out.by_rule = sorted(
        (t for t in totals.values() if t.count),
        key=lambda t: (-abs(t.applied), t.rule),
    )
    for t in out.by_rule:
        t.applied = round(t.applied, 4)
    if view is not None:
        out.final = dict(view)
        scores: Mapping[str, float] = view.get("scores") or {}
        groups = dict.fromkeys([*scores, *out.applied])
        out.decay = {g: round(scores.get(g, 0.0) - out.applied.get(g, 0.0), 4) for g in groups}
        out.decay_total = round(view.get("total", 0.0) - out.applied_total, 4)
    return out


def replay(rules: Rules, lines: Iterable[bytes | str], contact: str, now: float) -> Replay:
    """Run the engine over raw event lines, keeping one contact's records and final view.

    Mirrors the flow: blank lines are skipped, invalid lines and actions the rules do not
    know are rejected, and at the end every decay timer due by the latest accepted event time
    (of any contact) fires, as the flow's end-of-input does. ``now`` stands in for a missing
    ``ts``, as the flow's clock does.
    """
    engine = Engine(rules)
    known = rules.known_actions
    state = None
    records: list[dict[str, Any]] = []
    events = duplicates = count = 0
    end: float | None = None
    for raw in lines:
        if not raw.strip():
            continue
        count += 1
        event = parse_event(raw, now)
        if type(event) is not Event or event.action not in known:
            continue
        if end is None or event.ts > end:
            end = event.ts
        if event.contact != contact:
            continue
        if state is None:
            state = engine.new_state()
        events += 1
        effects = engine.apply(state, event)
        if effects and type(effects[0]) is Duplicate:
            duplicates += 1
            continue
        for effect in effects:
            rec = effect_record(contact, effect, event.action)
            if rec is not None:
                records.append(rec)
    view = None
    if state is not None:
        # The flow's end of input: timers due by its clock fire at their own due times.
        while end is not None and (due := engine.next_due(state)) is not None and due <= end:
            for effect in engine.advance(state, due):
                rec = effect_record(contact, effect)
                if rec is not None:
                    records.append(rec)
        view = engine.view(contact, state)
    return Replay(contact, records, view, events, duplicates, count, end)


def _pick(rec: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: rec.get(k) for k in keys}
