"""Who converted, and what the scores said before they did: the data behind calibration.

A conversion is an event whose action the user names (``purchase``, ``deal.won``) or a row of
a CRM export (``contact,converted_at``). :func:`population` replays event files through the
pure engine (no Bytewax, no Redis, nothing delivered) up to and including ``as_of`` and
returns every contact that was in play then: at least one accepted event at or before
``as_of`` and no conversion at or before it. Each member carries its state and scores decayed
to ``as_of`` and its label: whether it converts in ``(as_of, as_of + window]``.

No look-ahead: events after ``as_of`` are never applied, so a conversion's own points (and
anything that happened after the snapshot) cannot leak into the score that predicts it.
Events are checked as ``leadscore run`` checks them and the dead letters are counted.
Memory: the files are streamed; only contact states (and conversion times) are kept.
"""

from __future__ import annotations

import csv
import gzip
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from leadscore.engine import ContactState, Duplicate, Engine
from leadscore.events import (
    MAX_TS,
    Event,
    Reject,
    format_ts,
    latest_ts,
    parse_events,
    parse_ts,
)
from leadscore.identity import Aliases
from leadscore.merge import absorb
from leadscore.rules import TOTAL, Rules

STDIO = "-"
NORMALIZED = "normalized"
_CHUNK = 4096  # lines parsed per parse_events call


class OutcomeError(ValueError):
    """Bad outcome input or an unusable population: one line saying what to change."""


# --------------------------------------------------------------------------- conversions


@dataclass(slots=True)
class Conversions:
    """What counts as a conversion: event actions, and/or times loaded from a CRM export.

    ``times`` holds the CSV's conversions (contact -> sorted epoch seconds); conversion
    events are found while replaying, so they are not kept here.
    """

    actions: frozenset[str] = frozenset()
    times: dict[str, list[float]] = field(default_factory=dict)
    source: str | None = None  # the CSV path, for messages
    rows: int = 0  # CSV rows read (header excluded)
    rejected: int = 0  # CSV rows skipped: no contact or a time that does not parse
    first_rejected: str | None = None  # "outcomes.csv:7: ..." for the report

    def __bool__(self) -> bool:
        return bool(self.actions) or self.source is not None


