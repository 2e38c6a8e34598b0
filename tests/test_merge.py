"""Merging a visitor's state into the known contact's (leadscore.merge), through engine outputs."""

from __future__ import annotations

import functools
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scoring_helpers import DAY, HOUR, T0, engine, ev, of_type, run

from leadscore.engine import (
    ContactState,
    Engine,
    PointChange,
    SegmentChanged,
    StageChanged,
    TagChanged,
    TriggerFired,
)
from leadscore.events import Event
from leadscore.explain import effect_record
from leadscore.merge import merge
from leadscore.rules import TOTAL

FAST = settings(max_examples=80, deadline=None)

# Rules without once-ever awards, windows, cooldowns, hits or caps: every award is a function of
# its own event, so two histories add up exactly.
ADDITIVE = """
version: 1
groups:
  engagement: {decay: {half_life: 14d}}
  product: {decay: {expire_after: 30d}}
  fit: {}
actions:
  - {id: pricing, on: page.hit, where: {url: "*/pricing*"}, points: 10, repeat: true}
  - {id: clicks, on: email.click, points: 3, repeat: true}
  - {id: cart, on: cart.add, points: 8, group: product, repeat: true}
  - {id: unsub, on: email.unsubscribe, points: -30, repeat: true}
  - {id: form, on: form.submit, points: 5, group: fit, repeat: true}
triggers:
  - {id: mql, score: total, at_least: 50, actions: [{add_segment: mql}]}
"""

# The same with what bounded state cannot add up exactly: once-ever (plain and after 3 hits)
# and {max, per} windows. `fan` scores in a group that does not decay: its hits add up, so
# the merged contact may have earned it later than one contact would, and a later award has
# decayed less (docs/ARCHITECTURE.md, "Merging contacts").
BOUNDED = """
version: 1
groups:
  engagement: {decay: {half_life: 14d}}
  product: {decay: {expire_after: 30d}}
  fit: {}
actions:
  - {id: pricing, on: page.hit, where: {url: "*/pricing*"}, points: 10, repeat: {max: 2, per: 3d}}
  - {id: blog, on: page.hit, where: {url: "*/blog/*"}, points: 4, group: fit,
     repeat: {max: 2, per: 2d}}
  - {id: fan, on: page.hit, hits: 3, points: 15, group: fit}
  - {id: clicks, on: email.click, points: 3, repeat: true}
  - {id: cart, on: cart.add, points: 8, group: product, repeat: {max: 3, per: 5d}}
  - {id: demo, on: form.submit, points: 25, group: fit}
  - {id: trial, on: trial.start, points: 12}
"""

ACTIONS = ["page.hit", "email.click", "cart.add", "email.unsubscribe", "form.submit", "trial.start"]
URLS = ["https://a.com/pricing", "https://a.com/blog/x", "https://a.com/"]


@functools.cache
def additive() -> Engine:
    return engine(ADDITIVE)


@functools.cache
def bounded() -> Engine:
    return engine(BOUNDED)


@st.composite
def two_histories(draw: st.DrawFn) -> list[tuple[bool, Event]]:
    """Events of two ids over 40 days, in time order, each flagged: the visitor's or not.

    On half days: expiring awards share a bucket only within 1% of 30 days (7.2 h), so one
    contact and two contacts bucket them alike and expire them at the same instants.
    """
    n = draw(st.integers(0, 40))
    offsets = sorted(draw(st.lists(st.integers(0, 80), min_size=n, max_size=n)))
    out = []
    for off in offsets:
        action = draw(st.sampled_from(ACTIONS))
        url = draw(st.sampled_from(URLS))
        out.append((draw(st.booleans()), ev(action, T0 + off * DAY / 2, url=url)))
    return out


def split_and_merge(
    eng: Engine, history: list[tuple[bool, Event]], at: float
) -> tuple[ContactState, ContactState, list[Any], list[Any], list[Any]]:
    """(merged, one contact, known effects, visitor effects, merge effects)."""
    known, visitor, single = eng.new_state(), eng.new_state(), eng.new_state()
    known_fx: list[Any] = []
    visitor_fx: list[Any] = []
    for is_visitor, e in history:
        (visitor_fx if is_visitor else known_fx).extend(
            eng.apply(visitor if is_visitor else known, e)
        )
        eng.apply(single, e)
    merged, effects = merge(eng, known, visitor, at, visitor_id="anon-1")
    return merged, single, known_fx, visitor_fx, effects


def scores(eng: Engine, state: ContactState, t: float) -> dict[str, float]:
    return {g: round(eng.score(state, g, t), 6) for g in [*eng.rules.groups, TOTAL]}


