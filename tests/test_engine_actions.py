"""Point actions: matching (on, where), repeat modes, hits, returns, active, caps, groups."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scoring_helpers import DAY, HOUR, MINUTE, T0, awarded, engine, ev, of_type, run, score

from leadscore.engine import Duplicate, Engine, PointChange
from leadscore.rules import parse_rules

PRICING = """
version: 1
actions:
  - {id: pricing, on: page.hit, where: {url: "*/pricing*"}, points: 10, repeat: true}
"""


# --- basic award and PointChange fields -------------------------------------------------


def test_award_produces_point_change_with_all_fields() -> None:
    eng = engine(PRICING)
    st = eng.new_state()
    effects = eng.apply(st, ev("page.hit", T0, id="e-1", url="https://acme.com/pricing"))
    changes = of_type(effects, PointChange)
    assert len(changes) == 1
    pc = changes[0]
    assert pc.rule == "pricing"
    assert pc.group == "engagement"
    assert pc.delta == 10
    assert pc.applied == 10
    assert pc.score_after == 10
    assert pc.event_id == "e-1"
    assert pc.at == T0
    assert pc.capped is False
    assert score(eng, st) == 10


def test_points_accumulate_with_repeat_true() -> None:
    eng = engine(PRICING)
    st = eng.new_state()
    effects = run(eng, st, [ev("page.hit", T0 + i, url="https://a.com/pricing") for i in range(4)])
    assert [p.score_after for p in of_type(effects, PointChange)] == [10, 20, 30, 40]
    assert score(eng, st) == 40


def test_other_action_does_not_match() -> None:
    eng = engine(PRICING)
    st = eng.new_state()
    assert not awarded(eng, st, ev("email.open", T0, url="https://a.com/pricing"))
    assert score(eng, st) == 0


def test_on_list_matches_any_listed_action() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: touch, on: [email.open, email.click], points: 2, repeat: true}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("email.open", T0))
    assert awarded(eng, st, ev("email.click", T0 + 1))
    assert not awarded(eng, st, ev("email.send", T0 + 2))
    assert score(eng, st) == 4


def test_several_rules_matching_one_event_all_award_in_file_order() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: any-hit, on: page.hit, points: 1}
          - {id: pricing, on: page.hit, where: {url: "*/pricing"}, points: 10}
          - {id: blog, on: page.hit, where: {url: "*/blog/*"}, points: 3}
        """
    )
    st = eng.new_state()
    effects = eng.apply(st, ev("page.hit", T0, url="https://a.com/pricing"))
    assert [p.rule for p in of_type(effects, PointChange)] == ["any-hit", "pricing"]
    assert score(eng, st) == 11


# --- where filters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "matches"),
    [
        ("https://acme.com/pricing", True),
        ("https://acme.com/pricing?plan=pro", True),
        ("HTTPS://ACME.COM/PRICING", True),  # case-insensitive
        ("https://acme.com/Pricing/Enterprise", True),
        ("https://acme.com/blog/prices", False),
        ("https://acme.com/", False),
        ("pricing", False),
    ],
)
def test_where_glob_is_case_insensitive_and_anchored(url: str, matches: bool) -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: pricing, on: page.hit, where: {url: "*/pricing*"}, points: 10}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", T0, url=url)) is matches


def test_where_glob_must_match_the_whole_value() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: pricing, on: page.hit, where: {url: "*/pricing"}, points: 1, repeat: true}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", T0, url="https://a.com/pricing"))
    assert not awarded(eng, st, ev("page.hit", T0 + 1, url="https://a.com/pricing/enterprise"))
    assert not awarded(eng, st, ev("page.hit", T0 + 2, url="https://a.com/pricing?x=1"))


def test_where_pattern_in_upper_case_matches_lower_case_value() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: demo, on: form.submit, where: {form: "DEMO-*"}, points: 5}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("form.submit", T0, form="demo-request"))


def test_where_question_mark_matches_exactly_one_character() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: q, on: page.hit, where: {page: "p?"}, points: 1, repeat: true}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", T0, page="p1"))
    assert not awarded(eng, st, ev("page.hit", T0 + 1, page="p12"))
    assert not awarded(eng, st, ev("page.hit", T0 + 2, page="p"))