def load_outcomes(path: str | Path, now: float = 0.0) -> Conversions:
    """Read a ``contact,converted_at`` CSV (a header row is optional; extra columns ignored).

    ``converted_at`` takes the same forms as an event's ``ts`` (RFC 3339, epoch seconds or
    milliseconds). A row without a contact or with a bad time is skipped and counted, not
    fatal: a CRM export with one broken row should not block a calibration. A file with no
    usable row at all is an error.
    """
    p = Path(path)
    if not p.is_file():
        raise OutcomeError(f"outcomes file not found: {path}; give a CSV of contact,converted_at")
    out = Conversions(source=str(path))
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(p, "rt", newline="", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
        for number, row in enumerate(csv.reader(fh), start=1):
            if not row or not any(cell.strip() for cell in row):
                continue
            contact = row[0].strip()
            raw_ts = row[1].strip() if len(row) > 1 else ""
            if number == 1 and contact.lower() in ("contact", "contact_id", "id"):
                continue  # the header
            out.rows += 1
            ts: float | Reject = (
                parse_ts(_number_or_text(raw_ts), now)
                if raw_ts
                else Reject("missing_field", "no converted_at")
            )
            if not contact or type(ts) is not float:
                out.rejected += 1
                if out.first_rejected is None:
                    why = "no contact" if not contact else f"converted_at {raw_ts!r} is not a time"
                    out.first_rejected = f"{path}:{number}: {why}"
                continue
            out.times.setdefault(contact, []).append(ts)
    if not out.times:
        raise OutcomeError(
            f"{path}: no usable row (expected contact,converted_at with RFC 3339 or epoch "
            f"times{'; first problem: ' + out.first_rejected if out.first_rejected else ''})"
        )
    for times in out.times.values():
        times.sort()
    return out


def conversions(
    actions: Iterable[str] = (), outcomes: str | Path | None = None, now: float = 0.0
) -> Conversions:
    """The conversions the user asked for: ``--conversion`` actions and/or ``--outcomes``."""
    acts = frozenset(a for a in actions if a)
    if not acts and outcomes is None:
        raise OutcomeError(
            "no outcomes: name the converting action with --conversion (e.g. purchase) "
            "or give a CSV of contact,converted_at with --outcomes"
        )
    out = load_outcomes(outcomes, now) if outcomes is not None else Conversions()
    out.actions = acts
    return out


def _number_or_text(raw: str) -> object:
    """A CSV cell as parse_ts wants it: epoch numbers as numbers, anything else as text."""
    try:
        return float(raw) if raw.replace(".", "", 1).isdigit() else raw
    except ValueError:
        return raw


# --------------------------------------------------------------------------- reading


def open_events(path: str) -> IO[bytes]:
    """A binary stream over a JSONL file, a ``.gz`` one, or standard input (``-``)."""
    if path == STDIO:
        return sys.stdin.buffer
    if not Path(path).is_file():
        raise OutcomeError(f"events file not found: {path}")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def iter_chunks(paths: Sequence[str], size: int = _CHUNK) -> Iterator[list[bytes]]:
    """The files' non-blank lines, in file order, a chunk at a time (as the flow reads them)."""
    for path in paths:
        stream = open_events(path)
        try:
            chunk: list[bytes] = []
            for line in stream:
                if not line.strip():
                    continue
                chunk.append(line.rstrip(b"\r\n"))
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


@dataclass(slots=True)
class Intake:
    """What reading the files found, in ``leadscore run``'s terms (its summary's counts)."""

    lines: int = 0  # non-blank lines read
    accepted: int = 0  # valid events of a known (or conversion) action
    rejected: Counter[str] = field(default_factory=Counter)  # dead letters by reason code
    duplicates: int = 0  # accepted events the engine dropped as producer retries
    first_ts: float | None = None  # earliest accepted event time
    last_ts: float | None = None  # latest accepted event time
    conversion_events: Counter[str] = field(default_factory=Counter)  # per conversion action

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "accepted": self.accepted,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "duplicates": self.duplicates,
            "first_event": format_ts(self.first_ts) if self.first_ts is not None else None,
            "last_event": format_ts(self.last_ts) if self.last_ts is not None else None,
            "conversion_events": dict(sorted(self.conversion_events.items())),
        }


def checked_events(
    rules: Rules,
    chunks: Iterable[list[bytes]],
    conversion_actions: frozenset[str],
    now: float,
    intake: Intake,
) -> Iterator[Event]:
    """Accepted events in file order; every rejection counted in ``intake`` as ``run`` does.

    A conversion action is accepted even when no rule scores it: the user named it, so it is
    an outcome, not a typo (``run`` would dead-letter it as ``unknown_action``). With a wall
    clock ``now``, an event dated more than the default max_future past it is rejected as
    ``run`` rejects it, so one bad line cannot become the history's last event time (``now``
    0.0, as tests replaying fixed data pass, accepts any date).
    """
    known = rules.known_actions
    rejected = intake.rejected
    latest = latest_ts(now) if now > 0 else MAX_TS
    for chunk in chunks:
        intake.lines += len(chunk)
        for event in parse_events(chunk, now, latest):
            if type(event) is Event:
                action = event.action
                if action in known or action in conversion_actions:
                    intake.accepted += 1
                    ts = event.ts
                    if intake.first_ts is None or ts < intake.first_ts:
                        intake.first_ts = ts
                    if intake.last_ts is None or ts > intake.last_ts:
                        intake.last_ts = ts
                    if action in conversion_actions:
                        intake.conversion_events[action] += 1
                    yield event
                    continue
                rejected["unknown_action"] += 1
            else:
                rejected[event.code] += 1  # type: ignore[union-attr]


def scan(
    rules: Rules, paths: Sequence[str], conversion_actions: frozenset[str], now: float
) -> Intake:
    """One pass that only checks events: the time span and conversion counts, no scoring."""
    intake = Intake()
    for _ in checked_events(rules, iter_chunks(paths), conversion_actions, now, intake):
        pass
    return intake


# --------------------------------------------------------------------------- scores


def score_names(rules: Rules) -> list[str]:
    """What ``--score`` may name: total, normalized (with a ``scale``), the likelihood (with
    ``predict``), or a group."""
    names = [TOTAL]
    if rules.scale_max:
        names.append(NORMALIZED)
    if rules.predict is not None:
        names.append(rules.predict.name)
    return names + [g for g in rules.groups if g not in (TOTAL, NORMALIZED)]