@FAST
@given(history=two_histories(), after=st.integers(0, 60))
def test_merging_two_histories_scores_as_one_contact_doing_both(
    history: list[tuple[bool, Event]], after: int
) -> None:
    eng = additive()
    at = T0 + 40 * DAY + after * DAY / 2
    merged, single, known_fx, visitor_fx, effects = split_and_merge(eng, history, at)
    assert scores(eng, merged, at) == scores(eng, single, at)
    # Later too: what decays and expires after the merge does so as for one contact.
    assert scores(eng, merged, at + 20 * DAY) == scores(eng, single, at + 20 * DAY)
    # MQL: fired at the merge, with cause merge, exactly when neither side had fired it and
    # the merged total reaches it; never a second time.
    before = [f for f in of_type(known_fx + visitor_fx, TriggerFired) if f.trigger == "mql"]
    now = of_type(effects, TriggerFired)
    if not before and eng.score(merged, TOTAL, at) >= 50:
        assert [(f.trigger, f.cause) for f in now] == [("mql", "merge")]
    else:
        assert now == []


@FAST
@given(history=two_histories(), after=st.integers(0, 60))
def test_merging_never_gives_more_points_than_one_contact_with_once_and_windows(
    history: list[tuple[bool, Event]], after: int
) -> None:
    eng = bounded()
    at = T0 + 40 * DAY + after * DAY / 2
    merged, single, known_fx, visitor_fx, _ = split_and_merge(eng, history, at)
    # A window keeps its newest N award times: awards it forgot cannot be checked (the
    # documented bound), so the property holds where each side's window kept every award.
    for fx in (known_fx, visitor_fx):
        awards = [c.rule for c in of_type(fx, PointChange)]
        assume(awards.count("pricing") <= 2 and awards.count("blog") <= 2)
        assume(awards.count("cart") <= 3)
    for name, value in scores(eng, merged, at).items():
        assert value <= scores(eng, single, at)[name] + 1e-6, name


def test_a_visitor_that_pushes_the_lead_over_mql_fires_it_once_with_cause_merge() -> None:
    eng = additive()
    known, visitor = eng.new_state(), eng.new_state()
    run(eng, known, [ev("page.hit", T0, url="https://a.com/pricing")] * 3)
    run(eng, visitor, [ev("page.hit", T0, url="https://a.com/pricing")] * 3)
    merged, effects = merge(eng, known, visitor, T0, visitor_id="anon-1")
    fired = of_type(effects, TriggerFired)
    assert [(f.trigger, f.cause, f.score) for f in fired] == [("mql", "merge", 60.0)]
    assert [(s.segment, s.cause) for s in of_type(effects, SegmentChanged)] == [("mql", "mql")]
    # Merging again (a replay of the same merge onto the merged state) fires nothing more.
    _, effects = merge(eng, merged, eng.new_state(), T0 + 4 * HOUR)
    assert of_type(effects, TriggerFired) == []


def test_a_trigger_fired_on_the_visitor_side_is_not_fired_again() -> None:
    eng = additive()
    known, visitor = eng.new_state(), eng.new_state()
    fx = run(eng, visitor, [ev("page.hit", T0, url="https://a.com/pricing")] * 5)
    assert [f.trigger for f in of_type(fx, TriggerFired)] == ["mql"]
    run(eng, known, [ev("email.click", T0)])
    merged, effects = merge(eng, known, visitor, T0 + 5 * HOUR)
    assert of_type(effects, TriggerFired) == []
    assert merged.segments == ("mql",)
    assert [(s.segment, s.cause) for s in of_type(effects, SegmentChanged)] == [("mql", "merge")]


def test_once_ever_awards_are_kept_once_and_the_difference_is_taken_back_saying_why() -> None:
    eng = bounded()
    known, visitor = eng.new_state(), eng.new_state()
    run(eng, known, [ev("form.submit", T0 + DAY)])
    run(eng, visitor, [ev("form.submit", T0)])
    merged, effects = merge(eng, known, visitor, T0 + 2 * DAY, visitor_id="anon-1")
    assert eng.score(merged, "fit", T0 + 2 * DAY) == 25
    records = [effect_record("lead@x.com", c) for c in of_type(effects, PointChange)]
    assert [(r["rule"], r["applied"], r.get("reason")) for r in records] == [
        ("demo", -25, "awarded once ever, and earned both here and from anon-1"),
        ("merge", 25, "points earned from anon-1"),
    ]
    # And it stays once: the merged contact submitting again earns nothing.
    assert of_type(eng.apply(merged, ev("form.submit", T0 + 3 * DAY)), PointChange) == []


