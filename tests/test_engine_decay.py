"""Decay: half-life, expire_after, next_due crossing times and advance()."""

from __future__ import annotations

import math
from typing import Any

import pytest
from scoring_helpers import DAY, HOUR, T0, engine, ev, of_type, run, scores_at

from leadscore.engine import PointChange, TriggerFired

H = 14 * DAY

HALF_LIFE = """
version: 1
groups:
  engagement: {decay: {half_life: 14d}}
  fit: {}
actions:
  - {id: ten, on: page.hit, points: 10, repeat: true}
  - {id: eighty, on: form.submit, points: 80, repeat: true}
  - {id: hundred, on: purchase, points: 100, repeat: true}
  - {id: minus, on: email.unsubscribe, points: -40, repeat: true}
  - {id: fit-pts, on: webinar.attend, points: 10, group: fit, repeat: true}
"""


def approx(x: float) -> object:
    return pytest.approx(x, abs=1e-6, rel=1e-9)


# --- half-life -----------------------------------------------------------------------------


def test_score_halves_after_one_half_life() -> None:
    eng = engine(HALF_LIFE)
    st = eng.new_state()
    eng.apply(st, ev("purchase", T0))
    assert scores_at(eng, st, T0 + H)["engagement"] == pytest.approx(50, abs=0.01)
    assert scores_at(eng, st, T0 + 2 * H)["engagement"] == pytest.approx(25, abs=0.01)


def test_decay_is_applied_at_event_time() -> None:
    eng = engine(HALF_LIFE)
    st = eng.new_state()
    eng.apply(st, ev("purchase", T0))
    (pc,) = of_type(eng.apply(st, ev("page.hit", T0 + H)), PointChange)
    assert pc.applied == 10
    assert pc.score_after == approx(60)
    (pc,) = of_type(eng.apply(st, ev("page.hit", T0 + 2 * H)), PointChange)
    assert pc.score_after == approx(40)


def test_half_life_fraction() -> None:
    eng = engine(HALF_LIFE)
    st = eng.new_state()
    eng.apply(st, ev("purchase", T0))
    (pc,) = of_type(eng.apply(st, ev("page.hit", T0 + H / 2)), PointChange)
    assert pc.score_after == approx(100 * 2**-0.5 + 10)


def test_undecayed_group_keeps_its_points() -> None:
    eng = engine(HALF_LIFE)
    st = eng.new_state()
    run(eng, st, [ev("purchase", T0), ev("webinar.attend", T0)])
    got = scores_at(eng, st, T0 + 3 * H)
    assert got["fit"] == pytest.approx(10)
    assert got["engagement"] == pytest.approx(12.5, abs=0.01)
    assert eng.view("c-1", st)["total"] == pytest.approx(22.5, abs=0.01)


def test_negative_scores_decay_toward_zero() -> None:
    eng = engine(HALF_LIFE)
    st = eng.new_state()
    eng.apply(st, ev("email.unsubscribe", T0))
    assert scores_at(eng, st, T0 + H)["engagement"] == pytest.approx(-20, abs=0.01)


def test_advance_in_steps_equals_advance_at_once() -> None:
    eng = engine(HALF_LIFE)
    a, b = eng.new_state(), eng.new_state()
    for st in (a, b):
        eng.apply(st, ev("purchase", T0))
    for k in range(1, 8):
        eng.advance(a, T0 + k * 3 * DAY)
    eng.advance(b, T0 + 21 * DAY)
    sa = eng.view("c-1", a)["scores"]["engagement"]
    sb = eng.view("c-1", b)["scores"]["engagement"]
    assert sa == pytest.approx(sb, rel=1e-9)
    assert sa == pytest.approx(100 * 2 ** (-21 / 14), abs=0.01)


def test_advance_backwards_does_not_undo_decay() -> None:
    eng = engine(HALF_LIFE)
    st = eng.new_state()
    eng.apply(st, ev("purchase", T0))
    eng.advance(st, T0 + H)
    eng.advance(st, T0 + 1)
    assert eng.view("c-1", st)["scores"]["engagement"] == pytest.approx(50, abs=0.01)