def test_where_missing_prop_does_not_match() -> None:
    eng = engine(PRICING)
    st = eng.new_state()
    assert not awarded(eng, st, ev("page.hit", T0))
    assert not awarded(eng, st, ev("page.hit", T0, path="/pricing"))


def test_where_dotted_path_reads_nested_props() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: pro, on: page.hit, where: {page.meta.plan: pro}, points: 7, repeat: true}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", T0, page={"meta": {"plan": "PRO"}}))
    assert not awarded(eng, st, ev("page.hit", T0 + 1, page={"meta": {"plan": "free"}}))
    assert not awarded(eng, st, ev("page.hit", T0 + 2, page={"meta": "pro"}))
    assert not awarded(eng, st, ev("page.hit", T0 + 3, page="pro"))
    assert not awarded(eng, st, ev("page.hit", T0 + 4, plan="pro"))


def test_where_list_means_any_of() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: forms, on: form.submit, where: {form: [demo, "trial-*"]}, points: 5,
             repeat: true}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("form.submit", T0, form="demo"))
    assert awarded(eng, st, ev("form.submit", T0 + 1, form="Trial-14d"))
    assert not awarded(eng, st, ev("form.submit", T0 + 2, form="newsletter"))


def test_where_keys_are_anded() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: big-eu, on: purchase, where: {region: eu, tier: gold}, points: 20,
             repeat: true}
        """
    )
    st = eng.new_state()
    assert not awarded(eng, st, ev("purchase", T0, region="eu", tier="silver"))
    assert not awarded(eng, st, ev("purchase", T0 + 1, region="us", tier="gold"))
    assert not awarded(eng, st, ev("purchase", T0 + 2, region="eu"))
    assert awarded(eng, st, ev("purchase", T0 + 3, region="EU", tier="gold"))


def test_where_numbers_compare_equal() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: q3, on: purchase, where: {quantity: 3}, points: 4, repeat: true}
          - {id: any-amount, on: purchase, where: {amount: [100, 250.5]}, points: 1,
             repeat: true}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("purchase", T0, quantity=3), "q3")
    assert awarded(eng, st, ev("purchase", T0 + 1, quantity=3.0), "q3")
    assert not awarded(eng, st, ev("purchase", T0 + 2, quantity=4), "q3")
    assert awarded(eng, st, ev("purchase", T0 + 3, amount=100), "any-amount")
    assert awarded(eng, st, ev("purchase", T0 + 4, amount=250.5), "any-amount")
    assert not awarded(eng, st, ev("purchase", T0 + 5, amount=99), "any-amount")


def test_where_bools_compare_equal() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: first, on: purchase, where: {first_order: true}, points: 9, repeat: true}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("purchase", T0, first_order=True))
    assert not awarded(eng, st, ev("purchase", T0 + 1, first_order=False))
    assert not awarded(eng, st, ev("purchase", T0 + 2))


def test_empty_where_matches_every_event_of_the_action() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: any, on: page.hit, where: {}, points: 1, repeat: true}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", T0))
    assert awarded(eng, st, ev("page.hit", T0 + 1, url="x"))


# --- points: negative and zero -------------------------------------------------------------


def test_negative_points_go_below_zero_without_min() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: unsub, on: email.unsubscribe, points: -25, repeat: true}
        """
    )
    st = eng.new_state()
    effects = run(eng, st, [ev("email.unsubscribe", T0), ev("email.unsubscribe", T0 + 1)])
    pcs = of_type(effects, PointChange)
    assert [p.applied for p in pcs] == [-25, -25]
    assert [p.score_after for p in pcs] == [-25, -50]
    assert all(p.capped is False for p in pcs)
    assert score(eng, st) == -50


# --- groups -------------------------------------------------------------------------------


def test_default_group_is_engagement_when_declared_even_if_not_first() -> None:
    eng = engine(
        """
        version: 1
        groups: {product: {}, engagement: {}}
        actions:
          - {id: a, on: page.hit, points: 5}
        """
    )
    st = eng.new_state()
    (pc,) = of_type(eng.apply(st, ev("page.hit", T0)), PointChange)
    assert pc.group == "engagement"
    assert score(eng, st, "engagement") == 5
    assert score(eng, st, "product") == 0