def test_window_awards_beyond_the_limit_are_taken_back_and_hits_add() -> None:
    eng = bounded()
    known, visitor = eng.new_state(), eng.new_state()
    blog = "https://a.com/blog/x"
    run(eng, known, [ev("page.hit", T0, url=blog), ev("page.hit", T0 + HOUR, url=blog)])
    run(eng, visitor, [ev("page.hit", T0 + 2 * HOUR, url=blog)])
    merged, _ = merge(eng, known, visitor, T0 + 3 * HOUR)
    assert eng.score(merged, "fit", T0 + 3 * HOUR) == 8  # {max: 2, per: 2d}: two awards
    # hits add: 2 + 1 reaches `fan` (hits: 3) on the merged contact's next hit, not before.
    fan = [c.rule for c in of_type(eng.apply(merged, ev("page.hit", T0 + 4 * HOUR)), PointChange)]
    assert fan == ["fan"]


def test_caps_apply_to_the_sum() -> None:
    eng = engine(
        """
        version: 1
        groups: {engagement: {max: 100}}
        actions: [{id: hit, on: page.hit, points: 60, repeat: true}]
        """
    )
    known, visitor = eng.new_state(), eng.new_state()
    eng.apply(known, ev("page.hit", T0))
    eng.apply(visitor, ev("page.hit", T0))
    merged, effects = merge(eng, known, visitor, T0)
    assert eng.score(merged, "engagement", T0) == 100
    [change] = of_type(effects, PointChange)
    assert (change.delta, change.applied, change.capped) == (60, 40, True)


def test_traits_known_wins_visitor_fills_gaps_fit_recomputed_once_stage_and_tags() -> None:
    eng = engine(
        """
        version: 1
        groups: {fit: {}, engagement: {}}
        actions: [{id: cart, on: cart.add, points: 1, repeat: true}]
        fit:
          - {id: vp, trait: title, matches: "(?i)\\\\bvp\\\\b", points: 15}
          - {id: es, trait: country, in: [ES], points: 5}
        triggers:
          - {id: buyer, score: total, at_least: 1000, actions: [{add_tag: buyer}]}
        stages:
          order: [awareness, decision, action]
          rules: [{on: cart.add, stage: action}, {on: page.hit, stage: decision}]
        """
    )
    known, visitor = eng.new_state(), eng.new_state()
    eng.apply(known, ev("identify", T0, traits={"title": "Intern"}))
    eng.apply(known, ev("page.hit", T0))
    eng.apply(visitor, ev("identify", T0, traits={"title": "VP Sales", "country": "ES"}))
    eng.apply(visitor, ev("cart.add", T0))
    visitor.tags = ("visitor-tag",)
    merged, effects = merge(eng, known, visitor, T0 + HOUR)
    assert merged.traits == {"title": "Intern", "country": "ES"}
    assert eng.score(merged, "fit", T0 + HOUR) == 5  # vp taken back, es kept once
    assert [(c.rule, c.applied) for c in of_type(effects, PointChange)] == [
        ("vp", -15),
        ("merge", 20),
        ("merge", 1),
    ]
    assert [(s.stage, s.previous, s.cause) for s in of_type(effects, StageChanged)] == [
        ("action", "decision", "merge")
    ]
    assert [t.tag for t in of_type(effects, TagChanged)] == ["visitor-tag"]


def test_a_contact_merged_into_itself_and_an_id_that_never_existed_change_nothing() -> None:
    eng = additive()
    state = eng.new_state()
    run(eng, state, [ev("page.hit", T0, url="https://a.com/pricing")] * 6)
    snapshot = merge(eng, state, None, T0)[0]
    assert snapshot == state
    assert merge(eng, state, state, T0 + DAY) == (snapshot, [])
    assert merge(eng, state, None, T0 + DAY) == (snapshot, [])
    # A known id that never existed takes the visitor's state over as it is.
    moved, effects = merge(eng, None, state, T0)
    assert scores(eng, moved, T0) == scores(eng, state, T0)
    assert of_type(effects, TriggerFired) == []
    assert moved.triggers == state.triggers and moved.segments == state.segments


def test_merge_changes_neither_input() -> None:
    eng = bounded()
    known, visitor = eng.new_state(), eng.new_state()
    run(eng, known, [ev("page.hit", T0, url="https://a.com/pricing"), ev("cart.add", T0)])
    run(eng, visitor, [ev("page.hit", T0, url="https://a.com/pricing"), ev("cart.add", T0)])
    k, v = merge(eng, known, None, T0)[0], merge(eng, visitor, None, T0)[0]
    merge(eng, known, visitor, T0 + DAY)
    assert (known, visitor) == (k, v)