def test_caps_apply_to_the_decayed_score() -> None:
    eng = engine(
        """
        version: 1
        groups:
          engagement: {decay: {half_life: 14d}, max: 100}
        actions:
          - {id: big, on: purchase, points: 100, repeat: true}
        """
    )
    st = eng.new_state()
    eng.apply(st, ev("purchase", T0))
    (pc,) = of_type(eng.apply(st, ev("purchase", T0 + H)), PointChange)
    assert pc.delta == 100
    assert pc.applied == approx(50)
    assert pc.capped is True
    assert pc.score_after == approx(100)


# --- expire_after --------------------------------------------------------------------------

EXPIRE = """
version: 1
groups:
  engagement: {}
  product: {decay: {expire_after: 30d}}
actions:
  - {id: cart, on: cart.add, points: 10, group: product, repeat: true}
  - {id: buy, on: purchase, points: 5, group: product, repeat: true}
triggers:
  - {id: prod-cold, score: product, below: 5, actions: [{notify: marketing}]}
"""


def test_awards_expire_after_their_period() -> None:
    eng = engine(EXPIRE)
    st = eng.new_state()
    run(eng, st, [ev("cart.add", T0), ev("purchase", T0 + 20 * DAY)])
    assert scores_at(eng, st, T0 + 29 * DAY)["product"] == pytest.approx(15)
    assert scores_at(eng, st, T0 + 30 * DAY + 1)["product"] == pytest.approx(5)
    assert scores_at(eng, st, T0 + 50 * DAY + 1)["product"] == pytest.approx(0)


def test_expired_points_do_not_count_at_the_next_event() -> None:
    eng = engine(EXPIRE)
    st = eng.new_state()
    eng.apply(st, ev("cart.add", T0))
    (pc,) = of_type(eng.apply(st, ev("purchase", T0 + 31 * DAY)), PointChange)
    assert pc.score_after == pytest.approx(5)


def test_next_due_for_expiry_crossing_and_advance_fires() -> None:
    eng = engine(EXPIRE)
    st = eng.new_state()
    eng.apply(st, ev("cart.add", T0))
    due = eng.next_due(st)
    assert due is not None
    assert due == pytest.approx(T0 + 30 * DAY, abs=1.0)
    assert fired_at(eng.advance(st, T0 + 29 * DAY)) == []
    effects = eng.advance(st, due)
    (tf,) = of_type(effects, TriggerFired)
    assert tf.trigger == "prod-cold"
    assert tf.at == pytest.approx(due)
    assert tf.score == pytest.approx(0)


# --- next_due for half-life crossings ------------------------------------------------------

COOLING = """
version: 1
groups:
  engagement: {decay: {half_life: 14d}}
  fit: {}
actions:
  - {id: eighty, on: form.submit, points: 80, repeat: true}
  - {id: fit-pts, on: webinar.attend, points: 10, group: fit, repeat: true}
triggers:
  - {id: cold, score: engagement, below: 20, actions: [{notify: marketing}]}
"""


def fired_at(effects: list[Any]) -> list[tuple[str, float]]:
    return [(t.trigger, t.at) for t in of_type(effects, TriggerFired)]


def test_next_due_is_the_closed_form_crossing_time() -> None:
    eng = engine(COOLING)
    st = eng.new_state()
    eng.apply(st, ev("form.submit", T0))  # 80
    due = eng.next_due(st)
    assert due is not None
    assert due == pytest.approx(T0 + H * math.log2(80 / 20), abs=1e-3)


def test_next_due_with_non_integer_ratio() -> None:
    eng = engine(COOLING)
    st = eng.new_state()
    run(eng, st, [ev("form.submit", T0), ev("form.submit", T0 + DAY)])
    s = 80 * 2 ** (-1 / 14) + 80
    expected = T0 + DAY + H * math.log2(s / 20)
    assert eng.next_due(st) == pytest.approx(expected, abs=1e-3)


def test_advance_to_due_fires_below_with_at_equal_to_due() -> None:
    eng = engine(COOLING)
    st = eng.new_state()
    eng.apply(st, ev("form.submit", T0))
    due = eng.next_due(st)
    assert due is not None
    assert fired_at(eng.advance(st, due - 1)) == []
    effects = eng.advance(st, due)
    (tf,) = of_type(effects, TriggerFired)
    assert tf.trigger == "cold"
    assert tf.at == pytest.approx(due, abs=1e-6)
    assert tf.score == pytest.approx(20, abs=1e-6)
    assert tf.actions == [{"notify": "marketing"}]
    # already below: nothing more to wait for, nothing fires again
    assert fired_at(eng.advance(st, due + 100 * DAY)) == []
    nd = eng.next_due(st)
    assert nd is None or nd > due + 100 * DAY