def test_default_group_is_first_group_without_engagement() -> None:
    eng = engine(
        """
        version: 1
        groups: {product: {}, brand: {}}
        actions:
          - {id: a, on: page.hit, points: 5}
        """
    )
    st = eng.new_state()
    (pc,) = of_type(eng.apply(st, ev("page.hit", T0)), PointChange)
    assert pc.group == "product"
    assert score(eng, st, "product") == 5
    assert score(eng, st, "brand") == 0


def test_default_groups_are_engagement_and_fit() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: a, on: page.hit, points: 5}
        """
    )
    st = eng.new_state()
    (pc,) = of_type(eng.apply(st, ev("page.hit", T0)), PointChange)
    assert pc.group == "engagement"
    view = eng.view("c-1", st)
    assert set(view["scores"]) == {"engagement", "fit"}
    assert view["scores"]["fit"] == 0


def test_explicit_group_and_total_is_sum_of_groups() -> None:
    eng = engine(
        """
        version: 1
        groups: {engagement: {}, product: {}}
        actions:
          - {id: a, on: page.hit, points: 5}
          - {id: b, on: cart.add, points: 7, group: product}
        """
    )
    st = eng.new_state()
    run(eng, st, [ev("page.hit", T0), ev("cart.add", T0 + 1)])
    view = eng.view("c-1", st)
    assert view["scores"] == {"engagement": 5, "product": 7}
    assert view["total"] == 12


# --- disabled and active ------------------------------------------------------------------


def test_disabled_rule_never_awards() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: off, on: page.hit, points: 5, repeat: true, enabled: false}
          - {id: on, on: page.hit, points: 1, repeat: true, enabled: true}
        """
    )
    st = eng.new_state()
    effects = run(eng, st, [ev("page.hit", T0), ev("page.hit", T0 + 1)])
    assert {p.rule for p in of_type(effects, PointChange)} == {"on"}
    assert score(eng, st) == 2


ACTIVE = """
version: 1
actions:
  - id: promo
    on: page.hit
    points: 5
    repeat: true
    active: {from: "2026-06-01T00:00:00Z", until: "2026-06-30T12:00:00Z"}
"""


@pytest.mark.parametrize(
    ("ts", "matches"),
    [
        (T0 - 1, False),
        (T0, True),  # from is inclusive
        (T0 + 10 * DAY, True),
        (T0 + 29 * DAY + 12 * HOUR, True),  # until is inclusive
        (T0 + 29 * DAY + 12 * HOUR + 1, False),
    ],
)
def test_active_window_is_inclusive_in_event_time(ts: float, matches: bool) -> None:
    eng = engine(ACTIVE)
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", ts)) is matches


def test_active_accepts_unquoted_yaml_dates_and_datetimes() -> None:
    # PyYAML turns these into date / datetime objects, not strings.
    eng = engine(
        """
        version: 1
        actions:
          - id: promo
            on: page.hit
            points: 5
            repeat: true
            active: {from: 2026-06-01, until: 2026-06-30T12:00:00Z}
        """
    )
    st = eng.new_state()
    assert not awarded(eng, st, ev("page.hit", T0 - 1))
    assert awarded(eng, st, ev("page.hit", T0))
    assert awarded(eng, st, ev("page.hit", T0 + 29 * DAY + 12 * HOUR))
    assert not awarded(eng, st, ev("page.hit", T0 + 29 * DAY + 12 * HOUR + 1))


def test_active_with_only_from() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: p, on: page.hit, points: 5, repeat: true, active: {from: "2026-06-01T00:00:00Z"}}
        """
    )
    st = eng.new_state()
    assert not awarded(eng, st, ev("page.hit", T0 - 0.5))
    assert awarded(eng, st, ev("page.hit", T0 + 1000 * DAY))


# --- repeat: once ever (default) ----------------------------------------------------------


def test_repeat_false_is_the_default_and_awards_once_ever() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: demo, on: form.submit, points: 20}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("form.submit", T0))
    assert not awarded(eng, st, ev("form.submit", T0 + 1))
    assert not awarded(eng, st, ev("form.submit", T0 + 400 * DAY))
    assert score(eng, st) == 20


def test_once_ever_is_per_action_not_per_item() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: docs, on: asset.download, where: {asset: "*.pdf"}, points: 8, repeat: false}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("asset.download", T0, asset="a.pdf"))
    assert not awarded(eng, st, ev("asset.download", T0 + 1, asset="b.pdf"))
    assert not awarded(eng, st, ev("asset.download", T0 + 2, asset="c.pdf"))
    assert score(eng, st) == 8


def test_once_ever_is_per_contact_state() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: demo, on: form.submit, points: 20}
        """
    )
    a, b = eng.new_state(), eng.new_state()
    assert awarded(eng, a, ev("form.submit", T0, contact="a"))
    assert awarded(eng, b, ev("form.submit", T0, contact="b"))


