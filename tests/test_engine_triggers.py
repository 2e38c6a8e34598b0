"""Triggers: at_least once, rearm_below, below crossings, after gating, order, actions."""

from __future__ import annotations

from scoring_helpers import T0, engine, ev, of_type, run, score

from leadscore.engine import (
    Engine,
    PointChange,
    SegmentChanged,
    StageChanged,
    TagChanged,
    TriggerFired,
)

# +10 on page.hit, -10 on email.bounce, +30 on form.submit, -30 on email.unsubscribe
MOVES = """
  - {id: up, on: page.hit, points: 10, repeat: true}
  - {id: down, on: email.bounce, points: -10, repeat: true}
  - {id: big-up, on: form.submit, points: 30, repeat: true}
  - {id: big-down, on: email.unsubscribe, points: -30, repeat: true}
"""


def make(triggers: str, extra: str = "") -> Engine:
    return engine("version: 1\n" + extra + "actions:\n" + MOVES + "triggers:\n" + triggers)


def fired(effects: list[object], trigger: str | None = None) -> list[TriggerFired]:
    return [t for t in of_type(effects, TriggerFired) if trigger is None or t.trigger == trigger]


class Seq:
    """Drive one contact with increasing event times."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.st = eng.new_state()
        self.t = T0

    def __call__(self, action: str, n: int = 1) -> list[object]:
        out: list[object] = []
        for _ in range(n):
            self.t += 1
            out.extend(self.eng.apply(self.st, ev(action, self.t)))
        return out


# --- at_least ------------------------------------------------------------------------------


def test_at_least_fires_once_when_threshold_is_reached() -> None:
    s = Seq(make("  - {id: mql, score: total, at_least: 30, actions: [{notify: sales}]}\n"))
    assert fired(s("page.hit", 2)) == []
    effects = s("page.hit")  # score 30: >= threshold
    (tf,) = fired(effects, "mql")
    assert tf.score == 30
    assert tf.at == s.t
    assert tf.actions == [{"notify": "sales"}]
    assert fired(s("page.hit", 3)) == []


def test_at_least_does_not_refire_after_falling_and_rising_without_rearm() -> None:
    s = Seq(make("  - {id: mql, score: total, at_least: 30, actions: [{notify: sales}]}\n"))
    assert len(fired(s("form.submit"))) == 1  # 30
    s("email.unsubscribe")  # back to 0
    s("email.unsubscribe")  # -30
    assert fired(s("form.submit", 3)) == []  # 60 again: once ever
    assert score(s.eng, s.st) == 60


def test_at_least_reached_by_one_large_jump_fires_with_score_after() -> None:
    s = Seq(make("  - {id: mql, score: total, at_least: 25, actions: []}\n"))
    (tf,) = fired(s("form.submit"))
    assert tf.score == 30


def test_rearm_below_lets_the_trigger_fire_again() -> None:
    s = Seq(
        make(
            "  - {id: mql, score: total, at_least: 50, rearm_below: 30,"
            " actions: [{notify: sales}]}\n"
        )
    )
    s("form.submit")  # 30
    assert len(fired(s("page.hit", 2), "mql")) == 1  # 50
    s("email.bounce", 2)  # 30: not under 30, still armed-off
    assert fired(s("page.hit", 2)) == []  # 50 again, not re-armed
    s("email.bounce", 3)  # 20: under 30, re-armed
    assert fired(s("page.hit", 2)) == []  # 40
    assert len(fired(s("page.hit"), "mql")) == 1  # 50: fires again
    assert fired(s("page.hit")) == []  # 60: not again


def test_rearm_and_refire_within_one_event_sequence() -> None:
    s = Seq(make("  - {id: hot, score: total, at_least: 30, rearm_below: 10, actions: []}\n"))
    assert len(fired(s("form.submit"))) == 1
    s("email.unsubscribe")  # 0: re-armed
    assert len(fired(s("form.submit"))) == 1


# --- below ---------------------------------------------------------------------------------


def test_below_fires_on_downward_crossing_only() -> None:
    s = Seq(make("  - {id: cold, score: total, below: 20, actions: [{notify: marketing}]}\n"))
    assert fired(s("email.bounce")) == []  # 0 -> -10: was never at or above 20
    s("form.submit")  # 20
    assert fired(s("page.hit")) == []  # 30
    assert fired(s("email.bounce")) == []  # 20: not below 20
    (tf,) = fired(s("email.bounce"), "cold")  # 10: crossed
    assert tf.score == 10
    assert tf.actions == [{"notify": "marketing"}]
    assert fired(s("email.bounce")) == []  # 0: still below, no new crossing


def test_below_fires_again_on_each_new_crossing() -> None:
    s = Seq(make("  - {id: cold, score: total, below: 20, actions: []}\n"))
    s("form.submit")  # 30
    assert len(fired(s("email.bounce", 2))) == 1  # 10
    s("page.hit", 2)  # 30
    assert len(fired(s("email.unsubscribe"))) == 1  # 0


def test_below_with_after_fires_only_if_the_other_fired_since() -> None:
    s = Seq(
        make(
            "  - {id: mql, score: total, at_least: 50, actions: [{add_segment: mql}]}\n"
            "  - {id: cooled, score: total, below: 20, after: mql,"
            " actions: [{remove_segment: mql}]}\n"
        )
    )
    s("form.submit")  # 30
    assert fired(s("email.unsubscribe")) == []  # 0: crossed, but mql never fired
    s("form.submit", 2)  # 60 -> mql fires
    assert [t.trigger for t in fired(s("page.hit"))] == []
    effects = s("email.unsubscribe", 2)  # 0
    assert [t.trigger for t in fired(effects)] == ["cooled"]
    s("form.submit", 2)  # 60: mql does not re-fire (no rearm)
    assert fired(s("email.unsubscribe", 2)) == []  # mql did not fire since cooled


def test_after_with_rearm_allows_a_second_cycle() -> None:
    s = Seq(
        make(
            "  - {id: mql, score: total, at_least: 50, rearm_below: 30, actions: []}\n"
            "  - {id: cooled, score: total, below: 20, after: mql, actions: []}\n"
        )
    )
    s("form.submit", 2)  # 60: mql
    assert [t.trigger for t in fired(s("email.unsubscribe", 2))] == ["cooled"]  # 0, rearm
    effects = s("form.submit", 2)  # 60: mql again
    assert [t.trigger for t in fired(effects)] == ["mql"]
    assert [t.trigger for t in fired(s("email.unsubscribe", 2))] == ["cooled"]


# --- several at once -----------------------------------------------------------------------


def test_one_change_crossing_several_triggers_fires_all_in_file_order() -> None:
    s = Seq(
        make(
            "  - {id: t20, score: total, at_least: 20, actions: []}\n"
            "  - {id: t10, score: total, at_least: 10, actions: []}\n"
            "  - {id: t30, score: total, at_least: 30, actions: []}\n"
            "  - {id: t40, score: total, at_least: 40, actions: []}\n"
        )
    )
    effects = s("form.submit")  # 0 -> 30
    assert [t.trigger for t in fired(effects)] == ["t20", "t10", "t30"]
    assert all(t.score == 30 for t in fired(effects))


def test_one_drop_crossing_several_below_triggers_fires_all_in_file_order() -> None:
    s = Seq(
        make(
            "  - {id: b5, score: total, below: 5, actions: []}\n"
            "  - {id: b25, score: total, below: 25, actions: []}\n"
            "  - {id: b15, score: total, below: 15, actions: []}\n"
        )
    )
    s("form.submit")  # 30
    effects = s("email.unsubscribe")  # 0
    assert [t.trigger for t in fired(effects)] == ["b5", "b25", "b15"]


def test_trigger_fires_after_the_point_change_that_caused_it() -> None:
    s = Seq(make("  - {id: hot, score: total, at_least: 30, actions: []}\n"))
    effects = s("form.submit")
    kinds = [type(e).__name__ for e in effects]
    assert kinds.index("PointChange") < kinds.index("TriggerFired")


# --- group scores --------------------------------------------------------------------------


def test_group_trigger_looks_only_at_its_group() -> None:
    eng = engine(
        """
        version: 1
        groups: {engagement: {}, product: {}}
        actions:
          - {id: a, on: page.hit, points: 40, repeat: true}
          - {id: b, on: cart.add, points: 20, repeat: true, group: product}
        triggers:
          - {id: prod-hot, score: product, at_least: 30, actions: []}
          - {id: total-hot, score: total, at_least: 50, actions: []}
        """
    )
    st = eng.new_state()
    effects = run(eng, st, [ev("page.hit", T0), ev("cart.add", T0 + 1)])
    assert [t.trigger for t in fired(effects)] == ["total-hot"]  # total 60, product 20
    (tf,) = fired(eng.apply(st, ev("cart.add", T0 + 2)))
    assert tf.trigger == "prod-hot"
    assert tf.score == 40


def test_total_trigger_counts_fit_points() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: a, on: page.hit, points: 20}
        fit:
          - {id: vp, trait: title, matches: "(?i)vp", points: 15}
        triggers:
          - {id: mql, score: total, at_least: 30, actions: []}
        """
    )
    st = eng.new_state()
    assert fired(eng.apply(st, ev("page.hit", T0))) == []
    effects = eng.apply(st, ev("identify", T0 + 1, traits={"title": "VP Sales"}))
    (tf,) = fired(effects)
    assert tf.trigger == "mql"
    assert tf.score == 35


