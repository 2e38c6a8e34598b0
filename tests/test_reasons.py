"""explain's "why didn't this count?": every event listed, each with why it earned nothing.

The reasons come from leadscore.reasons, which evaluates the engine's conditions again
against the state before each event. The property test checks that it agrees with the
engine on random streams: an event that earned nothing has a reason, one that earned none.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from scoring_helpers import DAY, HOUR, MINUTE, T0, rules
from test_engine_properties import RICH, event_lists

from leadscore.engine import Engine, PointChange
from leadscore.events import Event, format_ts
from leadscore.explain import EventLine, explain, replay
from leadscore.reasons import event_reasons, pending_reasons

NOW = T0 + 400 * DAY  # the wall clock of these replays: every event is in its past

REASONS = """
version: 1
groups:
  engagement: {max: 20}
  fit: {}
actions:
  - {id: pricing, on: page.hit, where: {url: "*/pricing*", "utm.source": google}, points: 5,
     repeat: {cooldown: 1d}}
  - {id: demo, on: form.submit, where: {form: demo}, points: 15}
  - {id: opens, on: email.open, points: 1, repeat: {max: 2, per: 1d}}
  - {id: fan, on: video.play, hits: 3, points: 4}
  - {id: back, on: asset.download, returns_within: 7d, points: 2, repeat: true}
  - {id: later, on: email.click, returns_after: 1d, points: 3, repeat: true}
  - {id: spring, on: webinar.attend, points: 6, repeat: true,
     active: {from: 2026-03-01, until: 2026-05-31}}
  - {id: big, on: purchase, points: 30, repeat: true}
  - {id: nothing, on: cart.abandon, points: 0, repeat: true}
fit:
  - {id: vp, trait: title, matches: "(?i)\\\\bvp\\\\b", points: 10}
stages:
  order: [awareness, decision]
  rules:
    - {on: cart.add, stage: decision}