def test_non_matching_event_does_not_use_up_the_once() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: pricing, on: page.hit, where: {url: "*/pricing"}, points: 10}
        """
    )
    st = eng.new_state()
    assert not awarded(eng, st, ev("page.hit", T0, url="https://a.com/blog"))
    assert awarded(eng, st, ev("page.hit", T0 + 1, url="https://a.com/pricing"))


def test_once_ever_rules_are_independent() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: a, on: page.hit, points: 1}
          - {id: b, on: page.hit, points: 2}
        """
    )
    st = eng.new_state()
    effects = run(eng, st, [ev("page.hit", T0), ev("page.hit", T0 + 1)])
    assert sorted(p.rule for p in of_type(effects, PointChange)) == ["a", "b"]
    assert score(eng, st) == 3


# --- repeat: {max, per} sliding window ------------------------------------------------------

WINDOW = """
version: 1
actions:
  - {id: open, on: email.open, points: 2, repeat: {max: 2, per: 1d}}
"""


def test_window_awards_at_most_max_per_window() -> None:
    eng = engine(WINDOW)
    st = eng.new_state()
    got = [awarded(eng, st, ev("email.open", T0 + h * HOUR)) for h in (0, 1, 2, 3)]
    assert got == [True, True, False, False]
    assert score(eng, st) == 4


def test_window_slides_in_event_time() -> None:
    eng = engine(WINDOW)
    st = eng.new_state()
    assert awarded(eng, st, ev("email.open", T0))
    assert awarded(eng, st, ev("email.open", T0 + 10 * HOUR))
    assert not awarded(eng, st, ev("email.open", T0 + 20 * HOUR))
    # the award at T0 has left the 1d window; the one at +10h has not
    assert awarded(eng, st, ev("email.open", T0 + DAY + HOUR))
    assert not awarded(eng, st, ev("email.open", T0 + DAY + 2 * HOUR))
    # both +10h and +1d1h are within a day of +1d9h
    assert not awarded(eng, st, ev("email.open", T0 + DAY + 9 * HOUR))
    # +10h has left, +1d1h has not
    assert awarded(eng, st, ev("email.open", T0 + DAY + 11 * HOUR))


def test_window_refused_events_do_not_count_as_awards() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: open, on: email.open, points: 2, repeat: {max: 1, per: 1h}}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("email.open", T0))
    assert not awarded(eng, st, ev("email.open", T0 + 50 * MINUTE))
    # 61 min after the award but only 11 min after the refused one
    assert awarded(eng, st, ev("email.open", T0 + 61 * MINUTE))


def test_window_out_of_order_event_cannot_exceed_max() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: open, on: email.open, points: 2, repeat: {max: 1, per: 1d}}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("email.open", T0 + 10 * HOUR))
    # arrives late, 5 hours earlier in event time: same 1d window as the award
    assert not awarded(eng, st, ev("email.open", T0 + 5 * HOUR))
    assert score(eng, st) == 2


# --- repeat: cooldown ----------------------------------------------------------------------


def test_cooldown_blocks_awards_until_it_has_passed() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: visit, on: page.hit, points: 3, repeat: {cooldown: 1h}}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", T0))
    assert not awarded(eng, st, ev("page.hit", T0 + 30 * MINUTE))
    assert not awarded(eng, st, ev("page.hit", T0 + 59 * MINUTE))
    assert awarded(eng, st, ev("page.hit", T0 + HOUR + 1))
    assert not awarded(eng, st, ev("page.hit", T0 + HOUR + 2))
    assert score(eng, st) == 6


def test_cooldown_runs_from_the_last_award_not_the_last_match() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: visit, on: page.hit, points: 3, repeat: {cooldown: 1h}}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", T0))
    assert not awarded(eng, st, ev("page.hit", T0 + 50 * MINUTE))
    assert awarded(eng, st, ev("page.hit", T0 + 61 * MINUTE))


