"""Fit rules on traits, stages, grades, scale and the read model (view)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scoring_helpers import DAY, T0, engine, ev, of_type, run, score

from leadscore.engine import PointChange, StageChanged
from leadscore.events import Event, format_ts

FIT = """
version: 1
fit:
  - {id: title-vp, trait: title, matches: "(?i)\\\\b(vp|vice president|head)\\\\b", points: 15}
  - {id: size, trait: company.size, between: [50, 5000], points: 10, group: fit}
  - {id: country, trait: country, in: [ES, FR, DE], points: 5}
  - {id: role, trait: role, equals: buyer, points: 10}
  - {id: has-phone, trait: phone, exists: true, points: 3}
"""


def identify(traits: dict[str, object], t: float = T0) -> Event:
    return ev("identify", t, traits=traits)


def fit_changes(effects: list[Any]) -> dict[str, float]:
    return {p.rule: p.applied for p in of_type(effects, PointChange)}


# --- each fit operator ---------------------------------------------------------------------


SCALARS = st.one_of(
    st.text(alphabet="aAbBßsS é", max_size=3),
    st.integers(-2, 2),
    st.floats(-2, 2, allow_nan=False),
    st.booleans(),
)


def _in_reference(options: list[object], value: object) -> bool:
    """`in` as documented: text equal ignoring case, numbers equal, flags identical."""
    for option in options:
        if isinstance(option, str):
            if isinstance(value, str) and value.casefold() == option.casefold():
                return True
        elif isinstance(option, bool):
            if value is option:
                return True
        elif not isinstance(value, bool) and value == option:
            return True
    return False


@settings(max_examples=150, deadline=None)
@given(options=st.lists(SCALARS, min_size=1, max_size=5), value=SCALARS)
def test_in_matches_any_option_like_equals(options: list[object], value: object) -> None:
    listed = orjson.dumps(options).decode()
    rules = f"version: 1\nfit:\n  - {{id: listed, trait: x, in: {listed}, points: 4}}\n"
    eng = engine(rules)
    awarded = "listed" in fit_changes(eng.apply(eng.new_state(), identify({"x": value})))
    assert awarded is _in_reference(options, value)


@pytest.mark.parametrize("number", ["1e3", "5e-324", "-2.5E+2", ".5e1", "1.5e3"])
def test_a_number_with_an_exponent_is_a_number_as_json_writes_it(number: str) -> None:
    """YAML 1.1 reads 1e3 (no dot, or an unsigned exponent) as text: `in: [1e3]` never
    matched the number 1000 (hypothesis found it with 5e-324, as orjson writes it)."""
    eng = engine(f"version: 1\nfit:\n  - {{id: listed, trait: x, in: [{number}], points: 4}}\n")
    effects = eng.apply(eng.new_state(), identify({"x": float(number)}))
    assert fit_changes(effects) == {"listed": 4}
    text = eng.apply(eng.new_state(), identify({"x": number}))
    assert fit_changes(text) == {}


def test_matches_uses_a_regex_search() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    effects = eng.apply(st, identify({"title": "Senior VP of Sales"}))
    (pc,) = of_type(effects, PointChange)
    assert (pc.rule, pc.group, pc.applied) == ("title-vp", "fit", 15)
    assert score(eng, st, "fit") == 15
    assert score(eng, st, "engagement") == 0


@pytest.mark.parametrize(
    ("title", "matches"),
    [
        ("VP Sales", True),
        ("Head of Growth", True),
        ("vice president", True),
        ("Intern", False),
        ("MVP builder", False),
    ],
)
def test_matches_table(title: str, matches: bool) -> None:
    eng = engine(FIT)
    st = eng.new_state()
    assert ("title-vp" in fit_changes(eng.apply(st, identify({"title": title})))) is matches


@pytest.mark.parametrize(
    ("size", "matches"),
    [(49, False), (50, True), (120, True), (5000, True), (5000.5, False), (5001, False)],
)
def test_between_is_inclusive_on_a_dotted_trait(size: float, matches: bool) -> None:
    eng = engine(FIT)
    st = eng.new_state()
    effects = eng.apply(st, identify({"company": {"size": size}}))
    assert ("size" in fit_changes(effects)) is matches


def test_between_ignores_non_numbers() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    effects = eng.apply(st, identify({"company": {"size": "big"}}))
    assert fit_changes(effects) == {}
    effects = eng.apply(st, identify({"company": {"size": True}}, T0 + 1))
    assert fit_changes(effects) == {}


@pytest.mark.parametrize(("country", "matches"), [("ES", True), ("DE", True), ("US", False)])
def test_in_list(country: str, matches: bool) -> None:
    eng = engine(FIT)
    st = eng.new_state()
    assert ("country" in fit_changes(eng.apply(st, identify({"country": country})))) is matches


def test_equals() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    assert fit_changes(eng.apply(st, identify({"role": "buyer"}))) == {"role": 10}
    st = eng.new_state()
    assert fit_changes(eng.apply(st, identify({"role": "seller"}))) == {}


def test_exists() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    assert fit_changes(eng.apply(st, identify({"phone": "+34 600 000 000"}))) == {"has-phone": 3}
    st = eng.new_state()
    assert fit_changes(eng.apply(st, identify({"email": "a@b.c"}))) == {}


def test_all_fit_rules_together_and_total() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    traits = {
        "title": "VP Sales",
        "company": {"size": 300},
        "country": "FR",
        "role": "buyer",
        "phone": "1",
    }
    effects = eng.apply(st, identify(traits))
    assert fit_changes(effects) == {
        "title-vp": 15,
        "size": 10,
        "country": 5,
        "role": 10,
        "has-phone": 3,
    }
    assert score(eng, st, "fit") == 43
    assert eng.view("c-1", st)["total"] == 43


# --- idempotence and rescoring on trait changes -------------------------------------------


def test_identifying_twice_never_double_counts() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    traits = {"title": "VP Sales", "country": "ES"}
    eng.apply(st, identify(traits))
    effects = eng.apply(st, identify(dict(traits), T0 + DAY))
    assert of_type(effects, PointChange) == []
    assert score(eng, st, "fit") == 20


def test_traits_on_any_event_count_for_fit() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    effects = eng.apply(st, ev("page.hit", T0, traits={"country": "DE"}, url="x"))
    assert fit_changes(effects) == {"country": 5}


def test_changing_a_trait_removes_the_fit_points() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    eng.apply(st, identify({"title": "VP Sales"}))
    effects = eng.apply(st, identify({"title": "Intern"}, T0 + 1))
    (pc,) = of_type(effects, PointChange)
    assert pc.rule == "title-vp"
    assert pc.applied == -15
    assert score(eng, st, "fit") == 0
    # and back again
    effects = eng.apply(st, identify({"title": "Head of Sales"}, T0 + 2))
    assert fit_changes(effects) == {"title-vp": 15}
    assert score(eng, st, "fit") == 15


def test_traits_merge_across_identifies() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    eng.apply(st, identify({"title": "VP Sales"}))
    effects = eng.apply(st, identify({"country": "ES"}, T0 + 1))
    assert fit_changes(effects) == {"country": 5}
    assert score(eng, st, "fit") == 20
    assert st.traits["title"] == "VP Sales"


def test_matched_fit_rules_are_recorded_in_state() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    eng.apply(st, identify({"title": "VP Sales", "country": "ES"}))
    assert sorted(st.fit) == ["country", "title-vp"]


def test_fit_default_group_is_fit() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    (pc,) = of_type(eng.apply(st, identify({"role": "buyer"})), PointChange)
    assert pc.group == "fit"


# --- stages --------------------------------------------------------------------------------

STAGES = """
version: 1
stages:
  order: [awareness, investigation, decision, action]
  rules:
    - {on: page.hit, where: {url: "*/blog/*"}, stage: awareness}
    - {on: asset.download, stage: investigation}
    - {on: [page.hit], where: {url: "*/pricing*"}, stage: decision}
    - {on: cart.add, stage: action}