def test_advance_far_past_due_fires_at_the_due_time_not_at_t() -> None:
    eng = engine(COOLING)
    st = eng.new_state()
    eng.apply(st, ev("form.submit", T0))
    effects = eng.advance(st, T0 + 365 * DAY)
    (tf,) = of_type(effects, TriggerFired)
    assert tf.at == pytest.approx(T0 + 2 * H, abs=1e-3)


def test_apply_fires_the_overdue_crossing_at_its_due_time_before_the_new_points() -> None:
    eng = engine(COOLING)
    st = eng.new_state()
    eng.apply(st, ev("form.submit", T0))
    effects = eng.apply(st, ev("form.submit", T0 + 40 * DAY))
    (tf,) = of_type(effects, TriggerFired)
    assert tf.at == pytest.approx(T0 + 2 * H, abs=1e-3)
    kinds = [type(e).__name__ for e in effects]
    assert kinds.index("TriggerFired") < kinds.index("PointChange")


def test_next_due_for_total_with_static_fit_points() -> None:
    eng = engine(
        """
        version: 1
        groups:
          engagement: {decay: {half_life: 14d}}
          fit: {}
        actions:
          - {id: eighty, on: form.submit, points: 80, repeat: true}
          - {id: fit-pts, on: webinar.attend, points: 10, group: fit, repeat: true}
        triggers:
          - {id: cold, score: total, below: 30, actions: []}
        """
    )
    st = eng.new_state()
    run(eng, st, [ev("form.submit", T0), ev("webinar.attend", T0)])  # total 90
    # engagement must decay from 80 to 20 for the total to reach 30
    assert eng.next_due(st) == pytest.approx(T0 + 2 * H, abs=1e-3)
    (tf,) = of_type(eng.advance(st, T0 + 3 * H), TriggerFired)
    assert tf.at == pytest.approx(T0 + 2 * H, abs=1e-3)


def test_next_due_none_without_anything_to_wait_for() -> None:
    eng = engine(COOLING)
    st = eng.new_state()
    assert eng.next_due(st) is None  # nothing scored yet
    assert eng.advance(st, T0 + DAY) == []
    eng.apply(st, ev("webinar.attend", T0))  # fit only, no decay there
    assert eng.next_due(st) is None

    static = engine(
        """
        version: 1
        actions:
          - {id: a, on: page.hit, points: 80}
        triggers:
          - {id: cold, score: total, below: 20, actions: []}
        """
    )
    st2 = static.new_state()
    static.apply(st2, ev("page.hit", T0))
    assert static.next_due(st2) is None  # no decay: the score never moves alone


def test_next_due_is_none_when_already_below() -> None:
    eng = engine(COOLING)
    st = eng.new_state()
    eng.apply(st, ev("webinar.attend", T0))
    eng.apply(st, ev("form.submit", T0))
    eng.advance(st, T0 + 3 * H)  # 10: already crossed and fired
    nd = eng.next_due(st)
    assert nd is None or nd > T0 + 1000 * DAY


def test_cooling_after_mql_through_decay() -> None:
    eng = engine(
        """
        version: 1
        groups:
          engagement: {decay: {half_life: 14d}}
        actions:
          - {id: eighty, on: form.submit, points: 80, repeat: true}
        triggers:
          - {id: mql, score: total, at_least: 50, actions: [{add_segment: mql}]}
          - {id: cooled, score: total, below: 20, after: mql,
             actions: [{remove_segment: mql}]}
        """
    )
    st = eng.new_state()
    assert [t.trigger for t in of_type(eng.apply(st, ev("form.submit", T0)), TriggerFired)] == [
        "mql"
    ]
    assert eng.next_due(st) == pytest.approx(T0 + 2 * H, abs=1e-3)
    effects = eng.advance(st, T0 + 2 * H + HOUR)
    assert [t.trigger for t in of_type(effects, TriggerFired)] == ["cooled"]
    assert eng.view("c-1", st)["segments"] == []