def test_cooldown_out_of_order_event_inside_cooldown_is_refused() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: visit, on: page.hit, points: 3, repeat: {cooldown: 1h}}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", T0 + 2 * HOUR))
    assert not awarded(eng, st, ev("page.hit", T0 + 2 * HOUR - 10 * MINUTE))


# --- hits ----------------------------------------------------------------------------------


def test_hits_awards_at_nth_match_current_included_then_never_again() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: fan, on: page.hit, where: {url: "*/blog/*"}, hits: 3, points: 15}
        """
    )
    st = eng.new_state()
    urls = ["/blog/a", "/blog/b", "/about", "/blog/c", "/blog/d", "/blog/e", "/blog/f"]
    got = [
        awarded(eng, st, ev("page.hit", T0 + i, url="https://a.com" + u))
        for i, u in enumerate(urls)
    ]
    assert got == [False, False, False, True, False, False, False]
    assert score(eng, st) == 15


def test_hits_one_awards_on_first_match() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: a, on: page.hit, hits: 1, points: 4}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", T0))


def test_hits_with_repeat_true_awards_on_every_match_from_the_nth() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: fan, on: page.hit, hits: 3, points: 1, repeat: true}
        """
    )
    st = eng.new_state()
    got = [awarded(eng, st, ev("page.hit", T0 + i)) for i in range(6)]
    assert got == [False, False, True, True, True, True]
    assert score(eng, st) == 4


def test_hits_counts_only_for_its_own_rule() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: opens, on: email.open, hits: 2, points: 5}
          - {id: clicks, on: email.click, hits: 2, points: 7}
        """
    )
    st = eng.new_state()
    assert not awarded(eng, st, ev("email.open", T0))
    assert not awarded(eng, st, ev("email.click", T0 + 1))
    assert awarded(eng, st, ev("email.open", T0 + 2), "opens")
    assert awarded(eng, st, ev("email.click", T0 + 3), "clicks")


# --- returns_within / returns_after ---------------------------------------------------------


def test_returns_within_is_inclusive_and_false_without_previous() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: back, on: page.hit, returns_within: 7d, points: 5, repeat: true}
        """
    )
    st = eng.new_state()
    assert not awarded(eng, st, ev("page.hit", T0))  # no previous matching event
    assert awarded(eng, st, ev("page.hit", T0 + 7 * DAY))  # exactly at the bound
    assert not awarded(eng, st, ev("page.hit", T0 + 14 * DAY + 1))  # 7d + 1s after previous
    assert awarded(eng, st, ev("page.hit", T0 + 15 * DAY))  # 1d after the refused one


def test_returns_after_is_inclusive_and_false_without_previous() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: back, on: page.hit, returns_after: 1d, points: 5, repeat: true}
        """
    )
    st = eng.new_state()
    assert not awarded(eng, st, ev("page.hit", T0))  # no previous
    assert not awarded(eng, st, ev("page.hit", T0 + DAY - 1))  # 1s short
    # previous matching hit is now T0 + DAY - 1, so exactly 1d later counts
    assert awarded(eng, st, ev("page.hit", T0 + 2 * DAY - 1))
    assert not awarded(eng, st, ev("page.hit", T0 + 2 * DAY))


def test_returns_after_exactly_at_bound() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: back, on: page.hit, returns_after: 1d, points: 5, repeat: true}
        """
    )
    st = eng.new_state()
    assert not awarded(eng, st, ev("page.hit", T0))
    assert awarded(eng, st, ev("page.hit", T0 + DAY))


def test_returns_previous_event_must_match_the_where_filter() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: back, on: page.hit, where: {url: "*/pricing"}, returns_within: 1d,
             points: 5, repeat: true}
        """
    )
    st = eng.new_state()
    assert not awarded(eng, st, ev("page.hit", T0, url="https://a.com/blog"))
    # the blog hit was not a matching event: still no previous
    assert not awarded(eng, st, ev("page.hit", T0 + HOUR, url="https://a.com/pricing"))
    assert awarded(eng, st, ev("page.hit", T0 + 2 * HOUR, url="https://a.com/pricing"))


def test_returns_within_and_after_are_anded() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: back, on: page.hit, returns_after: 1d, returns_within: 3d, points: 5,
             repeat: true}
        """
    )
    st = eng.new_state()
    assert not awarded(eng, st, ev("page.hit", T0))
    assert not awarded(eng, st, ev("page.hit", T0 + HOUR))  # too soon
    assert awarded(eng, st, ev("page.hit", T0 + 2 * DAY))  # 2d - 1h after previous
    assert not awarded(eng, st, ev("page.hit", T0 + 6 * DAY))  # 4d: too late