def check_score(rules: Rules, score: str) -> None:
    names = score_names(rules)
    if score not in names:
        extra = "" if rules.scale_max else " (normalized needs a scale: section in the rules)"
        raise OutcomeError(f"unknown --score {score!r}; use one of {', '.join(names)}{extra}")


def score_of(view: dict[str, Any], score: str) -> float:
    """The named score from an :meth:`Engine.view` (rounded as ``run`` writes it)."""
    if score == TOTAL:
        return float(view["total"])
    if score == NORMALIZED:
        return float(view["normalized"] or 0.0)
    direct = view.get(score)  # the likelihood, a top-level field (rules' `predict`)
    if type(direct) is float or type(direct) is int:
        return float(direct)
    return float(view["scores"].get(score, 0.0))


def settle(engine: Engine, state: ContactState, t: float) -> None:
    """Bring a state to time ``t`` as the flow's timers would: every crossing due by ``t``
    fires at its own due time, then scores are read decayed to ``t``."""
    engine.advance(state, t)


# --------------------------------------------------------------------------- population


@dataclass(slots=True)
class Member:
    """One contact in play at ``as_of``: its state and read model decayed to ``as_of``."""

    contact: str
    state: ContactState
    view: dict[str, Any]  # Engine.view at as_of: scores, total, normalized, grade, stage...
    label: bool  # converts in (as_of, as_of + window]
    converted_at: float | None  # its first conversion in the window


@dataclass(slots=True)
class Population:
    """The calibration set: who was in play at ``as_of`` and who went on to convert."""

    as_of: float
    window: float
    members: list[Member]
    intake: Intake
    excluded: int  # contacts with events by as_of that had already converted by then
    outcomes: Conversions

    @property
    def converted(self) -> int:
        return sum(1 for m in self.members if m.label)

    def scores(self, score: str) -> list[float]:
        return [score_of(m.view, score) for m in self.members]

    def labels(self) -> list[bool]:
        return [m.label for m in self.members]


def default_as_of(last_ts: float, window: float) -> float:
    return last_ts - window


def population(
    rules: Rules,
    paths: Sequence[str],
    outcomes: Conversions,
    window: float,
    as_of: float | None = None,
    now: float = 0.0,
    require_both: bool = True,
    count_all: bool = False,
) -> Population:
    """Replay ``paths`` up to and including ``as_of`` and label who converts in the window.

    Without ``as_of`` the files are read twice: once to find the last event time (``as_of``
    is that minus ``window``), then to score. ``now`` stands in for a missing ``ts`` as the
    flow's clock does. Raises :class:`OutcomeError` with what to change when the conversion
    actions never occur, ``as_of`` is outside the data, or (with ``require_both``) the
    population has no converters or no non-converters. ``count_all`` keeps every rule's
    hits and every action's count in the states (training's candidate features).
    """
    if window <= 0:
        raise OutcomeError(f"--window must be positive, got {window:g}s")
    actions = outcomes.actions
    given = as_of is not None
    if as_of is None:
        if STDIO in paths:
            raise OutcomeError(
                "reading events from standard input needs --as-of (the default, last event "
                "time minus --window, needs a first pass over the files)"
            )
        first = scan(rules, paths, actions, now)
        check_intake(first, outcomes, paths)
        assert first.last_ts is not None
        as_of = default_as_of(first.last_ts, window)
    result = _replay_population(rules, paths, outcomes, as_of, window, now, count_all)
    intake = result.intake
    check_intake(intake, outcomes, paths)
    assert intake.first_ts is not None and intake.last_ts is not None
    if not intake.first_ts <= as_of < intake.last_ts:
        span = f"({format_ts(intake.first_ts)} to {format_ts(intake.last_ts)})"
        if not given:
            raise OutcomeError(
                f"the default --as-of, the last event minus --window {window / 86400:g}d, is "
                f"{format_ts(as_of)}, before the data {span}; shorten --window or give --as-of"
            )
        raise OutcomeError(
            f"--as-of {format_ts(as_of)} is outside the data {span}; pick a time in that "
            "range, at least --window before its end, or leave --as-of out"
        )
    if require_both:
        check_population(result)
    return result


