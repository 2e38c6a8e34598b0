"""Merges in the replays that read history (backtest, calibrate, train): as `run` merges.

The oracle is the file flow (`leadscore run` on the same events): a visitor's history merged
into the known contact at the identify, later events of the old id scored for the known one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import run_main
from test_identity_flow import KNOWN, RULES, VISITOR, hit, identify, one_contact, write

from flows.scoring import FlowConfig, build_flow
from leadscore.backtest import replay_side
from leadscore.outcomes import conversions, population
from leadscore.rules import load_rules_text

T0 = 1780272000.0  # 2026-06-01T00:00:00Z
DAY = 86400.0
OTHER = "bob@acme.com"


def history() -> list[dict[str, Any]]:
    visitor = [hit(VISITOR, T0 + d * DAY) for d in range(1, 5)]
    known = [hit(KNOWN, T0 + 6 * DAY, "form.submit"), hit(KNOWN, T0 + 6 * DAY)]
    others = [hit(OTHER, T0 + d * DAY) for d in (2, 9)]
    merge = [identify(KNOWN, T0 + 7 * DAY, VISITOR)]
    later = [hit(VISITOR, T0 + 8 * DAY), hit(VISITOR, T0 + 9 * DAY, "cart.add")]
    return visitor + known + others + merge + later


def run_contacts(tmp_path: Path, rules: Path, events: Path) -> dict[str, dict[str, Any]]:
    out = tmp_path / "out"
    run_main(build_flow(FlowConfig(rules=str(rules), events=[str(events)], out=str(out))))
    lines = (out / "contacts.jsonl").read_text().splitlines()
    return {c["contact"]: c for c in map(json.loads, lines)}


def test_backtest_merges_as_run_does(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    events = write(tmp_path / "e.jsonl", history())
    side = replay_side(str(rules), [str(events)], None, None, 30 * DAY, 0.0)
    ran = run_contacts(tmp_path, rules, events)
    assert set(side.totals) == set(ran) == {KNOWN, OTHER}
    for contact, line in ran.items():
        assert side.totals[contact] == pytest.approx(line["total"], abs=1e-6)
    expected = one_contact([e for e in history() if e["contact"] != OTHER], T0 + 9 * DAY)
    assert side.totals[KNOWN] == pytest.approx(expected["total"], abs=1e-6)
    # the points earned under the visitor's id are the known contact's now
    assert side.points[KNOWN]["pricing"] == pytest.approx(10 * 6)
    assert side.summary["intake"]["rejected"] == 0
    assert side.reached == {KNOWN: frozenset({"mql"})}  # the visitor's history counted


def test_calibrate_merges_before_as_of_and_labels_the_person_after_it(tmp_path: Path) -> None:
    events = [
        *history(),
        {"contact": VISITOR, "action": "purchase", "ts": T0 + 12 * DAY},  # the old id buys
        {"contact": OTHER, "action": "email.click", "ts": T0 + 10 * DAY},
    ]
    path = str(write(tmp_path / "e.jsonl", events))
    rules = load_rules_text(RULES, "rules.yaml")
    # as_of after the merge: one member for the person, with both histories
    pop = population(rules, [path], conversions(["purchase"]), 10 * DAY, T0 + 8.5 * DAY)
    members = {m.contact: m for m in pop.members}
    assert set(members) == {KNOWN, OTHER}
    assert members[KNOWN].label and not members[OTHER].label
    merged = [e for e in history() if e["contact"] != OTHER and e["ts"] <= T0 + 8.5 * DAY]
    assert members[KNOWN].view["total"] == pytest.approx(
        one_contact(merged, T0 + 8.5 * DAY)["total"], abs=1e-6
    )
    # as_of before the merge: the visitor is a member under its own id (nobody knew yet),
    # and the purchase, made under that id after the merge, is the person's
    early = population(rules, [path], conversions(["purchase"]), 10 * DAY, T0 + 5 * DAY)
    assert {m.contact: m.label for m in early.members} == {VISITOR: True, OTHER: False}
    both = population(rules, [path], conversions(["purchase"]), 10 * DAY, T0 + 6.5 * DAY)
    assert {m.contact: m.label for m in both.members} == {VISITOR: True, KNOWN: True, OTHER: False}


def test_backtest_with_outcomes_takes_the_population_from_calibrate(tmp_path: Path) -> None:
    """With --as-of and outcomes, a merge in the history makes the snapshot come from the
    same population calibrate computes (who was who at as_of, the person's conversions)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    events = [*history(), {"contact": VISITOR, "action": "purchase", "ts": T0 + 12 * DAY}]
    path = str(write(tmp_path / "e.jsonl", events))
    side = replay_side(str(rules), [path], conversions(["purchase"]), T0 + 8.5 * DAY, 10 * DAY, 0.0)
    assert (side.summary["population"], side.summary["converted"]) == (2, 1)
