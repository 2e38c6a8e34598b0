"""What a rules change would have done to history, before it is published (`leadscore backtest`).

Each rules file replays the same event files through the pure engine, as ``leadscore run``
would score them (same checks, same end-of-input timers) but with nothing delivered and no
Redis touched. The sides are compared: trigger firings, contacts per stage, grade and
segment, the score distribution, and the contacts whose trigger outcome changes, with the
rules that made the difference (from the point changes each side logged). With outcomes,
each side is also calibrated at ``as_of`` (AUC, and precision/recall at each ``at_least``
trigger's threshold), from a snapshot taken during the same pass.

Sides run in separate processes when there are cores for them: a replay is CPU-bound Python.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from leadscore.calibration import at_threshold, auc, fmt
from leadscore.engine import ContactState, Duplicate, Engine, PointChange, TriggerFired
from leadscore.events import format_ts
from leadscore.identity import Aliases
from leadscore.merge import MERGE, Merged, absorb
from leadscore.outcomes import (
    Conversions,
    Intake,
    OutcomeError,
    Population,
    check_intake,
    checked_events,
    iter_chunks,
    population,
    scan,
)
from leadscore.rules import TOTAL, Rules, load_rules

QUANTILES = (0, 10, 25, 50, 75, 90, 95, 99, 100)
TOP_WHY = 3  # rules named per changed contact


@dataclass(slots=True)
class Snapshot:
    """Per contact, its trigger scores at as_of (taken during the full replay)."""

    names: tuple[str, ...]  # score names: total first, then each at_least trigger's score
    scores: dict[str, tuple[float, ...]] = field(default_factory=dict)
    late: bool = False  # an event at or before as_of came after a later one: re-replay


@dataclass(slots=True)
class Side:
    """One rules file's replay: its figures plus what the comparison needs per contact."""

    rules: str
    summary: dict[str, Any]
    reached: dict[str, frozenset[str]]  # contact -> triggers that fired at least once
    totals: dict[str, float]  # contact -> total at the end
    points: dict[str, dict[str, float]]  # contact -> rule -> points applied


