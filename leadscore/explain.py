"""Why is this lead hot? Rebuild a contact's score story from its change log.

Pure functions over the output records (the dicts written to ``changes.jsonl`` and
``triggers.jsonl`` or the Redis ``changes``/``triggers`` streams), so the CLI and the HTTP
service explain a score the same way whether the log came from a file, a stream or a replay.
:func:`replay` produces those records by running the engine over raw event lines for one
contact; it mirrors the flow (same rejections, same end-of-input timers) so its answer
matches what ``leadscore run`` wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from leadscore.engine import (
    ContactState,
    Duplicate,
    Engine,
    PointChange,
)
from leadscore.events import (
    DEFAULT_MAX_FUTURE,
    NO_TS,
    Event,
    format_ts,
    latest_ts,
    parse_event,
    round4,
)
from leadscore.identity import Aliases
from leadscore.merge import MERGE, Merged, merge
from leadscore.reasons import Reason, event_reasons, pending_reasons
from leadscore.records import effect_record
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
    earned_as: str | None = None  # the id it was earned under, when merged in from another


@dataclass(slots=True)
class RuleTotal:
    """A rule's contribution: how often it awarded and how many points that applied."""

    rule: str
    name: str
    count: int
    applied: float


@dataclass(slots=True)
class EventLine:
    """One accepted event of the contact: what it earned, or every reason it earned nothing."""

    at: str
    action: str
    event_id: str | None
    earned: float  # the sum of the points it applied (0.0: nothing)
    rules: list[str]  # the rules that awarded it points
    reasons: list[Reason]  # empty when it earned points
    contact: str | None = None  # the id it was sent under, when not the contact explained


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
    # Ids merged into the contact: {from, at, points: {group: what it brought, after caps}}
    merges: list[dict[str, Any]] = field(default_factory=list)
    applied: dict[str, float] = field(default_factory=dict)  # per group, sum of applied points
    applied_total: float = 0.0
    events: list[EventLine] = field(default_factory=list)  # every event, when replayed
    final: dict[str, Any] | None = None  # the read model (Engine.view), when known
    decay: dict[str, float] | None = None  # per group: final score minus applied points
    decay_total: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON wants it; the merge fields only where there was a merge (a contact that
        merged nothing explains exactly as before they existed)."""
        out = asdict(self)
        if not out["merges"]:
            del out["merges"]
        for line in out["points"]:
            if line["earned_as"] is None:
                del line["earned_as"]
        for line in out["events"]:
            if line["contact"] is None:
                del line["contact"]
        return out


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
    events_seen: list[EventLine] = field(default_factory=list)  # the contact's, in order
    as_of: float | None = None  # the time the final view is brought to (end, or later)
    # With `predict` in the rules: the likelihood's top factors (Explanation.to_json).
    likelihood: dict[str, Any] | None = None


class AsOfTooEarly(ValueError):
    """An --as-of time before the replay's clock: the scores there are not the final ones."""


def resolve_as_of(requested: float | None, clock: float | None) -> float | None:
    """The time a replay's final scores are brought to: its clock, or ``requested`` if later.

    Raises :class:`AsOfTooEarly` for a time before the clock (the largest accepted event
    time): events after it were already applied, so scores "as of" then would be wrong.
    """
    if requested is None or clock is None:
        return clock if requested is None else requested
    if requested < clock:
        raise AsOfTooEarly(
            f"--as-of {format_ts(requested)} is before the replay's clock {format_ts(clock)} "
            "(its latest accepted event): pick a time at or after it, or leave --as-of out"
        )
    return requested


def rule_catalog(rules: Rules) -> dict[str, RuleInfo]:
    """Rule id -> RuleInfo for every action and fit rule in ``rules``."""
    catalog: dict[str, RuleInfo] = {}
    for r in rules.actions:
        catalog[r.id] = RuleInfo("action", r.name, r.description, r.category, r.on)
    for f in rules.fit:
        catalog[f.id] = RuleInfo("fit", f"fit: {f.trait}")
    return catalog


def explain(
    contact: str,
    records: Iterable[Mapping[str, Any]],
    view: Mapping[str, Any] | None = None,
    rules: Rules | None = None,
    events: Sequence[EventLine] = (),
) -> Explanation:
    """Turn a contact's change and trigger records (oldest first) into an explanation.

    Records of other contacts are ignored, so a mixed log can be passed as is. With the
    contact's ``view``, the difference between each final score and the points applied is
    reported as decay (or expiry): the part of the score no single event explains.
    """
    catalog = rule_catalog(rules) if rules is not None else {}
    out = Explanation(contact, events=list(events))
    totals: dict[str, RuleTotal] = {}
    records = list(records)
    ids = merged_ids(contact, records)
    for rec in records:
        earned_as = rec.get("contact", contact)
        if earned_as not in ids:
            continue
        if earned_as != contact and "trigger" not in rec and rec.get("kind") != "points":
            continue  # a merged id's own stage, segments, tags: the merge re-derives them
        if rec.get("kind") == "merge":
            out.merges.append({"from": rec["from"], "at": rec["at"], "points": {}})
            continue
        if rec.get("rule") == MERGE and out.merges:
            # What the merged id brought (its decayed score, per group; the merge record
            # just before says which id). Its own points are listed under it (earned_as),
            # so only the cap's cut of the sum counts here.
            out.merges[-1]["points"][rec["group"]] = rec["applied"]
            cut = rec["applied"] - rec["delta"]
            if cut:
                out.applied[rec["group"]] = out.applied.get(rec["group"], 0.0) + cut
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
                earned_as=None if earned_as == contact else earned_as,
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