def test_returns_within_with_once_awards_only_once() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: back, on: page.hit, returns_within: 7d, points: 5}
        """
    )
    st = eng.new_state()
    got = [awarded(eng, st, ev("page.hit", T0 + i * DAY)) for i in range(4)]
    assert got == [False, True, False, False]


# --- caps ----------------------------------------------------------------------------------

CAPPED = """
version: 1
groups:
  engagement: {max: 25, min: -15}
actions:
  - {id: up, on: page.hit, points: 10, repeat: true}
  - {id: down, on: email.unsubscribe, points: -10, repeat: true}
"""


def test_max_clips_the_applied_delta_and_marks_capped() -> None:
    eng = engine(CAPPED)
    st = eng.new_state()
    effects = run(eng, st, [ev("page.hit", T0 + i) for i in range(3)])
    pcs = of_type(effects, PointChange)
    assert [p.delta for p in pcs] == [10, 10, 10]
    assert [p.applied for p in pcs] == [10, 10, 5]
    assert [p.capped for p in pcs] == [False, False, True]
    assert pcs[-1].score_after == 25
    assert score(eng, st) == 25


def test_at_max_further_points_are_not_applied() -> None:
    eng = engine(CAPPED)
    st = eng.new_state()
    effects = run(eng, st, [ev("page.hit", T0 + i) for i in range(5)])
    assert score(eng, st) == 25
    pcs = of_type(effects, PointChange)
    assert sum(p.applied for p in pcs) == 25
    for p in pcs[3:]:  # any change reported once full is a capped zero
        assert p.applied == 0
        assert p.capped is True
        assert p.score_after == 25


def test_min_clips_negative_deltas() -> None:
    eng = engine(CAPPED)
    st = eng.new_state()
    effects = run(eng, st, [ev("email.unsubscribe", T0 + i) for i in range(2)])
    pcs = of_type(effects, PointChange)
    assert [p.applied for p in pcs] == [-10, -5]
    assert [p.capped for p in pcs] == [False, True]
    assert score(eng, st) == -15


def test_after_hitting_max_a_negative_delta_applies_in_full() -> None:
    eng = engine(CAPPED)
    st = eng.new_state()
    run(eng, st, [ev("page.hit", T0 + i) for i in range(4)])
    (pc,) = of_type(eng.apply(st, ev("email.unsubscribe", T0 + 10)), PointChange)
    assert pc.applied == -10
    assert pc.capped is False
    assert score(eng, st) == 15


def test_caps_are_per_group() -> None:
    eng = engine(
        """
        version: 1
        groups:
          engagement: {max: 10}
          product: {}
        actions:
          - {id: a, on: page.hit, points: 8, repeat: true}
          - {id: b, on: cart.add, points: 8, repeat: true, group: product}
        """
    )
    st = eng.new_state()
    run(eng, st, [ev("page.hit", T0), ev("page.hit", T0 + 1), ev("cart.add", T0 + 2)])
    run(eng, st, [ev("cart.add", T0 + 3)])
    assert score(eng, st, "engagement") == 10
    assert score(eng, st, "product") == 16


# --- duplicates ----------------------------------------------------------------------------


def test_duplicate_event_id_gives_duplicate_and_no_points() -> None:
    eng = engine(PRICING)
    st = eng.new_state()
    first = eng.apply(st, ev("page.hit", T0, id="e-1", url="https://a.com/pricing"))
    assert len(of_type(first, PointChange)) == 1
    again = eng.apply(st, ev("page.hit", T0 + 5, id="e-1", url="https://a.com/pricing"))
    assert of_type(again, PointChange) == []
    dups = of_type(again, Duplicate)
    assert len(dups) == 1
    assert dups[0].event_id == "e-1"
    assert score(eng, st) == 10


def test_duplicate_does_not_advance_hit_counters() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: fan, on: page.hit, hits: 2, points: 15}
        """
    )
    st = eng.new_state()
    assert not awarded(eng, st, ev("page.hit", T0, id="x"))
    assert not awarded(eng, st, ev("page.hit", T0 + 1, id="x"))  # duplicate: not a 2nd hit
    assert awarded(eng, st, ev("page.hit", T0 + 2, id="y"))