# --- trigger actions -----------------------------------------------------------------------

FULL = """
version: 1
actions:
  - {id: up, on: page.hit, points: 30, repeat: true}
  - {id: down, on: email.unsubscribe, points: -30, repeat: true}
triggers:
  - id: mql
    score: total
    at_least: 50
    actions:
      - notify: sales
      - add_segment: mql
      - add_tag: hot
      - set_stage: decision
      - webhook: https://crm.example.com/hooks/mql
  - id: cooled
    score: total
    below: 20
    after: mql
    actions: [{remove_segment: mql}, {add_segment: nurture}, {remove_tag: hot},
              {notify: marketing}]
stages:
  order: [awareness, investigation, decision, action]
"""


def test_trigger_actions_update_state_and_appear_as_effects() -> None:
    eng = engine(FULL)
    st = eng.new_state()
    eng.apply(st, ev("page.hit", T0))
    effects = eng.apply(st, ev("page.hit", T0 + 10))  # 60
    (tf,) = fired(effects)
    assert tf.actions == [
        {"notify": "sales"},
        {"add_segment": "mql"},
        {"add_tag": "hot"},
        {"set_stage": "decision"},
        {"webhook": "https://crm.example.com/hooks/mql"},
    ]
    (seg,) = of_type(effects, SegmentChanged)
    assert (seg.segment, seg.added, seg.at) == ("mql", True, T0 + 10)
    assert "mql" in str(seg.cause)
    (tag,) = of_type(effects, TagChanged)
    assert (tag.tag, tag.added, tag.at) == ("hot", True, T0 + 10)
    (stage,) = of_type(effects, StageChanged)
    assert (stage.stage, stage.previous, stage.at) == ("decision", None, T0 + 10)
    view = eng.view("c-1", st)
    assert view["segments"] == ["mql"]
    assert view["tags"] == ["hot"]
    assert view["stage"] == "decision"