def test_decay_rearms_at_least_trigger() -> None:
    eng = engine(
        """
        version: 1
        groups:
          engagement: {decay: {half_life: 14d}}
        actions:
          - {id: sixty, on: form.submit, points: 60, repeat: true}
          - {id: ten, on: page.hit, points: 10, repeat: true}
        triggers:
          - {id: mql, score: total, at_least: 50, rearm_below: 30, actions: []}
        """
    )
    st = eng.new_state()
    assert len(of_type(eng.apply(st, ev("form.submit", T0)), TriggerFired)) == 1
    # two half-lives later: 15, under 30, so mql is re-armed; 15 + 60 = 75 fires again
    effects = eng.apply(st, ev("form.submit", T0 + 2 * H))
    assert [t.trigger for t in of_type(effects, TriggerFired)] == ["mql"]


def test_decay_without_rearm_does_not_refire() -> None:
    eng = engine(
        """
        version: 1
        groups:
          engagement: {decay: {half_life: 14d}}
        actions:
          - {id: sixty, on: form.submit, points: 60, repeat: true}
        triggers:
          - {id: mql, score: total, at_least: 50, actions: []}
        """
    )
    st = eng.new_state()
    assert len(of_type(eng.apply(st, ev("form.submit", T0)), TriggerFired)) == 1
    assert of_type(eng.apply(st, ev("form.submit", T0 + 2 * H)), TriggerFired) == []


def test_expiry_landing_exactly_on_a_below_threshold_does_not_fire() -> None:
    # below means strictly below: a score of exactly 5 is not below 5, whether it got there
    # through an event or through an expiry.
    eng = engine(
        """
        version: 1
        groups:
          product: {decay: {expire_after: 30d}}
        actions:
          - {id: five, on: cart.add, points: 5, repeat: true}
          - {id: minus, on: cart.abandon, points: -5, repeat: true}
        triggers:
          - {id: cold, score: product, below: 5, actions: []}
        """
    )
    via_event = eng.new_state()
    run(eng, via_event, [ev("cart.add", T0), ev("cart.add", T0 + DAY)])  # 10
    assert of_type(eng.apply(via_event, ev("cart.abandon", T0 + 2 * DAY)), TriggerFired) == []

    via_expiry = eng.new_state()
    run(eng, via_expiry, [ev("cart.add", T0), ev("cart.add", T0 + 10 * DAY)])  # 10
    effects = eng.advance(via_expiry, T0 + 35 * DAY)  # the first 5 expired: exactly 5
    assert scores_at(eng, via_expiry, T0 + 35 * DAY)["product"] == pytest.approx(5)
    assert of_type(effects, TriggerFired) == []
    # and when the second award expires too, the score (0) is below 5: that fires
    (tf,) = of_type(eng.advance(via_expiry, T0 + 45 * DAY), TriggerFired)
    assert tf.at == pytest.approx(T0 + 40 * DAY, abs=1.0)


def test_late_event_decays_from_its_own_event_time() -> None:
    # Decay uses the event's own timestamp: 100 points earned 14 days before the contact's
    # latest event are worth 50 at that time, whatever order they arrive in.
    eng = engine(HALF_LIFE)
    in_order, late = eng.new_state(), eng.new_state()
    run(eng, in_order, [ev("purchase", T0), ev("page.hit", T0 + H)])
    run(eng, late, [ev("page.hit", T0 + H), ev("purchase", T0)])
    expected = scores_at(eng, in_order, T0 + H)["engagement"]
    assert expected == pytest.approx(60, abs=0.01)
    assert scores_at(eng, late, T0 + H)["engagement"] == pytest.approx(expected, abs=0.01)


def test_expire_after_in_order_awards_never_expire_late_and_at_most_1pct_early() -> None:
    # Exact per-award expiry would make state grow with every event; awards close in time may
    # share an expiry. Pin the bound: never late, never more than 1% of the period early.
    eng = engine(EXPIRE)
    st = eng.new_state()
    run(eng, st, [ev("cart.add", T0), ev("purchase", T0 + 6 * HOUR)])
    assert scores_at(eng, st, T0 + 30 * DAY - 7.2 * HOUR - 1)["product"] == pytest.approx(15)
    assert scores_at(eng, st, T0 + 30 * DAY + 6 * HOUR + 1)["product"] == pytest.approx(0)


