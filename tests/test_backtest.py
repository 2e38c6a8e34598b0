"""leadscore.backtest: a rules change replayed over history, compared side by side.

Checked against `leadscore run` (a real Bytewax run of the same files), against calibrate's
population (the same figures from a separate replay), and for parallel == in line.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from leadscore.backtest import backtest, quantiles
from leadscore.calibration import at_threshold, auc
from leadscore.events import Event, parse_event
from leadscore.generate import write_events
from leadscore.outcomes import conversions, population, score_of
from leadscore.rules import load_rules

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "rules.yaml"
DAY = 86400.0


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bt") / "events.jsonl"
    write_events(path, contacts=300, events=8000, seed=5)
    return path


@pytest.fixture(scope="module")
def lower_mql(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = EXAMPLE.read_text()
    assert "at_least: 50" in text
    path = tmp_path_factory.mktemp("rules") / "lower.yaml"
    path.write_text(text.replace("at_least: 50", "at_least: 35", 1))
    return path


@pytest.mark.slow
def test_one_side_matches_what_run_writes(history: Path, tmp_path: Path) -> None:
    from bytewax.testing import run_main

    from flows.scoring import FlowConfig, build_flow

    out = tmp_path / "out"
    run_main(build_flow(FlowConfig(rules=str(EXAMPLE), events=[str(history)], out=str(out))))
    summary = json.loads((out / "summary.json").read_text())
    contacts = [orjson.loads(line) for line in (out / "contacts.jsonl").read_bytes().splitlines()]
    result = backtest(str(EXAMPLE), [str(history)])
    assert set(result) == {"candidate"}
    side = result["candidate"]
    assert side["contacts"] == summary["contacts"] == len(contacts)
    assert {k: v for k, v in side["triggers"].items() if v} == summary["triggers"]
    assert side["intake"]["rejected_by_reason"] == summary["rejected_by_reason"]
    assert side["stages"] == dict(sorted(Counter(c["stage"] or "(none)" for c in contacts).items()))
    assert side["grades"] == dict(sorted(Counter(c["grade"] for c in contacts).items()))
    assert side["score_quantiles"] == quantiles([c["total"] for c in contacts])


def test_lower_threshold_promotes_contacts_and_says_why(history: Path, lower_mql: Path) -> None:
    result = backtest(str(lower_mql), [str(history)], baseline=str(EXAMPLE), processes=1)
    base, cand, changed = result["baseline"], result["candidate"], result["changed"]
    newly = [c for c in changed if "mql" in c["newly_reach"]]
    assert not [c for c in changed if "mql" in c["no_longer_reach"]]
    assert len(newly) == cand["contacts_reached"]["mql"] - base["contacts_reached"]["mql"] > 0
    assert all("trigger mql: total at_least 50 -> total at_least 35" in c["why"] for c in newly)
    assert all(max(c["candidate_total"], 35) >= 35 for c in newly)
    # Same points on both sides: the totals do not move, only the trigger does.
    assert all(c["delta"] == 0 for c in newly)


def test_rule_change_names_the_rule(history: Path, tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    marker = "  - id: pricing-page\n"
    head, tail = text.split(marker, 1)
    tail = tail.replace("points: 5", "points: 25", 1)  # the first points: line of the rule
    new = tmp_path / "pricing.yaml"
    new.write_text(head + marker + tail)
    assert load_rules(new).actions != load_rules(EXAMPLE).actions
    result = backtest(str(new), [str(history)], baseline=str(EXAMPLE), processes=1)
    changed = result["changed"]
    assert changed, "more points for pricing visits must promote someone"
    top = changed[0]
    assert top["newly_reach"] and top["delta"] > 0
    assert top["why"][0].startswith("pricing-page +")
    deltas = [abs(c["delta"]) for c in changed]
    assert deltas == sorted(deltas, reverse=True)  # top movers first


def test_parallel_equals_in_line(history: Path, lower_mql: Path) -> None:
    args: dict[str, Any] = {"baseline": str(EXAMPLE), "outcomes": conversions(["purchase"])}
    one = backtest(str(lower_mql), [str(history)], processes=1, window=10 * DAY, **args)
    two = backtest(str(lower_mql), [str(history)], processes=2, window=10 * DAY, **args)
    assert one == two


def _figures_from_population(rules_path: Path, paths: list[str], as_of: float) -> dict[str, Any]:
    rules = load_rules(rules_path)
    pop = population(rules, paths, conversions(["purchase"]), 10 * DAY, as_of, require_both=False)
    labels = pop.labels()
    out: dict[str, Any] = {"population": len(pop.members), "converted": pop.converted}
    out["auc"] = round(auc([score_of(m.view, "total") for m in pop.members], labels), 6)
    for t in rules.triggers:
        if not t.below:
            p = at_threshold([score_of(m.view, t.score) for m in pop.members], labels, t.threshold)
            out[t.id] = (p.leads, p.converted)
    return out


def _side_figures(side: dict[str, Any]) -> dict[str, Any]:
    out = {k: side[k] for k in ("population", "converted", "auc")}
    for tid, fig in side["at_least"].items():
        out[tid] = (fig["leads"], fig["converted"])
    return out


def test_outcome_figures_equal_calibrates_population(history: Path, tmp_path: Path) -> None:
    """The snapshot taken during the full replay gives calibrate's population and scores.

    A second file replays the same events with a few moved across as_of out of order, which
    the snapshot cannot follow: the side falls back to a separate replay, same figures.
    """
    window = 10 * DAY
    won = conversions(["purchase"])
    result = backtest(str(EXAMPLE), [str(history)], outcomes=won, window=window)
    as_of = datetime.fromisoformat(result["as_of"]).timestamp()
    expected = _figures_from_population(EXAMPLE, [str(history)], as_of)
    assert _side_figures(result["candidate"]) == expected

    lines = history.read_bytes().splitlines()
    parsed = [parse_event(line, 0.0) for line in lines]
    early = [i for i, e in enumerate(parsed) if type(e) is Event and e.ts <= as_of][-50:]
    moved = set(early)
    shuffled = tmp_path / "late.jsonl"
    # 50 events from before as_of go to the very end, after events from after it.
    reordered = [line for i, line in enumerate(lines) if i not in moved] + [lines[i] for i in early]
    shuffled.write_bytes(b"\n".join(reordered) + b"\n")
    late = backtest(str(EXAMPLE), [str(shuffled)], outcomes=won, window=window, as_of=as_of)
    assert _side_figures(late["candidate"]) == _figures_from_population(
        EXAMPLE, [str(shuffled)], as_of
    )


def test_decay_change_is_named_when_no_rule_points_differ(history: Path, tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    assert "half_life: 14d" in text
    slower = tmp_path / "slower.yaml"
    slower.write_text(text.replace("half_life: 14d", "half_life: 60d", 1))
    result = backtest(str(slower), [str(history)], baseline=str(EXAMPLE), processes=1)
    changed = result["changed"]
    assert changed, "a slower decay must keep someone above a threshold"
    notes = [c for c in changed if any(w.startswith("group engagement:") for w in c["why"])]
    assert notes
    # Slower decay only keeps scores higher: nobody drops an at_least trigger they had.
    assert all(c["delta"] >= 0 for c in changed if "mql" in c["newly_reach"])


def test_no_converter_in_the_window_is_said_not_hidden(tmp_path: Path) -> None:
    from leadscore.backtest import describe

    events = tmp_path / "e.jsonl"
    events.write_text(
        '{"contact":"a","action":"page.hit","ts":"2026-06-01T00:00:00Z","props":{"url":"/x"}}\n'
        '{"contact":"a","action":"purchase","ts":"2026-06-01T01:00:00Z"}\n'
        '{"contact":"b","action":"page.hit","ts":"2026-06-02T00:00:00Z","props":{"url":"/x"}}\n'
        '{"contact":"c","action":"page.hit","ts":"2026-06-20T00:00:00Z","props":{"url":"/x"}}\n'
    )
    result = backtest(
        str(EXAMPLE), [str(events)], outcomes=conversions(["purchase"]), window=3 * DAY
    )
    side = result["candidate"]
    assert (side["population"], side["converted"], side["auc"]) == (1, 0, None)
    assert "none converted in the window" in describe(result)[0]