def test_cooling_trigger_removes_and_adds_segments() -> None:
    eng = engine(FULL)
    st = eng.new_state()
    run(eng, st, [ev("page.hit", T0), ev("page.hit", T0 + 1)])  # 60
    effects = run(eng, st, [ev("email.unsubscribe", T0 + 2), ev("email.unsubscribe", T0 + 3)])
    assert [t.trigger for t in fired(effects)] == ["cooled"]
    segs = [(s.segment, s.added) for s in of_type(effects, SegmentChanged)]
    assert segs == [("mql", False), ("nurture", True)]
    assert [(t.tag, t.added) for t in of_type(effects, TagChanged)] == [("hot", False)]
    view = eng.view("c-1", st)
    assert view["segments"] == ["nurture"]
    assert view["tags"] == []


def test_segments_are_a_set_no_duplicates() -> None:
    eng = engine(
        """
        version: 1
        actions:
          - {id: up, on: page.hit, points: 30, repeat: true}
          - {id: down, on: email.unsubscribe, points: -30, repeat: true}
        triggers:
          - {id: a, score: total, at_least: 30, rearm_below: 10, actions: [{add_segment: s}]}
        """
    )
    st = eng.new_state()
    events = [ev("page.hit", T0), ev("email.unsubscribe", T0 + 1), ev("page.hit", T0 + 2)]
    effects = run(eng, st, events)
    assert len(fired(effects)) == 2
    assert eng.view("c-1", st)["segments"] == ["s"]
    assert st.segments == ("s",)