def test_next_due_with_two_half_lives_on_the_total() -> None:
    eng = engine(
        """
        version: 1
        groups:
          engagement: {decay: {half_life: 14d}}
          product: {decay: {half_life: 7d}}
          fit: {}
        actions:
          - {id: e, on: form.submit, points: 80, repeat: true}
          - {id: p, on: cart.add, points: 40, group: product, repeat: true}
          - {id: f, on: webinar.attend, points: 5, group: fit, repeat: true}
        triggers:
          - {id: cold, score: total, below: 30, actions: []}
        """
    )
    st = eng.new_state()
    run(eng, st, [ev("form.submit", T0), ev("cart.add", T0), ev("webinar.attend", T0)])

    def total(t: float) -> float:
        return 5 + 80 * 2 ** (-(t - T0) / H) + 40 * 2 ** (-(t - T0) / (7 * DAY))

    lo, hi = T0, T0 + 400 * DAY
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) > 30 else (lo, mid)
    due = eng.next_due(st)
    assert due == pytest.approx(hi, abs=1.0)
    (tf,) = of_type(eng.advance(st, T0 + 400 * DAY), TriggerFired)
    assert tf.at == pytest.approx(hi, abs=1.0)
    assert tf.score == pytest.approx(30, abs=0.01)


def test_next_due_with_decay_and_expiry_on_the_total() -> None:
    eng = engine(
        """
        version: 1
        groups:
          engagement: {decay: {half_life: 14d}}
          product: {decay: {expire_after: 10d}}
        actions:
          - {id: e, on: form.submit, points: 40, repeat: true}
          - {id: p, on: cart.add, points: 20, group: product, repeat: true}
        triggers:
          - {id: cold, score: total, below: 35, actions: []}
        """
    )
    st = eng.new_state()
    run(eng, st, [ev("form.submit", T0), ev("cart.add", T0)])  # 60
    # engagement alone never reaches 15 before day 10 (40 * 2^(-10/14) = 24.4), so the
    # crossing is the expiry at day 10, where the total drops from 44.4 to 24.4
    assert eng.next_due(st) == pytest.approx(T0 + 10 * DAY, abs=1.0)
    (tf,) = of_type(eng.advance(st, T0 + 30 * DAY), TriggerFired)
    assert tf.at == pytest.approx(T0 + 10 * DAY, abs=1.0)


def test_advance_fires_several_crossings_in_time_order_each_at_its_due_time() -> None:
    eng = engine(
        """
        version: 1
        groups: {engagement: {decay: {half_life: 14d}}}
        actions:
          - {id: e, on: form.submit, points: 80, repeat: true}
        triggers:
          - {id: b10, score: total, below: 10, actions: []}
          - {id: b40, score: total, below: 40, actions: []}
          - {id: b20, score: total, below: 20, actions: []}
        """
    )
    st = eng.new_state()
    eng.apply(st, ev("form.submit", T0))
    got = fired_at(eng.advance(st, T0 + 100 * DAY))
    assert [name for name, _ in got] == ["b40", "b20", "b10"]
    for (_, at), k in zip(got, (1, 2, 3), strict=True):
        assert at == pytest.approx(T0 + k * H, abs=1e-3)


def test_next_due_is_recomputed_after_the_score_rises_again() -> None:
    eng = engine(COOLING)
    st = eng.new_state()
    eng.apply(st, ev("form.submit", T0))  # 80, due at 2H
    eng.advance(st, T0 + 3 * H)  # fired at 2H; now 10
    eng.apply(st, ev("form.submit", T0 + 3 * H))  # 90: re-armed
    s = 80 * 2**-3 + 80
    assert eng.next_due(st) == pytest.approx(T0 + 3 * H + H * math.log2(s / 20), abs=1e-3)
    (tf,) = of_type(eng.advance(st, T0 + 10 * H), TriggerFired)
    assert tf.at == pytest.approx(T0 + 3 * H + H * math.log2(s / 20), abs=1e-3)