def check_population(pop: Population) -> None:
    """Calibration needs both converters and non-converters in the population."""
    n = len(pop.members)
    converted = pop.converted
    span = f"({format_ts(pop.as_of)}, {format_ts(pop.as_of + pop.window)}]"
    if n == 0:
        raise OutcomeError(
            f"no contact is in play at {format_ts(pop.as_of)} (every contact with events by then "
            "had converted); pick a later --as-of"
        )
    if converted == 0:
        raise OutcomeError(
            f"none of the {n:,} contacts in play at {format_ts(pop.as_of)} converts in {span}; "
            "pick an earlier --as-of or a longer --window, or check the --conversion action"
        )
    if converted == n:
        raise OutcomeError(
            f"all {n:,} contacts in play at {format_ts(pop.as_of)} convert in {span}, so no score "
            "can separate them; pick a later --as-of or a shorter --window"
        )


def check_intake(intake: Intake, outcomes: Conversions, paths: Sequence[str]) -> None:
    """Stop when no event was accepted or a named conversion action never occurs."""
    where = ", ".join(paths)
    if intake.last_ts is None:
        raise OutcomeError(
            f"no accepted event in {where} ({intake.lines:,} lines read, "
            f"{sum(intake.rejected.values()):,} rejected); check the files and the rules"
        )
    missing = sorted(a for a in outcomes.actions if not intake.conversion_events.get(a))
    if missing:
        # A typo among several actions is still worth stopping for: it would pass silently.
        raise OutcomeError(
            f"conversion action {', '.join(map(repr, missing))} never occurs in {where}; "
            "pass --conversion with the action that records a sale (e.g. purchase), "
            "fix its spelling, or give --outcomes FILE"
        )


def _replay_population(
    rules: Rules,
    paths: Sequence[str],
    outcomes: Conversions,
    as_of: float,
    window: float,
    now: float,
    count_all: bool = False,
) -> Population:
    engine = Engine(rules, count_all=count_all)
    actions = outcomes.actions
    csv_times = outcomes.times
    end = as_of + window
    intake = Intake()
    states: dict[str, ContactState] = {}
    gone: set[str] = set()  # converted at or before as_of: not in the population
    won: dict[str, float] = {}  # first conversion event in (as_of, end]
    apply = engine.apply
    new_state = engine.new_state
    aliases = Aliases()  # merged ids -> the contact they went to (identify with merge)
    for event in checked_events(rules, iter_chunks(paths), actions, now, intake):
        ts = event.ts
        contact = aliases.resolve(event.contact) if aliases.into else event.contact
        if event.merge is not None:
            if ts > as_of:
                aliases.plan(contact, event.merge)  # who is who, for the labels only
            else:
                absorb(engine, states, aliases, contact, event)
                if contact in gone or not gone.isdisjoint(event.merge):
                    gone.add(contact)  # one of the person's ids converted by as_of
                    states.pop(contact, None)
        if event.action in actions:
            if ts <= as_of:
                if contact not in gone:
                    gone.add(contact)
                    states.pop(contact, None)
                continue
            if ts <= end and (contact not in won or ts < won[contact]):
                won[contact] = ts
            continue
        if ts > as_of or contact in gone:
            continue  # no look-ahead: nothing after the snapshot counts
        state = states.get(contact)
        if state is None:
            times = csv_times.get(contact)
            if times is not None and times[0] <= as_of:
                gone.add(contact)
                continue
            state = states[contact] = new_state()
        effects = apply(state, event)
        if effects and type(effects[0]) is Duplicate:
            intake.duplicates += 1
    # A conversion is the person's: under any of its ids, merged before or after as_of.
    first_of: dict[str, float] = {}
    for contact, t in [
        *won.items(),
        *((c, t) for c, times in csv_times.items() for t in times if as_of < t <= end),
    ]:
        root = aliases.resolve(contact)
        if root not in first_of or t < first_of[root]:
            first_of[root] = t
    members: list[Member] = []
    for contact in sorted(states):
        state = states[contact]
        settle(engine, state, as_of)
        first = first_of.get(aliases.resolve(contact))
        members.append(
            Member(contact, state, engine.view(contact, state), first is not None, first)
        )
    return Population(as_of, window, members, intake, len(gone), outcomes)