def merged_ids(contact: str, records: Sequence[Mapping[str, Any]]) -> set[str]:
    """``contact`` and every id merged into it (directly or through chains), from the
    ``merge`` records of a change log."""
    into: dict[str, list[str]] = {}
    for rec in records:
        if rec.get("kind") == "merge":
            into.setdefault(rec["contact"], []).append(rec["from"])
    ids = {contact}
    todo = [contact]
    while todo:
        for old in into.get(todo.pop(), ()):
            if old not in ids:
                ids.add(old)
                todo.append(old)
    return ids


def replay(
    rules: Rules,
    parts: Iterable[Iterable[bytes | str]],
    contact: str,
    now: float,
    *,
    max_future: float = DEFAULT_MAX_FUTURE,
    as_of: float | None = None,
    groups: Mapping[str, str] | None = None,
) -> Replay:
    """Run the engine over raw event lines, keeping one contact's records and final view.

    With ``groups`` (``identity.merge_groups`` of the same input), identifies with ``merge``
    merge as in the file flow: the explanation is of the contact the requested id's history
    ended in (``Replay.contact``), with the merged ids' own points (``earned_as``) and the
    merges; without, such an identify is a plain identify.

    Mirrors the flow: ``parts`` are its input partitions (one per file, read in order),
    blank lines are skipped, invalid lines, actions the rules do not know and times more
    than ``max_future`` past ``now`` (the wall clock) are rejected, and an event without
    ``ts`` takes its partition's clock (the latest accepted time so far in it). At the end
    every decay timer due by the latest accepted event time (of any contact) fires, as the
    flow's end-of-input does, and the view is brought to that time, or to ``as_of`` (see
    :func:`resolve_as_of`). Each of the contact's events is listed with what it earned or
    why it earned nothing (leadscore.reasons): the engine itself never pays for that.
    """
    engine = Engine(rules)
    known = rules.known_actions
    latest = latest_ts(now, max_future)
    # Merges (identify with merge, as the file flow does them): every id ``groups`` joins to
    # the contact's is replayed under its own name until it is merged; the contact explained
    # is where the requested id's history is at the end.
    group = groups.get(contact) if groups else None
    members = {x for x, g in groups.items() if g == group} if groups and group else set()
    members.add(contact)
    aliases = Aliases()
    states: dict[str, ContactState] = {}
    awarded: dict[str, dict[str, float]] = {}
    records: list[dict[str, Any]] = []
    lines_out: list[tuple[str, EventLine]] = []
    events = duplicates = count = 0
    end: float | None = None
    for part in parts:
        clock: float | None = None  # this partition's replay clock
        for raw in part:
            if not raw.strip():
                continue
            count += 1
            event = parse_event(raw, NO_TS, latest)
            if type(event) is not Event or event.action not in known:
                continue
            if event.ts == NO_TS:
                if clock is None:
                    continue  # no earlier event to date it by: the flow dead-letters it
                event.ts = clock
            elif clock is None or event.ts > clock:
                clock = event.ts
            if end is None or event.ts > end:
                end = event.ts
            if event.contact not in members:
                continue
            root = aliases.resolve(event.contact)
            if event.merge is not None and groups is not None:
                for step in aliases.plan(root, event.merge):
                    if not step.merge:
                        continue
                    visitor = states.pop(step.visitor, None)
                    merged, effects = merge(
                        engine, states.get(root), visitor, event.ts, visitor_id=step.visitor
                    )
                    states[root] = merged
                    times = awarded.setdefault(root, {})
                    for rule, at in awarded.pop(step.visitor, {}).items():
                        times[rule] = max(times.get(rule, at), at)
                    for effect in [Merged(step.visitor, event.ts), *effects]:
                        rec = effect_record(root, effect)  # type: ignore[arg-type]
                        if rec is not None:
                            records.append(rec)
            state = states.get(root)
            if state is None:
                state = states[root] = engine.new_state()
            awarded_at = awarded.setdefault(root, {})
            events += 1
            pending = pending_reasons(engine, state, event, awarded_at)
            effects = engine.apply(state, event)
            earned = [e for e in effects if type(e) is PointChange]
            line = EventLine(
                at=format_ts(event.ts),
                action=event.action,
                event_id=event.id,
                earned=round4(sum(e.applied for e in earned)),
                rules=[e.rule for e in earned if e.applied],
                reasons=event_reasons(engine, pending, event, effects),
            )
            lines_out.append((event.contact, line))
            if effects and type(effects[0]) is Duplicate:
                duplicates += 1
                continue
            for e in earned:
                awarded_at[e.rule] = e.at
            for effect in effects:
                rec = effect_record(root, effect, event.action)
                if rec is not None:
                    records.append(rec)
    target = aliases.resolve(contact)
    if len(members) > 1:  # only what ended in the contact explained
        records = [r for r in records if aliases.resolve(r["contact"]) == target]
    seen = []
    for sent_as, line in lines_out:
        if aliases.resolve(sent_as) == target:
            line.contact = None if sent_as == target else sent_as
            seen.append(line)
    events = len(seen) if len(members) > 1 else events
    view = None
    at = resolve_as_of(as_of, end)
    state = states.get(target)
    if state is not None:
        # The flow's end of input: timers due by its clock fire at their own due times.
        while end is not None and (due := engine.next_due(state)) is not None and due <= end:
            for effect in engine.advance(state, due):
                rec = effect_record(target, effect)
                if rec is not None:
                    records.append(rec)
        view = engine.view(target, state, at)
        factors = engine.explain_likelihood(state, at)  # as of the view's time
        likelihood = factors.to_json(5) if factors is not None else None
        return Replay(target, records, view, events, duplicates, count, end, seen, at, likelihood)
    return Replay(target, records, view, events, duplicates, count, end, seen, at)


def _pick(rec: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: rec.get(k) for k in keys}