def test_decay_trigger_actions_change_state_at_the_due_time() -> None:
    eng = engine(
        """
        version: 1
        groups: {engagement: {decay: {half_life: 14d}}}
        actions:
          - {id: e, on: form.submit, points: 80, repeat: true}
        triggers:
          - {id: cold, score: total, below: 20,
             actions: [{add_tag: cold}, {add_segment: nurture}, {set_stage: nurture}]}
        stages:
          order: [nurture, hot]
        """
    )
    st = eng.new_state()
    eng.apply(st, ev("form.submit", T0))
    effects = eng.advance(st, T0 + 5 * H)
    kinds = sorted(type(e).__name__ for e in effects)
    assert kinds == ["SegmentChanged", "StageChanged", "TagChanged", "TriggerFired"]
    assert all(e.at == pytest.approx(T0 + 2 * H, abs=1e-3) for e in effects)
    view = eng.view("c-1", st)
    assert (view["tags"], view["segments"], view["stage"]) == (["cold"], ["nurture"], "nurture")


def test_a_decay_crossing_blocked_by_after_is_spent_too() -> None:
    # cooled (engagement below 20, after mql) crosses by decay while mql has not fired: no
    # firing. When mql fires later, engagement has not crossed anything: cooled must wait
    # for the next real downward crossing.
    eng = engine(
        """
        version: 1
        groups:
          engagement: {decay: {half_life: 14d}}
          product: {}
        actions:
          - {id: e, on: form.submit, points: 80, repeat: true}
          - {id: p, on: cart.add, points: 10, group: product, repeat: true}
        triggers:
          - {id: mql, score: product, at_least: 10, actions: []}
          - {id: cooled, score: engagement, below: 20, after: mql, actions: []}
        """
    )
    st = eng.new_state()
    eng.apply(st, ev("form.submit", T0))  # engagement 80
    assert fired_at(eng.advance(st, T0 + 3 * H)) == []  # 10: crossed, but mql never fired
    effects = eng.apply(st, ev("cart.add", T0 + 3 * H + 1))
    assert [name for name, _ in fired_at(effects)] == ["mql"]
    # a new rise and decay crossing does fire
    eng.apply(st, ev("form.submit", T0 + 3 * H + 2))  # ~90
    got = fired_at(eng.advance(st, T0 + 10 * H))
    assert [name for name, _ in got] == ["cooled"]


def test_late_award_that_already_expired_does_not_count() -> None:
    eng = engine(EXPIRE)
    st = eng.new_state()
    eng.apply(st, ev("cart.add", T0 + 40 * DAY))  # 10, expires at +70d
    # arrives late: earned at T0, so it expired at T0 + 30d, before the contact's clock
    effects = eng.apply(st, ev("purchase", T0))
    for pc in of_type(effects, PointChange):
        assert pc.score_after == pytest.approx(10)
    assert scores_at(eng, st, T0 + 40 * DAY)["product"] == pytest.approx(10)
    assert scores_at(eng, st, T0 + 69 * DAY)["product"] == pytest.approx(10)


def test_negative_score_rising_by_decay_rearms_a_negative_below_trigger() -> None:
    # Decay moves negative scores up toward 0. Once the score is back at or above -10, the
    # next drop under -10 is a new downward crossing and fires again.
    eng = engine(
        """
        version: 1
        groups: {engagement: {decay: {half_life: 14d}}}
        actions:
          - {id: unsub, on: email.unsubscribe, points: -40, repeat: true}
        triggers:
          - {id: churn-risk, score: engagement, below: -10, actions: []}
        """
    )
    st = eng.new_state()
    assert [n for n, _ in fired_at(eng.apply(st, ev("email.unsubscribe", T0)))] == ["churn-risk"]
    assert scores_at(eng, st, T0 + 3 * H)["engagement"] == pytest.approx(-5, abs=0.01)
    effects = eng.apply(st, ev("email.unsubscribe", T0 + 3 * H))  # -5 -> -45: crossed again
    assert [n for n, _ in fired_at(effects)] == ["churn-risk"]