"""


def line(action: str, ts: float, id: str | None = None, **props: Any) -> bytes:
    obj: dict[str, Any] = {"contact": "c-1", "action": action, "ts": ts, "props": props}
    if id is not None:
        obj["id"] = id
    return orjson.dumps(obj)


def events_of(text: str, lines: list[bytes]) -> list[EventLine]:
    return replay(rules(text), [lines], "c-1", NOW).events_seen


def only_reason(got: EventLine) -> tuple[str, str]:
    assert got.earned == 0 and got.rules == [], got
    assert len(got.reasons) == 1, got.reasons
    return got.reasons[0].code, got.reasons[0].text


def test_every_event_is_listed_with_what_it_earned_or_why_not() -> None:
    lines = [
        line("cart.add", T0),  # a stage, no points
        line("page.hit", T0 + 1, url="https://a.com/blog"),
        line("page.hit", T0 + 2, url="https://a.com/pricing", utm={"source": "google"}),
        line("page.hit", T0 + 3, url="https://a.com/pricing", utm={"source": "google"}),
        line("form.submit", T0 + 4, id="f-1", form="demo"),
        line("form.submit", T0 + 5, id="f-1", form="demo"),  # a retry
        line("form.submit", T0 + 6, id="f-2", form="demo"),
        line("purchase", T0 + 7),  # 5 + 15 + 30 > max 20
        line("cart.abandon", T0 + 8),
    ]
    got = events_of(REASONS, lines)
    assert [g.action for g in got] == [
        "cart.add", "page.hit", "page.hit", "page.hit", "form.submit", "form.submit",
        "form.submit", "purchase", "cart.abandon",
    ]  # fmt: skip
    assert only_reason(got[0]) == (
        "no_rule",
        "no rule scores action 'cart.add' (its rules only move the stage)",
    )
    code, text = only_reason(got[1])
    assert code == "where" and text.startswith("pricing: where url: '*/pricing*' did not match")
    assert "'https://a.com/blog'" in text
    assert got[2].earned == 5 and got[2].rules == ["pricing"] and got[2].reasons == []
    assert only_reason(got[3]) == (
        "cooldown",
        f"pricing: cooldown until {format_ts(T0 + 2 + DAY)} (awarded at {format_ts(T0 + 2)})",
    )
    assert got[4].earned == 15 and got[4].reasons == []
    code, text = only_reason(got[5])
    assert code == "duplicate" and "'f-1'" in text
    assert only_reason(got[6]) == (
        "once",
        f"demo: once ever, already awarded at {format_ts(T0 + 4)}",
    )
    assert only_reason(got[7]) == ("cap", "big: cap reached, engagement is at its max 20")
    assert only_reason(got[8]) == ("zero_points", "nothing: the rule gives 0 points")


def test_a_where_on_a_dotted_path_names_it_and_says_when_it_is_missing() -> None:
    got = events_of(REASONS, [line("page.hit", T0, url="https://a.com/pricing")])
    assert only_reason(got[0]) == (
        "where",
        "pricing: where utm.source: 'google' did not match (it is missing)",
    )


def test_window_full_says_n_of_n_since_when() -> None:
    got = events_of(REASONS, [line("email.open", T0 + i * MINUTE) for i in range(3)])
    assert [g.earned for g in got] == [1, 1, 0]
    assert only_reason(got[2]) == (
        "window",
        f"opens: window full, 2 of 2 per 1d since {format_ts(T0)}",
    )


def test_hits_not_reached_counts_k_of_n() -> None:
    got = events_of(REASONS, [line("video.play", T0 + i) for i in range(3)])
    assert only_reason(got[0]) == ("hits", "fan: hits not reached, 1 of 3")
    assert only_reason(got[1]) == ("hits", "fan: hits not reached, 2 of 3")
    assert got[2].earned == 4


def test_returns_within_and_after_not_met() -> None:
    got = events_of(
        REASONS,
        [
            line("asset.download", T0),
            line("asset.download", T0 + 8 * DAY),
            line("asset.download", T0 + 9 * DAY),
            line("email.click", T0),
            line("email.click", T0 + HOUR),
            line("email.click", T0 + 2 * DAY),
        ],
    )
    assert only_reason(got[0]) == (
        "returns_within",
        "back: returns_within 1w not met: no earlier match",
    )
    assert only_reason(got[1]) == (
        "returns_within",
        f"back: returns_within 1w not met: the previous match was at {format_ts(T0)}",
    )
    assert got[2].earned == 2
    assert only_reason(got[3]) == (
        "returns_after",
        "later: returns_after 1d not met: no earlier match",
    )
    assert only_reason(got[4]) == (
        "returns_after",
        f"later: returns_after 1d not met: the previous match was at {format_ts(T0)}",
    )
    assert got[5].earned == 3


def test_a_rule_outside_its_active_dates_is_inactive() -> None:
    before, during, after = T0 - 100 * DAY, T0 - 60 * DAY, T0 + 10 * DAY  # T0 is 2026-06-01
    got = events_of(REASONS, [line("webinar.attend", t) for t in (before, during, after)])
    assert only_reason(got[0]) == (
        "inactive",
        "spring: rule inactive, active from 2026-03-01T00:00:00.000Z",
    )
    assert got[1].earned == 6
    assert only_reason(got[2])[0] == "inactive"
    assert "active until 2026-05-31T23:59:59.999Z" in only_reason(got[2])[1]


def test_an_action_no_rule_uses_and_traits_that_change_no_fit() -> None:
    obj = {"contact": "c-1", "action": "identify", "ts": T0, "traits": {"title": "Intern"}}
    got = events_of(REASONS, [orjson.dumps(obj)])
    assert [(r.code, r.text) for r in got[0].reasons] == [
        ("no_rule", "no rule scores action 'identify'"),
        ("no_fit_change", "its traits changed no fit rule"),
    ]
    obj["traits"] = {"title": "VP Sales"}
    got = events_of(REASONS, [orjson.dumps(obj)])
    assert got[0].earned == 10 and got[0].rules == ["vp"] and got[0].reasons == []


def test_explain_carries_the_events_and_json_has_them() -> None:
    result = replay(rules(REASONS), [[line("video.play", T0)]], "c-1", NOW)
    story = explain("c-1", result.records, result.view, rules(REASONS), result.events_seen)
    data = orjson.loads(orjson.dumps(story.to_dict()))
    assert data["events"] == [
        {
            "at": format_ts(T0),
            "action": "video.play",
            "event_id": None,
            "earned": 0.0,
            "rules": [],
            "reasons": [{"rule": "fan", "code": "hits", "text": "fan: hits not reached, 1 of 3"}],
        }
    ]


# --- agreement with the engine -----------------------------------------------------------------

RICH_PLUS = RICH.replace(
    "  - {id: unsub, on: email.unsubscribe, points: -30, repeat: true}\n",
    "  - {id: unsub, on: email.unsubscribe, points: -30, repeat: true}\n"
    "  - {id: zero, on: email.click, where: {url: '*/docs*'}, points: 0, repeat: true}\n"
    "  - {id: june, on: form.submit, points: 5, repeat: true,\n"
    "     active: {from: 2026-06-10, until: 2026-06-20}}\n",
)


@settings(max_examples=200, deadline=None)
@given(events=event_lists(), dup=st.integers(0, 3))
def test_reasons_agree_with_the_engine(events: list[Event], dup: int) -> None:
    """Whenever the engine awards nothing for an event, there is a reason; never otherwise."""
    eng = Engine(rules(RICH_PLUS))
    state = eng.new_state()
    if events and dup:  # replays of earlier ids (duplicates) now and then
        events = [*events, *events[:dup]]
    for event in events:
        pending = pending_reasons(eng, state, event)
        effects = eng.apply(state, event)
        reasons = event_reasons(eng, pending, event, effects)
        earned = any(e.applied for e in effects if type(e) is PointChange)
        assert earned == (reasons == []), (event, effects, reasons)
        assert all(r.code != "unknown" for r in reasons), reasons
        # Rule by rule: each rule the action selects either awarded or has its reason.
        awarded = {e.rule for e in effects if type(e) is PointChange}
        named = {r.rule for r in pending if r.rule is not None}
        if pending and pending[0].code == "duplicate":
            assert not awarded and not effects[1:]
            continue
        selected = {r.id for r in eng.rules.by_action.get(event.action, ())}
        fit = {r.id for r in eng.rules.fit}
        assert not awarded & named, (awarded, pending)
        assert selected == (awarded - fit) | named, (selected, awarded, pending)