def test_events_without_id_are_never_duplicates() -> None:
    eng = engine(PRICING)
    st = eng.new_state()
    effects = run(eng, st, [ev("page.hit", T0, url="https://a.com/pricing")] * 3)
    assert of_type(effects, Duplicate) == []
    assert score(eng, st) == 30


def test_distinct_ids_are_not_duplicates_and_memory_is_bounded() -> None:
    eng = engine(PRICING)
    st = eng.new_state()
    for i in range(40):
        effects = eng.apply(st, ev("page.hit", T0 + i, id=f"e-{i}", url="https://a.com/pricing"))
        assert of_type(effects, Duplicate) == []
    assert score(eng, st) == 400
    assert len(st.recent_ids) <= 16


def test_recent_ids_window_still_catches_the_last_16() -> None:
    eng = engine(PRICING)
    st = eng.new_state()
    for i in range(30):
        eng.apply(st, ev("page.hit", T0 + i, id=f"e-{i}", url="https://a.com/pricing"))
    again = eng.apply(st, ev("page.hit", T0 + 100, id="e-29", url="https://a.com/pricing"))
    assert of_type(again, Duplicate) and not of_type(again, PointChange)
    again = eng.apply(st, ev("page.hit", T0 + 101, id="e-15", url="https://a.com/pricing"))
    assert of_type(again, Duplicate) and not of_type(again, PointChange)


# --- known actions -------------------------------------------------------------------------


def test_is_known_covers_standard_vocabulary_rules_and_known_actions() -> None:
    from scoring_helpers import rules

    r = rules(
        """
        version: 1
        known_actions: [chat.start]
        actions:
          - {id: a, on: [trial.start], points: 1}
        """
    )
    for action in ("page.hit", "identify", "webinar.attend", "purchase", "email.bounce"):
        assert r.is_known(action)
    assert r.is_known("chat.start")
    assert r.is_known("trial.start")
    assert not r.is_known("chat.end")
    assert not r.is_known("page.hits")


def test_active_until_a_date_includes_that_whole_day() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: p, on: page.hit, points: 5, repeat: true, active: {until: 2026-06-30}}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", T0 + 29 * DAY + 23 * HOUR))
    assert not awarded(eng, st, ev("page.hit", T0 + 30 * DAY + 1))


def test_active_until_a_quoted_date_means_the_same_as_a_bare_date() -> None:
    # `until: 2026-06-30` and `until: "2026-06-30"` are the same date to a marketer
    eng = engine(
        """
        version: 1
        actions:
          - {id: p, on: page.hit, points: 5, repeat: true, active: {until: "2026-06-30"}}
        """
    )
    st = eng.new_state()
    assert awarded(eng, st, ev("page.hit", T0 + 29 * DAY + 23 * HOUR))
    assert not awarded(eng, st, ev("page.hit", T0 + 30 * DAY + 1))


# --- glob semantics against the reference implementation ----------------------------------


@settings(max_examples=300, deadline=None)
@given(
    pattern=st.text(alphabet="ab*?/.A", min_size=1, max_size=8),
    values=st.lists(st.text(alphabet="abAB/.", max_size=10), min_size=1, max_size=8),
)
def test_where_glob_agrees_with_fnmatch_ignoring_case(pattern: str, values: list[str]) -> None:
    r = parse_rules(
        {
            "version": 1,
            "actions": [
                {"id": "g", "on": "page.hit", "where": {"v": pattern}, "points": 1, "repeat": True}
            ],
        }
    )
    eng = Engine(r)
    st_ = eng.new_state()
    for i, value in enumerate(values):
        expected = fnmatch.fnmatchcase(value.lower(), pattern.lower())
        assert awarded(eng, st_, ev("page.hit", T0 + i, v=value)) is expected, (pattern, value)