def quantiles(values: Sequence[float]) -> dict[str, float]:
    """Nearest-rank quantiles (p0 ... p100) of ``values``; empty for no values."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)
    out = {}
    for q in QUANTILES:
        rank = max(1, -(-q * n // 100))  # ceil(q * n / 100), at least 1
        out[f"p{q}"] = ordered[min(rank, n) - 1]
    return out


def _snapshot_names(rules: Rules) -> tuple[str, ...]:
    names = [TOTAL]
    for t in rules.triggers:
        if not t.below and t.score not in names:
            names.append(t.score)
    return tuple(names)


def replay_side(
    rules_path: str,
    paths: Sequence[str],
    outcomes: Conversions | None,
    as_of: float | None,
    window: float,
    now: float,
) -> Side:
    """Replay the whole history under one rules file (in a worker process, or in this one)."""
    rules = load_rules(rules_path)
    engine = Engine(rules)
    actions = outcomes.actions if outcomes is not None else frozenset()
    known = rules.known_actions
    intake = Intake()
    states: dict[str, ContactState] = {}
    fired: dict[str, set[str]] = {}
    firings: Counter[str] = Counter()
    points: dict[str, dict[str, float]] = {}
    snap = Snapshot(_snapshot_names(rules)) if as_of is not None else None
    names = snap.names if snap is not None else ()
    apply = engine.apply

    def record(contact: str, effects: list[Any]) -> None:
        for e in effects:
            t = type(e)
            if t is PointChange:
                if e.applied:
                    mine = points.setdefault(contact, {})
                    mine[e.rule] = mine.get(e.rule, 0.0) + e.applied
            elif t is TriggerFired:
                firings[e.trigger] += 1
                fired.setdefault(contact, set()).add(e.trigger)

    def take(contact: str, state: ContactState) -> None:
        assert snap is not None and as_of is not None
        # Fires what the history fires by then, at its due times; apply would do it anyway.
        record(contact, engine.advance(state, as_of))
        snap.scores[contact] = tuple(engine.score(state, n, as_of) for n in names)

    first_won: dict[str, float] = {}  # contact -> its first conversion event
    won: set[str] = set()  # converted in (as_of, as_of + window] by a conversion event
    window_end = (as_of if as_of is not None else 0.0) + window
    aliases = Aliases()  # merged ids -> the contact they went to, as `run` merges
    for event in checked_events(rules, iter_chunks(paths), actions, now, intake):
        contact = aliases.resolve(event.contact) if aliases.into else event.contact
        if event.merge is not None and event.action in known:
            if snap is not None:
                # The snapshot and the labels at as_of must see who was who then:
                # calibrate's population, which merges as of as_of, gives both.
                snap.late = True
            for change in absorb(engine, states, aliases, contact, event)[0]:
                if type(change) is Merged:  # the visitor's points and firings are the person's
                    for rule, applied in points.pop(change.visitor, {}).items():
                        mine = points.setdefault(contact, {})
                        mine[rule] = mine.get(rule, 0.0) + applied
                    fired.setdefault(contact, set()).update(fired.pop(change.visitor, ()))
                elif type(change) is not PointChange or change.rule != MERGE:
                    record(contact, [change])  # corrections and triggers the merge caused
        if actions and event.action in actions:
            ts = event.ts
            if contact not in first_won or ts < first_won[contact]:
                first_won[contact] = ts
            if as_of is not None and as_of < ts <= window_end:
                won.add(contact)
        if event.action not in known:
            continue  # a conversion action no rule scores: an outcome only
        state = states.get(contact)
        fresh = state is None
        if state is None:
            state = states[contact] = engine.new_state()
        if snap is not None:
            assert as_of is not None
            if event.ts > as_of:
                if not fresh and state.last_ts <= as_of:
                    take(contact, state)
            elif state.last_ts > as_of:
                snap.late = True  # out of order across as_of: the snapshot would miss it
        effects = apply(state, event)
        if effects and type(effects[0]) is Duplicate:
            intake.duplicates += 1
            continue
        record(contact, effects)

    end = intake.last_ts
    views: dict[str, dict[str, Any]] = {}
    for contact in sorted(states):
        state = states[contact]
        if snap is not None and as_of is not None and state.last_ts <= as_of:
            take(contact, state)
        # The flow's end of input: timers due by its clock fire at their own due times.
        while end is not None and (due := engine.next_due(state)) is not None and due <= end:
            record(contact, engine.advance(state, due))
        views[contact] = engine.view(contact, state, end)  # as of the clock, as `run` writes

    stages: Counter[str] = Counter()
    grades: Counter[str] = Counter()
    segments: Counter[str] = Counter()
    totals: dict[str, float] = {}
    for contact, view in views.items():
        totals[contact] = view["total"]
        stages[view["stage"] or "(none)"] += 1
        if view["grade"] is not None:
            grades[view["grade"]] += 1
        for s in view["segments"]:
            segments[s] += 1
    summary: dict[str, Any] = {
        "rules": rules_path,
        "contacts": len(views),
        "triggers": {t.id: firings.get(t.id, 0) for t in rules.triggers},
        "contacts_reached": {
            t.id: sum(1 for f in fired.values() if t.id in f) for t in rules.triggers
        },
        "stages": dict(sorted(stages.items())),
        "grades": dict(sorted(grades.items())),
        "segments": dict(sorted(segments.items())),
        "score_quantiles": quantiles(list(totals.values())),
        "intake": intake.to_dict(),
    }
    if snap is not None and outcomes is not None and as_of is not None:
        if snap.late:
            pop = population(rules, paths, outcomes, window, as_of, now, require_both=False)
            table = {
                m.contact: tuple(engine.score(m.state, n, as_of) for n in names)
                for m in pop.members
            }
            labels = {m.contact: m.label for m in pop.members}
        else:
            table, labels = _labelled(snap, outcomes, first_won, won, as_of, window)
        summary.update(_figures(rules, names, table, labels))
    return Side(
        rules_path,
        summary,
        {c: frozenset(f) for c, f in fired.items()},
        totals,
        points,
    )


def _labelled(
    snap: Snapshot,
    outcomes: Conversions,
    first_won: dict[str, float],
    won: set[str],
    as_of: float,
    window: float,
) -> tuple[dict[str, tuple[float, ...]], dict[str, bool]]:
    """The population at as_of from a snapshot: drop who converted by then, label the rest.

    ``first_won`` and ``won`` come from conversion events seen during the replay; the CSV's
    conversions are added here.
    """
    first = dict(first_won)
    labels = set(won)
    end = as_of + window
    for c, times in outcomes.times.items():
        if c not in first or times[0] < first[c]:
            first[c] = times[0]
        if any(as_of < t <= end for t in times):
            labels.add(c)
    table = {c: s for c, s in snap.scores.items() if not (c in first and first[c] <= as_of)}
    return table, {c: c in labels for c in table}


def _figures(
    rules: Rules,
    names: tuple[str, ...],
    table: dict[str, tuple[float, ...]],
    labels: dict[str, bool],
) -> dict[str, Any]:
    """Calibrate's figures for one side: AUC of the total, and each at_least trigger's."""
    contacts = sorted(table)
    ys = [labels[c] for c in contacts]
    by_name = {n: [round(table[c][i], 4) for c in contacts] for i, n in enumerate(names)}
    positives = sum(ys)
    out: dict[str, Any] = {
        "population": len(contacts),
        "converted": positives,
        "base_rate": round(positives / len(contacts), 6) if contacts else 0.0,
        "auc": _clean(auc(by_name[TOTAL], ys)),
        "at_least": {},
    }
    for t in rules.triggers:
        if t.below:
            continue
        p = at_threshold(by_name[t.score], ys, t.threshold)
        out["at_least"][t.id] = {
            "score": t.score,
            "threshold": t.threshold,
            "leads": p.leads,
            "converted": p.converted,
            "precision": round(p.precision, 6),
            "recall": round(p.recall, 6),
            "lift": round(p.lift, 6),
            "auc": _clean(auc(by_name[t.score], ys)),
        }
    return out


def _clean(x: float) -> float | None:
    return None if x != x else round(x, 6)  # NaN (one class only) -> null


# --------------------------------------------------------------------------- comparison


def _definition_changes(old: Rules, new: Rules) -> dict[str, str]:
    """Trigger id -> how its definition changed, plus group decay changes under ``group:``."""
    out: dict[str, str] = {}
    before = {t.id: t for t in old.triggers}
    for t in new.triggers:
        b = before.get(t.id)
        if b is None:
            out[t.id] = f"trigger {t.id} is new"
        elif (b.score, b.threshold, b.below, b.rearm_below, b.after) != (
            t.score,
            t.threshold,
            t.below,
            t.rearm_below,
            t.after,
        ):
            kind = "below" if t.below else "at_least"
            out[t.id] = (
                f"trigger {t.id}: {b.score} {kind} {fmt(b.threshold)} -> "
                f"{t.score} {kind} {fmt(t.threshold)}"
            )
    for tid in before.keys() - {t.id for t in new.triggers}:
        out[tid] = f"trigger {tid} was removed"
    for name, g in new.groups.items():
        o = old.groups.get(name)
        if o is not None and (o.half_life, o.expire_after, o.max, o.min) != (
            g.half_life,
            g.expire_after,
            g.max,
            g.min,
        ):
            out[f"group:{name}"] = f"group {name}: decay or bounds changed"
    return out


def compare(base: Side, cand: Side, old: Rules, new: Rules) -> list[dict[str, Any]]:
    """Contacts whose set of reached triggers differs, biggest total movers first, with why."""
    defs = _definition_changes(old, new)
    group_notes = [v for k, v in defs.items() if k.startswith("group:")]
    after = {t.id: t.after for t in new.triggers if t.after}
    changed: list[dict[str, Any]] = []
    for contact in base.reached.keys() | cand.reached.keys():
        b = base.reached.get(contact, frozenset())
        c = cand.reached.get(contact, frozenset())
        if b == c:
            continue
        bp = base.points.get(contact, {})
        cp = cand.points.get(contact, {})
        diffs = sorted(
            ((r, cp.get(r, 0.0) - bp.get(r, 0.0)) for r in bp.keys() | cp.keys()),
            key=lambda rd: (-abs(rd[1]), rd[0]),
        )
        why = [
            f"{r} {d:+,.4g} ({fmt(bp.get(r, 0.0))} -> {fmt(cp.get(r, 0.0))})"
            for r, d in diffs[:TOP_WHY]
            if abs(d) > 1e-9
        ]
        for t in sorted(b ^ c):
            if t in defs:
                why.append(defs[t])
            elif (dep := after.get(t)) is not None and (dep in defs or dep in b ^ c):
                why.append(f"{t} follows {dep} (after: {dep}), whose firings changed")
        if not why:
            why = group_notes or ["decay timing: the same points, crossing at another time"]
        bt, ct = base.totals.get(contact, 0.0), cand.totals.get(contact, 0.0)
        changed.append(
            {
                "contact": contact,
                "newly_reach": sorted(c - b),
                "no_longer_reach": sorted(b - c),
                "baseline_total": bt,
                "candidate_total": ct,
                "delta": round(ct - bt, 4),
                "why": why,
            }
        )
    changed.sort(key=lambda x: (-abs(x["delta"]), x["contact"]))
    return changed


def workers_for(sides: int) -> int:
    """Processes to use: one per side when the machine has the cores, else none (in line)."""
    return sides if sides > 1 and (os.cpu_count() or 1) >= 2 else 1


def backtest(
    candidate: str,
    paths: Sequence[str],
    baseline: str | None = None,
    outcomes: Conversions | None = None,
    as_of: float | None = None,
    window: float = 30 * 86400.0,
    now: float = 0.0,
    processes: int | None = None,
) -> dict[str, Any]:
    """Replay history under ``candidate`` (and ``baseline``) and compare; nothing delivered.

    Returns ``{"baseline": {...}, "candidate": {...}, "changed": [...]}`` (only
    ``candidate`` without a baseline), plus ``as_of`` and ``window`` with outcomes.
    """
    rules_new = load_rules(candidate)
    rules_old = load_rules(baseline) if baseline is not None else None
    if outcomes is not None and not outcomes:
        outcomes = None
    if outcomes is not None:
        if window <= 0:
            raise OutcomeError(f"--window must be positive, got {window:g}s")
        if as_of is None or outcomes.actions:
            first = scan(rules_new, paths, outcomes.actions, now)
            _check(first, outcomes, paths, as_of, window)
            assert first.last_ts is not None
            if as_of is None:
                as_of = first.last_ts - window
    else:
        as_of = None
    jobs = [(candidate, rules_new)] + ([(baseline, rules_old)] if baseline else [])
    n = processes if processes is not None else workers_for(len(jobs))
    args = [(path, list(paths), outcomes, as_of, window, now) for path, _ in jobs]
    if n > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")  # no inherited locks or threads
        with ProcessPoolExecutor(max_workers=min(n, len(jobs)), mp_context=ctx) as pool:
            sides = list(pool.map(replay_side, *zip(*args, strict=True)))
    else:
        sides = [replay_side(*a) for a in args]
    result: dict[str, Any] = {}
    if outcomes is not None and as_of is not None:
        result["as_of"] = format_ts(as_of)
        result["window"] = window
    if baseline is not None and rules_old is not None:
        result["baseline"] = sides[1].summary
        result["candidate"] = sides[0].summary
        result["changed"] = compare(sides[1], sides[0], rules_old, rules_new)
    else:
        result["candidate"] = sides[0].summary
    return result


def _check(
    intake: Intake,
    outcomes: Conversions,
    paths: Sequence[str],
    as_of: float | None,
    window: float,
) -> None:
    """The same bad-input checks as calibrate: missing actions, as_of outside the data."""
    check_intake(intake, outcomes, paths)
    assert intake.first_ts is not None and intake.last_ts is not None
    t = as_of if as_of is not None else intake.last_ts - window
    if not intake.first_ts <= t < intake.last_ts:
        raise OutcomeError(
            f"--as-of {format_ts(t)} is outside the data ({format_ts(intake.first_ts)} to "
            f"{format_ts(intake.last_ts)}); pick a time in that range or a shorter --window"
        )


def describe(result: dict[str, Any]) -> list[str]:
    """The backtest in words."""
    cand = result["candidate"]
    base = result.get("baseline")
    lines: list[str] = []
    if "auc" in cand and cand["auc"] is None:
        lines.append(
            f"Note: of the {cand['population']:,} contacts in play at {result['as_of']}, "
            + ("none" if not cand["converted"] else "all")
            + " converted in the window, so AUC, precision and recall say nothing; "
            "pick another --as-of or --window"
        )
    if base is None:
        fired = ", ".join(f"{t} {n:,}" for t, n in cand["triggers"].items()) or "none"
        lines.append(f"Over {cand['contacts']:,} contacts, triggers fire: {fired}.")
        if "auc" in cand:
            lines.append(f"AUC of the total score at {result['as_of']}: {cand['auc']}.")
        return lines
    for t in sorted(set(cand["triggers"]) | set(base["triggers"])):
        b, c = base["triggers"].get(t, 0), cand["triggers"].get(t, 0)
        newly = sum(1 for x in result["changed"] if t in x["newly_reach"])
        lost = sum(1 for x in result["changed"] if t in x["no_longer_reach"])
        lines.append(
            f"{t} fires {b:,} -> {c:,} times ({c - b:+,}); {newly:,} contacts newly reach it, "
            f"{lost:,} no longer do."
        )
    if "auc" in cand and "auc" in base:
        lines.append(
            f"AUC of the total score at {result['as_of']}: {base['auc']} -> {cand['auc']}."
        )
        for t, fig in cand.get("at_least", {}).items():
            old = base.get("at_least", {}).get(t)
            if old:
                lines.append(
                    f"{t} (>= {fmt(old['threshold'])} -> >= {fmt(fig['threshold'])}): precision "
                    f"{old['precision']:.1%} -> {fig['precision']:.1%}, recall "
                    f"{old['recall']:.1%} -> {fig['recall']:.1%}, leads {old['leads']:,} -> "
                    f"{fig['leads']:,}."
                )
    return lines


__all__ = ["Population", "Side", "backtest", "compare", "describe", "quantiles", "replay_side"]