def test_score_after_reflects_each_change_in_order() -> None:
    eng = engine(FULL)
    st = eng.new_state()
    effects = run(eng, st, [ev("page.hit", T0), ev("page.hit", T0 + 1)])
    assert [p.score_after for p in of_type(effects, PointChange)] == [30, 60]


# --- crossings relative to the implicit starting score of 0 --------------------------------


def test_below_a_negative_threshold_fires_on_the_first_drop_from_zero() -> None:
    # A new contact scores 0, which is not below -10; -20 is: a downward crossing.
    s = Seq(make("  - {id: churn, score: total, below: -10, actions: [{add_tag: churn}]}\n"))
    (tf,) = fired(s("email.unsubscribe"), "churn")  # 0 -> -30
    assert tf.score == -30
    assert eng_view(s)["tags"] == ["churn"]


def test_below_zero_fires_on_the_first_negative_change() -> None:
    s = Seq(make("  - {id: neg, score: total, below: 0, actions: []}\n"))
    assert len(fired(s("email.bounce"), "neg")) == 1  # 0 -> -10


def test_at_least_zero_or_less_does_not_need_a_rise() -> None:
    # "fires once per contact when score >= X after a change"
    s = Seq(make("  - {id: any, score: total, at_least: -50, actions: []}\n"))
    assert len(fired(s("email.bounce"), "any")) == 1  # -10 >= -50
    assert fired(s("email.bounce")) == []


def test_after_does_not_turn_a_later_unrelated_change_into_a_crossing() -> None:
    # cooled watches engagement; mql watches product. engagement crosses below 20 while mql
    # has not fired (no firing). Later mql fires while engagement stays at 0: engagement did
    # not cross anything in that change, so cooled must not fire ("fires on a downward
    # crossing ... only if mql fired since").
    eng = engine(
        """
        version: 1
        groups: {engagement: {}, product: {}}
        actions:
          - {id: up, on: form.submit, points: 30, repeat: true}
          - {id: down, on: email.unsubscribe, points: -30, repeat: true}
          - {id: cart, on: cart.add, points: 10, group: product, repeat: true}
        triggers:
          - {id: mql, score: product, at_least: 10, actions: []}
          - {id: cooled, score: engagement, below: 20, after: mql, actions: []}
        """
    )
    st = eng.new_state()
    run(eng, st, [ev("form.submit", T0), ev("email.unsubscribe", T0 + 1)])  # 30 -> 0
    effects = eng.apply(st, ev("cart.add", T0 + 2))  # mql fires; engagement unchanged at 0
    assert [t.trigger for t in fired(effects)] == ["mql"]
    # the next real downward crossing does fire
    run(eng, st, [ev("form.submit", T0 + 3)])  # engagement 30
    effects = eng.apply(st, ev("email.unsubscribe", T0 + 4))  # 0
    assert [t.trigger for t in fired(effects)] == ["cooled"]


def eng_view(s: Seq) -> dict[str, object]:
    return s.eng.view("c-1", s.st)


def test_effects_and_state_are_slotted_and_orjson_serialises_effects() -> None:
    import orjson

    eng = engine(FULL)
    st = eng.new_state()
    assert not hasattr(st, "__dict__")
    effects = run(eng, st, [ev("page.hit", T0, id="a"), ev("page.hit", T0 + 1, id="b")])
    effects += eng.apply(st, ev("page.hit", T0 + 2, id="b"))  # a Duplicate
    kinds = {type(e).__name__ for e in effects}
    assert kinds >= {"PointChange", "TriggerFired", "SegmentChanged", "TagChanged", "Duplicate"}
    assert "StageChanged" in kinds
    for e in effects:
        assert not hasattr(e, "__dict__"), type(e)
        data = orjson.loads(orjson.dumps(e))
        assert isinstance(data, dict) and data
    (pc,) = [e for e in effects if isinstance(e, PointChange)][:1]
    assert set(orjson.loads(orjson.dumps(pc))) == {
        "rule",
        "group",
        "delta",
        "applied",
        "score_after",
        "event_id",
        "at",
        "capped",
        "reason",
    }