"""


def stage_moves(effects: list[Any]) -> list[tuple[str, str | None]]:
    return [(s.stage, s.previous) for s in of_type(effects, StageChanged)]


def test_stages_move_forward_only_by_default() -> None:
    eng = engine(STAGES)
    st = eng.new_state()
    assert eng.view("c-1", st)["stage"] is None
    e1 = eng.apply(st, ev("page.hit", T0, url="https://a.com/blog/x"))
    assert stage_moves(e1) == [("awareness", None)]
    (sc,) = of_type(e1, StageChanged)
    assert sc.at == T0
    e2 = eng.apply(st, ev("page.hit", T0 + 1, url="https://a.com/pricing"))
    assert stage_moves(e2) == [("decision", "awareness")]
    e3 = eng.apply(st, ev("page.hit", T0 + 2, url="https://a.com/blog/y"))
    assert stage_moves(e3) == []  # no going back
    e4 = eng.apply(st, ev("asset.download", T0 + 3))
    assert stage_moves(e4) == []
    assert eng.view("c-1", st)["stage"] == "decision"
    e5 = eng.apply(st, ev("cart.add", T0 + 4))
    assert stage_moves(e5) == [("action", "decision")]
    assert eng.view("c-1", st)["stage"] == "action"


def test_stage_same_stage_again_is_not_a_change() -> None:
    eng = engine(STAGES)
    st = eng.new_state()
    eng.apply(st, ev("cart.add", T0))
    assert stage_moves(eng.apply(st, ev("cart.add", T0 + 1))) == []


def test_stages_may_skip_forward() -> None:
    eng = engine(STAGES)
    st = eng.new_state()
    assert stage_moves(eng.apply(st, ev("cart.add", T0))) == [("action", None)]


def test_allow_backward() -> None:
    eng = engine(STAGES.replace("  rules:", "  allow_backward: true\n  rules:"))
    st = eng.new_state()
    eng.apply(st, ev("cart.add", T0))
    effects = eng.apply(st, ev("page.hit", T0 + 1, url="https://a.com/blog/x"))
    assert stage_moves(effects) == [("awareness", "action")]
    assert eng.view("c-1", st)["stage"] == "awareness"


# --- grades and scale ----------------------------------------------------------------------

GRADES = """
version: 1
actions:
  - {id: e10, on: page.hit, points: 10, repeat: true}
  - {id: f5, on: webinar.attend, points: 5, group: fit, repeat: true}
