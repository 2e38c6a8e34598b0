"""leadscore.outcomes: who was in play at as_of, their scores then, and who converted after.

Checked against an independent computation: each contact's own events up to as_of run
through a fresh engine, and labels counted straight from the conversion times.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadscore.engine import Engine
from leadscore.events import Event, parse_event
from leadscore.generate import write_events
from leadscore.outcomes import (
    OutcomeError,
    conversions,
    load_outcomes,
    population,
    scan,
    score_of,
)
from leadscore.rules import load_rules_text

T0 = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
DAY = 86400.0
ROOT = Path(__file__).resolve().parent.parent

RULES = """\
version: 1
groups:
  engagement: {decay: {half_life: 7d}}
  fit: {}
actions:
  - {id: pricing, on: page.hit, where: {url: "*/pricing*"}, points: 20, repeat: true}
  - {id: open, on: email.open, points: 1, repeat: true}
  - {id: bought, on: purchase, points: 100, repeat: true}
triggers:
  - {id: hot, score: total, at_least: 30, actions: [{add_segment: hot}]}
scale: {score: total, max: 100}
"""


def ev(contact: str, action: str, at: float, **props: Any) -> dict[str, Any]:
    return {"contact": contact, "action": action, "ts": at, "props": props}


def write(path: Path, rows: list[dict[str, Any] | bytes]) -> str:
    path.write_bytes(
        b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)
    )
    return str(path)


@pytest.fixture
def rules() -> Any:
    return load_rules_text(RULES)


def test_population_labels_and_no_look_ahead(tmp_path: Path, rules: Any) -> None:
    as_of = T0 + 10 * DAY
    rows: list[dict[str, Any] | bytes] = [
        ev("ann", "page.hit", T0, url="/pricing"),
        ev("ann", "page.hit", T0 + DAY, url="/pricing"),
        ev("ann", "purchase", as_of + 2 * DAY),  # converts in the window
        ev("ann", "page.hit", as_of + DAY, url="/pricing"),  # after as_of: never counted
        ev("bob", "email.open", T0 + DAY),
        ev("bob", "purchase", as_of + 40 * DAY),  # after the window: not a converter
        ev("cat", "page.hit", T0 + 2 * DAY, url="/pricing"),
        ev("cat", "purchase", T0 + 3 * DAY),  # converted before as_of: excluded
        ev("dan", "page.hit", as_of + DAY, url="/pricing"),  # first seen after as_of: out
        ev("eve", "email.open", as_of),  # exactly at as_of: in, at or before counts
        b'{"contact": "bad"',
        ev("zed", "chat.start", T0),  # unknown action: a dead letter
    ]
    path = write(tmp_path / "e.jsonl", rows)
    pop = population(rules, [path], conversions(["purchase"]), 30 * DAY, as_of=as_of)
    by = {m.contact: m for m in pop.members}
    assert sorted(by) == ["ann", "bob", "eve"]
    assert (by["ann"].label, by["bob"].label, by["eve"].label) == (True, False, False)
    assert by["ann"].converted_at == as_of + 2 * DAY
    assert pop.excluded == 1 and pop.converted == 1
    # ann: 20 + 20 decayed with a 7-day half-life, read at as_of; no purchase, no later hit.
    expected = 20 * 2 ** (-10 / 7) + 20 * 2 ** (-9 / 7)
    assert score_of(by["ann"].view, "total") == pytest.approx(expected, abs=1e-4)
    assert by["ann"].view["updated_at"].startswith("2026-06-11")
    assert pop.intake.rejected == {"invalid_json": 1, "unknown_action": 1}
    assert pop.intake.conversion_events == {"purchase": 3}


def test_default_as_of_is_last_event_minus_window(tmp_path: Path, rules: Any) -> None:
    rows = [
        ev("a", "email.open", T0),
        ev("b", "email.open", T0 + DAY),
        ev("a", "purchase", T0 + 5 * DAY),
        ev("c", "email.open", T0 + 9 * DAY),
    ]
    pop = population(rules, [write(tmp_path / "e.jsonl", rows)], conversions(["purchase"]), 7 * DAY)
    assert pop.as_of == T0 + 2 * DAY
    assert [(m.contact, m.label) for m in pop.members] == [("a", True), ("b", False)]


def test_an_event_dated_in_the_future_is_rejected_and_moves_nothing(
    tmp_path: Path, rules: Any
) -> None:
    """One line dated 2099 used to become the last event time, so the default --as-of was
    in 2099 too; at wall-clock ``now`` it is rejected as ``run`` rejects it (max_future)."""
    rows = [
        ev("a", "email.open", T0),
        ev("b", "email.open", T0 + DAY),
        ev("z", "email.open", datetime(2099, 1, 1, tzinfo=UTC).timestamp()),
        ev("a", "purchase", T0 + 5 * DAY),
        ev("c", "email.open", T0 + 9 * DAY),
    ]
    path = write(tmp_path / "e.jsonl", rows)
    now = T0 + 30 * DAY
    pop = population(rules, [path], conversions(["purchase"]), 7 * DAY, now=now)
    assert pop.as_of == T0 + 2 * DAY
    assert [(m.contact, m.label) for m in pop.members] == [("a", True), ("b", False)]
    assert pop.intake.rejected == {"bad_ts": 1}
    assert scan(rules, [path], frozenset(), now).last_ts == T0 + 9 * DAY


def test_outcomes_csv(tmp_path: Path, rules: Any) -> None:
    rows = [
        ev("a", "email.open", T0),
        ev("b", "email.open", T0),
        ev("c", "email.open", T0 + 5 * DAY),
    ]
    csv = tmp_path / "won.csv"
    csv.write_text(
        "contact,converted_at\n"
        "a,2026-06-04T00:00:00Z\n"
        f"b,{int((T0 + 20 * DAY) * 1000)}\n"  # epoch ms, after the window
        ",2026-06-04T00:00:00Z\n"
        "c,tomorrow\n"
    )
    won = load_outcomes(csv)
    assert (won.rows, won.rejected) == (4, 2)
    assert won.first_rejected == f"{csv}:4: no contact"
    pop = population(rules, [write(tmp_path / "e.jsonl", rows)], won, 7 * DAY, as_of=T0 + DAY)
    assert [(m.contact, m.label) for m in pop.members] == [("a", True), ("b", False)]


@pytest.mark.parametrize(
    ("actions", "as_of", "message"),
    [
        (["deal.won"], None, "conversion action 'deal.won' never occurs"),
        (["purchase"], T0 - DAY, "is outside the data"),
        (["purchase"], T0 + 30 * DAY, "is outside the data"),
        (["purchase"], T0 + 1.2 * DAY, "none of the 1 contacts"),
        (["purchase"], T0 + 0.1 * DAY, "all 1 contacts"),
    ],
)
def test_bad_input_is_one_line_saying_what_to_change(
    tmp_path: Path, rules: Any, actions: list[str], as_of: float | None, message: str
) -> None:
    rows = [
        ev("a", "email.open", T0),
        ev("b", "email.open", T0 + 0.2 * DAY),
        ev("a", "purchase", T0 + DAY),
        ev("b", "email.open", T0 + 2 * DAY),
        ev("c", "email.open", T0 + 3 * DAY),
    ]
    path = write(tmp_path / "e.jsonl", rows)
    with pytest.raises(OutcomeError) as err:
        population(rules, [path], conversions(actions), DAY, as_of=as_of)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_no_outcomes_named_is_an_error() -> None:
    with pytest.raises(OutcomeError, match="--conversion"):
        conversions([], None)


def _independent(rules: Any, lines: list[bytes], as_of: float, window: float) -> dict[str, Any]:
    """Per contact: its own accepted events up to as_of in a fresh engine; labels by hand."""
    events = [e for e in (parse_event(line, 0.0) for line in lines) if type(e) is Event]
    events = [e for e in events if e.action in rules.known_actions]
    out: dict[str, Any] = {}
    for contact in {e.contact for e in events}:
        mine = [e for e in events if e.contact == contact]
        buys = [e.ts for e in mine if e.action == "purchase"]
        before = [e for e in mine if e.ts <= as_of]
        if not before or any(t <= as_of for t in buys):
            continue
        engine = Engine(rules)
        state = engine.new_state()
        for e in before:
            engine.apply(state, e)
        engine.advance(state, as_of)
        label = any(as_of < t <= as_of + window for t in buys)
        out[contact] = (engine.view(contact, state), label)
    return out


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.sampled_from(["page.hit", "email.open", "purchase"]),
            st.floats(0, 20 * DAY),
        ),
        min_size=1,
        max_size=30,
    ),
    st.floats(0, 20 * DAY),
)
def test_population_matches_an_independent_replay(
    tmp_path: Path, rules: Any, rows: list[tuple[str, str, float]], offset: float
) -> None:
    lines = [orjson.dumps(ev(c, a, T0 + t, url="/pricing")) for c, a, t in rows]
    path = tmp_path / "h.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    as_of, window = T0 + offset, 5 * DAY
    expected = _independent(rules, lines, as_of, window)
    try:
        pop = population(
            rules, [str(path)], conversions(["purchase"]), window, as_of, require_both=False
        )
    except OutcomeError as err:  # no purchase at all, or as_of outside the data
        assert "never occurs" in str(err) or "outside the data" in str(err)
        return
    got = {m.contact: (m.view, m.label) for m in pop.members}
    assert got == expected


@pytest.mark.slow
def test_intake_counts_match_run(tmp_path: Path) -> None:
    """Dead letters and duplicates are counted as `leadscore run` counts them."""
    from bytewax.testing import run_main

    from flows.scoring import FlowConfig, build_flow

    events = tmp_path / "g.jsonl"
    write_events(events, contacts=200, events=5000, seed=3, malformed_rate=0.01)
    out = tmp_path / "out"
    rules_path = ROOT / "examples" / "rules.yaml"
    run_main(build_flow(FlowConfig(rules=str(rules_path), events=[str(events)], out=str(out))))
    summary = json.loads((out / "summary.json").read_text())
    from leadscore.rules import load_rules

    intake = scan(load_rules(rules_path), [str(events)], frozenset(), 0.0)
    assert intake.rejected == summary["rejected_by_reason"]
    assert intake.accepted == summary["scored"] + summary["duplicates"]


def test_default_as_of_before_the_data_says_shorten_the_window(tmp_path: Path, rules: Any) -> None:
    rows = [ev("a", "email.open", T0), ev("a", "purchase", T0 + DAY)]
    with pytest.raises(OutcomeError) as err:
        population(rules, [write(tmp_path / "e.jsonl", rows)], conversions(["purchase"]), 30 * DAY)
    assert "the default --as-of" in str(err.value) and "shorten --window" in str(err.value)


def test_as_of_forms() -> None:
    from leadscore.calibrate import parse_as_of

    assert parse_as_of("2026-06-01") == T0
    assert parse_as_of("2026-06-01T00:00:00Z") == T0
    assert parse_as_of(str(int(T0))) == T0
    assert parse_as_of(str(int(T0 * 1000))) == T0
    with pytest.raises(OutcomeError, match="--as-of takes an RFC 3339 time"):
        parse_as_of("next tuesday")
