"""leadscore.calibration against brute force: bands, every threshold's figures, AUC, policies.

And end to end on generated data: the population's bands equal counts made from an
independent replay of each contact's own events.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from outcome_helpers import in_band, independent_bands

from leadscore.calibration import (
    CalibrationError,
    at_threshold,
    auc,
    bands,
    calibrate,
    curve,
    decile_edges,
    describe,
    parse_bands,
    recommend,
)
from leadscore.generate import write_events
from leadscore.outcomes import conversions, population, score_of
from leadscore.rules import load_rules

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0

scores_and_labels = st.lists(
    st.tuples(st.sampled_from([-5.0, 0.0, 0.5, 1.0, 2.5, 10.0, 40.0, 99.9]), st.booleans()),
    min_size=1,
    max_size=60,
)


@given(scores_and_labels, st.one_of(st.none(), st.sampled_from([[0, 1, 10], [-10, 50], [3, 4]])))
def test_bands_count_every_contact_once_as_brute_force_does(
    pairs: list[tuple[float, bool]], edges: list[float] | None
) -> None:
    scores = [s for s, _ in pairs]
    labels = [y for _, y in pairs]
    got = bands(scores, labels, decile_edges(scores) if edges is None else edges)
    assert sum(b.contacts for b in got) == len(scores)
    for i, b in enumerate(got):
        last = i == len(got) - 1
        inside = [y for s, y in pairs if in_band(s, b.lo, b.hi, last) or b.lo == b.hi == s]
        assert (b.contacts, b.converted) == (len(inside), sum(inside))
        assert b.rate == (sum(inside) / len(inside) if inside else 0.0)
    assert got[0].lo == min(min(scores), *(edges or [min(scores)]))
    assert got[-1].hi >= max(scores)


def test_deciles_split_a_spread_population_into_ten_equal_bands() -> None:
    scores = [float(i) for i in range(100)]
    got = bands(scores, [i % 7 == 0 for i in range(100)], decile_edges(scores))
    assert [b.contacts for b in got] == [10] * 10
    assert [(b.lo, b.hi) for b in got][:2] == [(0.0, 10.0), (10.0, 20.0)]
    assert got[-1].hi == 99.0  # the last band includes its top


@given(scores_and_labels)
def test_curve_and_auc_match_brute_force(pairs: list[tuple[float, bool]]) -> None:
    scores = [s for s, _ in pairs]
    labels = [y for _, y in pairs]
    pts = curve(scores, labels)
    assert [p.threshold for p in pts] == sorted(set(scores), reverse=True)
    positives = sum(labels)
    for p in pts:
        sent = [y for s, y in pairs if s >= p.threshold]
        assert (p.leads, p.converted) == (len(sent), sum(sent))
        assert p == at_threshold(scores, labels, p.threshold)
        if positives:
            assert p.recall == sum(sent) / positives
            assert p.lift == pytest.approx((sum(sent) / len(sent)) / (positives / len(pairs)))
    pos = [s for s, y in pairs if y]
    neg = [s for s, y in pairs if not y]
    if pos and neg:
        wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
        assert auc(scores, labels) == pytest.approx(wins / (len(pos) * len(neg)))


def test_recommendation_policies() -> None:
    scores = [90.0, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    labels = [True, True, False, True, False, False, True, False, False, False]
    pts = curve(scores, labels)
    best, policy = recommend(pts)
    assert policy == "max-f1" and best.threshold == 60  # 3 of 4 sent convert, 3 of 4 caught
    assert recommend(pts, min_precision=0.7)[0].threshold == 60
    assert recommend(pts, min_precision=1.0)[0].threshold == 80
    assert recommend(pts, capacity=3)[0].threshold == 70
    with pytest.raises(CalibrationError, match="lower --min-precision"):
        recommend(curve([1.0, 2.0], [False, False]), min_precision=0.5)
    with pytest.raises(CalibrationError, match="raise --capacity"):
        recommend(curve([5.0, 5.0, 5.0], [True, False, False]), capacity=2)


def test_parse_bands() -> None:
    assert parse_bands("0,10, 20") == [0.0, 10.0, 20.0]
    for bad in ("10", "0,a", "10,5"):
        with pytest.raises(CalibrationError, match="--bands"):
            parse_bands(bad)


def test_words_say_what_the_chart_shows() -> None:
    cal = calibrate([90.0, 80, 70, 60, 10, 0], [True, True, False, True, False, False])
    words = " ".join(describe(cal, "total", "30 days"))
    assert "Of 6 contacts in play, 3 converted within 30 days" in words
    assert "a threshold of 60 sends 4 leads and catches 100% of buyers" in words
    assert "convert at 75.0%, 1.5x the average" in words


def test_bands_on_generated_data_match_an_independent_replay(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    write_events(path, contacts=400, events=12000, seed=11)
    rules = load_rules(ROOT / "examples" / "rules.yaml")
    window = 14 * DAY
    pop = population(rules, [str(path)], conversions(["purchase"]), window)
    scores = [score_of(m.view, "total") for m in pop.members]
    cal = calibrate(scores, pop.labels())
    edges = [b.lo for b in cal.bands] + [cal.bands[-1].hi]
    expected = independent_bands(rules, [path], pop.as_of, window, edges)
    assert [(b.contacts, b.converted) for b in cal.bands] == expected
    assert cal.converted == sum(c for _, c in expected) > 0
    assert [b.rate for b in cal.bands] == [c / n if n else 0.0 for n, c in expected]