grades:
  fit:        {group: fit, bands: {A: 40, B: 20, C: 5}, otherwise: D}
  engagement: {group: engagement, bands: {"1": 60, "2": 25}, otherwise: "3"}
scale: {score: total, max: 200}
"""


@pytest.mark.parametrize(
    ("fit", "eng_pts", "grade"),
    [
        (0, 0, "D3"),
        (5, 0, "C3"),
        (20, 30, "B2"),
        (40, 60, "A1"),
        (45, 70, "A1"),
        (15, 20, "C3"),
        (25, 60, "B1"),
    ],
)
def test_grade_is_fit_letter_plus_engagement_band(fit: int, eng_pts: int, grade: str) -> None:
    eng = engine(GRADES)
    st = eng.new_state()
    events = [ev("webinar.attend", T0) for _ in range(fit // 5)]
    events += [ev("page.hit", T0) for _ in range(eng_pts // 10)]
    run(eng, st, events)
    view = eng.view("c-1", st)
    assert view["scores"] == {"engagement": eng_pts, "fit": fit}
    assert view["grade"] == grade


@pytest.mark.parametrize(
    ("eng_pts", "normalized"), [(0, 0), (50, 25), (100, 50), (200, 100), (300, 100)]
)
def test_normalized_is_clamped_percentage_of_scale_max(eng_pts: int, normalized: float) -> None:
    eng = engine(GRADES)
    st = eng.new_state()
    run(eng, st, [ev("page.hit", T0) for _ in range(eng_pts // 10)])
    assert eng.view("c-1", st)["normalized"] == pytest.approx(normalized)


def test_normalized_is_zero_for_negative_scores() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: neg, on: email.unsubscribe, points: -30}
        scale: {score: total, max: 100}
        """
    )
    st = eng.new_state()
    eng.apply(st, ev("email.unsubscribe", T0))
    view = eng.view("c-1", st)
    assert view["total"] == -30
    assert view["normalized"] == 0


def test_scale_on_a_group() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: e, on: page.hit, points: 30}
          - {id: f, on: webinar.attend, points: 10, group: fit}
        scale: {score: fit, max: 40}
        """
    )
    st = eng.new_state()
    run(eng, st, [ev("page.hit", T0), ev("webinar.attend", T0)])
    assert eng.view("c-1", st)["normalized"] == pytest.approx(25)


# --- view ----------------------------------------------------------------------------------


def test_view_has_every_documented_field() -> None:
    eng = engine(
        GRADES
        + """
triggers:
  - {id: hot, score: total, at_least: 20, actions: [{add_segment: hot}, {add_tag: vip}]}
stages:
  order: [awareness, decision]
  rules:
    - {on: page.hit, stage: awareness}
"""
    )
    st = eng.new_state()
    run(eng, st, [ev("page.hit", T0), ev("webinar.attend", T0 + 1.5), ev("page.hit", T0 + 2)])
    view = eng.view("c-42", st)
    for key in (
        "scores",
        "total",
        "normalized",
        "grade",
        "stage",
        "segments",
        "tags",
        "updated_at",
    ):
        assert key in view, key
    assert view["scores"] == {"engagement": 20, "fit": 5}
    assert view["total"] == 25
    assert view["normalized"] == pytest.approx(12.5)
    assert view["grade"] == "C3"
    assert view["stage"] == "awareness"
    assert view["segments"] == ["hot"]
    assert view["tags"] == ["vip"]
    assert view["updated_at"] == format_ts(T0 + 2)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", view["updated_at"])
    assert datetime.fromisoformat(view["updated_at"]).timestamp() == T0 + 2


def test_a_null_trait_removes_its_fit_points() -> None:
    eng = engine(FIT)
    st = eng.new_state()
    eng.apply(st, identify({"phone": "+34 600", "country": "ES"}))
    effects = eng.apply(st, identify({"phone": None}, T0 + 1))
    assert fit_changes(effects) == {"has-phone": -3}
    assert score(eng, st, "fit") == 5


def test_fit_points_respect_fit_group_caps() -> None:
    eng = engine(
        """
        version: 1
        groups: {engagement: {}, fit: {max: 20}}
        fit:
          - {id: a, trait: title, exists: true, points: 15}
          - {id: b, trait: country, exists: true, points: 15}
        """
    )
    st = eng.new_state()
    effects = eng.apply(st, identify({"title": "x", "country": "y"}))
    assert [(p.rule, p.applied, p.capped) for p in of_type(effects, PointChange)] == [
        ("a", 15, False),
        ("b", 5, True),
    ]
    assert score(eng, st, "fit") == 20