def test_expiring_penalty_rearms_a_below_trigger() -> None:
    # A penalty in an expire_after group stops counting after the period, so the total rises
    # back above the threshold; the next penalty is a new downward crossing.
    eng = engine(
        """
        version: 1
        groups:
          engagement: {}
          penalties: {decay: {expire_after: 10d}}
        actions:
          - {id: visit, on: page.hit, points: 30}
          - {id: unsub, on: email.unsubscribe, points: -30, repeat: true, group: penalties}
        triggers:
          - {id: cold, score: total, below: 5, actions: []}
        """
    )
    st = eng.new_state()
    eng.apply(st, ev("page.hit", T0))  # 30
    assert [n for n, _ in fired_at(eng.apply(st, ev("email.unsubscribe", T0 + DAY)))] == ["cold"]
    assert eng.view("c-1", st)["total"] == 0
    assert scores_at(eng, st, T0 + 12 * DAY)["penalties"] == pytest.approx(0)  # total 30 again
    effects = eng.apply(st, ev("email.unsubscribe", T0 + 12 * DAY))  # 30 -> 0: crossed again
    assert [n for n, _ in fired_at(effects)] == ["cold"]


def test_rise_then_fall_between_events_fires_at_the_fall() -> None:
    # No event between T0+1d and T0+25d: the penalty expiring (+11d) lifts the total back
    # over 35 (re-arming), the product points expiring (+20d) take it under 35 again. That
    # second crossing is due at +20d, whether or not an event or a timer came in between.
    eng = engine(
        """
        version: 1
        groups:
          engagement: {}
          penalties: {decay: {expire_after: 10d}}
          product: {decay: {expire_after: 20d}}
        actions:
          - {id: visit, on: page.hit, points: 30}
          - {id: cart, on: cart.add, points: 10, group: product}
          - {id: unsub, on: email.unsubscribe, points: -30, repeat: true, group: penalties}
        triggers:
          - {id: cooling, score: total, below: 35, actions: []}
        """
    )
    st = eng.new_state()
    run(eng, st, [ev("page.hit", T0), ev("cart.add", T0)])  # 40
    assert [n for n, _ in fired_at(eng.apply(st, ev("email.unsubscribe", T0 + DAY)))] == ["cooling"]
    got = fired_at(eng.advance(st, T0 + 25 * DAY))
    assert [n for n, _ in got] == ["cooling"]
    assert got[0][1] == pytest.approx(T0 + 20 * DAY, abs=1.0)


# --- timers always make progress (a flow's timer loop must never spin) ----------------------

AT_THRESHOLD = """
version: 1
groups:
  engagement: {decay: {half_life: 14d}}
  product: {decay: {expire_after: 90d}}
actions:
  - {id: ten, on: page.hit, points: 10, repeat: true}
  - {id: cart, on: cart.add, points: 10, group: product, repeat: true}
  - {id: minus, on: email.unsubscribe, points: -15, repeat: true}
triggers:
  - {id: hot, score: total, at_least: 30, rearm_below: 25, actions: []}
  - {id: cooled, score: total, below: 20, actions: []}
"""


def test_a_score_exactly_at_a_below_threshold_is_due_at_once_with_an_expiry_pending() -> None:
    # Found by the benchmark: total exactly 20 (a decaying 10 + an expiring 10) used to be
    # "due" only at the expiry, 90 days on, while the timer path saw it due now: a livelock.
    eng = engine(AT_THRESHOLD)
    st = eng.new_state()
    run(eng, st, [ev("cart.add", T0), ev("page.hit", T0)])
    assert eng.next_due(st) == approx(T0)
    fired = of_type(eng.advance(st, T0), TriggerFired)
    assert [f.trigger for f in fired] == ["cooled"]
    following = eng.next_due(st)
    assert following is None or following > T0


def test_advancing_to_each_due_time_always_moves_on() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st_

    actions = ["page.hit", "cart.add", "email.unsubscribe"]

    @settings(max_examples=150, deadline=None)
    @given(
        st_.lists(
            st_.tuples(st_.sampled_from(actions), st_.floats(0, 120 * DAY)),
            min_size=1,
            max_size=12,
        )
    )
    def check(steps: list[tuple[str, float]]) -> None:
        eng = engine(AT_THRESHOLD)
        state = eng.new_state()
        for action, at in sorted(steps, key=lambda s: s[1]):
            eng.apply(state, ev(action, T0 + at))
        for _ in range(50):  # as a flow's timer would: wake at each due time in turn
            due = eng.next_due(state)
            if due is None:
                return
            eng.advance(state, due)
            following = eng.next_due(state)
            assert following is None or following > due
        pytest.fail("50 timer wake-ups and still due: decay should settle long before")

    check()
