"""The Segment message -> event mapping, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leadscore.events import MAX_DEPTH, Event
from leadscore.segment import (
    DEFAULT_EVENT_ACTIONS,
    Invalid,
    action_for,
    build_action_map,
    event_time,
    map_message,
    parse_time,
    slugify,
)

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC).timestamp()
ACTIONS = build_action_map()


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def track(**fields: Any) -> dict[str, Any]:
    return {"userId": "u-1", "event": "Order Completed", **fields}


def mapped(msg: object, kind: str | None = "track", **kwargs: Any) -> Event:
    result = map_message(msg, kind, received_at=NOW, action_map=ACTIONS, **kwargs)
    assert isinstance(result, Event), result
    return result


def invalid(msg: object, kind: str | None = "track", **kwargs: Any) -> Invalid:
    result = map_message(msg, kind, received_at=NOW, action_map=ACTIONS, **kwargs)
    assert isinstance(result, Invalid), result
    return result


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Order Completed", "order.completed"),
        ("  Signed   Up!! ", "signed.up"),
        ("order_completed", "order.completed"),
        ("Démo Demandée", "démo.demandée"),
        ("v2 -- Trial", "v2.trial"),
        ("!!!", ""),
    ],
)
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug


@pytest.mark.parametrize(
    ("event", "action"),
    [
        ("Order Completed", "purchase"),
        ("Product Added", "cart.add"),
        ("Form Submitted", "form.submit"),
        ("Email Opened", "email.open"),
        ("Email Link Clicked", "email.click"),
        ("Unsubscribed", "email.unsubscribe"),
        ("order completed", "purchase"),  # case and spacing do not matter
        ("ORDER_COMPLETED", "purchase"),
        ("Trial Started", "trial.started"),  # unknown names become their slug
    ],
)
def test_default_actions(event: str, action: str) -> None:
    assert action_for(event, ACTIONS) == action


def test_overrides_extend_and_replace_defaults() -> None:
    actions = build_action_map({"Demo Requested": "form.submit", "order completed": "buy"})
    assert action_for("demo requested", actions) == "form.submit"
    assert action_for("Order Completed", actions) == "buy"
    assert action_for("Product Added", actions) == "cart.add"
    assert len(actions) == len(DEFAULT_EVENT_ACTIONS) + 1


@pytest.mark.parametrize("bad", [{"": "purchase"}, {"Paid": ""}, {"Paid": "  "}])
def test_bad_overrides_fail_at_start_up(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        build_action_map(bad)


def test_track_maps_every_field() -> None:
    event = mapped(
        track(
            anonymousId="anon-9",
            messageId="msg-1",
            properties={"revenue": 99.5, "currency": "EUR"},
            context={"traits": {"email": "a@b.c"}},
        )
    )
    assert event.contact == "u-1"  # userId wins over anonymousId
    assert event.action == "purchase"
    assert event.id == "msg-1"
    assert event.props == {"revenue": 99.5, "currency": "EUR"}
    assert event.traits == {"email": "a@b.c"}
    assert event.ts == NOW


def test_anonymous_id_and_numeric_ids_are_contacts() -> None:
    assert mapped({"anonymousId": "anon-9", "event": "x"}).contact == "anon-9"
    event = mapped({"userId": 42, "event": "x", "messageId": 7})
    assert (event.contact, event.id) == ("42", "7")
    assert mapped({"userId": "", "anonymousId": "a", "event": "x"}).contact == "a"


def test_identify_carries_traits() -> None:
    event = mapped({"userId": "u-1", "traits": {"title": "VP Sales"}}, "identify")
    assert (event.action, event.traits, event.props) == ("identify", {"title": "VP Sales"}, {})
    assert mapped({"userId": "u-1"}, "identify").traits == {}


def test_page_props_from_properties_then_context() -> None:
    event = mapped(
        {
            "userId": "u-1",
            "name": "Pricing",
            "properties": {"url": "https://acme.com/pricing", "title": "Pricing"},
            "context": {"page": {"url": "https://ignored", "referrer": "https://google.com/"}},
        },
        "page",
    )
    assert event.action == "page.hit"
    assert event.props == {
        "url": "https://acme.com/pricing",
        "title": "Pricing",
        "referrer": "https://google.com/",
        "name": "Pricing",
    }


def test_batch_messages_use_their_type() -> None:
    assert mapped({"type": "identify", "userId": "u"}, None).action == "identify"
    assert mapped({"type": "page", "userId": "u"}, None).action == "page.hit"
    screen = mapped({"type": "screen", "userId": "u", "name": "Home"}, None)
    assert (screen.action, screen.props) == ("screen.view", {"name": "Home"})


def test_clock_skew_is_corrected_with_sent_at() -> None:
    # The device clock is one hour fast: the event happened 10 s before it was sent.
    msg = track(timestamp="2026-11-22T11:00:00Z", sentAt="2026-11-22T11:00:10Z")
    assert mapped(msg).ts == NOW - 10
    # A batch-level sentAt applies to messages without their own.
    batch_msg = track(timestamp="2026-11-22T11:00:00Z")
    assert mapped(batch_msg, batch_sent_at=epoch("2026-11-22T11:00:30+00:00")).ts == NOW - 30
    # Without sentAt the timestamp is taken as is; without either, receipt time.
    assert mapped(track(timestamp="2026-01-01T00:00:00Z")).ts == epoch("2026-01-01T00:00:00+00:00")
    assert mapped(track(sentAt="2026-01-01T00:00:00Z")).ts == NOW
    assert event_time(None, None, NOW) == NOW
    # An event stamped after it was sent cannot be newer than its receipt.
    late = track(timestamp="2018-10-30T22:45:02Z", sentAt="1980-06-30T09:07:44Z")
    assert mapped(late).ts == NOW
    # An absurd sentAt would push the corrected time past year 9999: keep the timestamp.
    far = track(timestamp="9999-01-01T00:00:00Z", sentAt="1970-01-01T00:00:00Z")
    assert mapped(far).ts == epoch("9999-01-01T00:00:00+00:00")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T10:00:00Z", NOW),
        ("2026-11-22T10:00:00.123456789Z", NOW + 0.123456),
        ("2026-11-22t10:00:00z", NOW),
        ("2026-11-22T11:00:00+01:00", NOW),
        ("2026-11-22T10:00:60Z", NOW + 59),  # leap second, read as :59
        (NOW, NOW),
        (NOW * 1000, NOW),
        ("1897-11-30T14:12:31Z", epoch("1897-11-30T14:12:31+00:00")),  # RFC 3339 allows it
        ("0001-01-01T00:00:00+01:00", -62135596800.0),  # pinned to the first representable
        (None, None),
    ],
)
def test_parse_time(text: object, expected: float | None) -> None:
    result = parse_time(text, "timestamp")
    assert result == pytest.approx(expected) if expected is not None else result is None


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("yesterday", "bad_ts"),
        (True, "wrong_type"),
        ({"at": 1}, "wrong_type"),
        (float("nan"), "non_finite"),
        (-5, "bad_ts"),
        (1e99, "bad_ts"),
        ("10000-01-01T00:00:00Z", "bad_ts"),
    ],
)
def test_parse_time_rejects(value: object, code: str) -> None:
    result = parse_time(value, "batch[2].timestamp")
    assert isinstance(result, Invalid)
    assert (result.code, result.field) == (code, "batch[2].timestamp")
    assert "batch[2].timestamp" in result.message


@pytest.mark.parametrize(
    ("msg", "kind", "code", "field"),
    [
        ({"event": "x"}, "track", "missing_field", "userId"),
        ({"userId": "u"}, "track", "missing_field", "event"),
        ({"userId": "u", "event": 5}, "track", "wrong_type", "event"),
        ({"userId": "u", "event": "!!!"}, "track", "wrong_type", "event"),
        ({"userId": "u", "event": "e" * 200}, "track", "wrong_type", "event"),
        ({"userId": {"id": 1}, "event": "x"}, "track", "wrong_type", "userId"),
        ({"userId": True, "event": "x"}, "track", "wrong_type", "userId"),
        ({"userId": "u" * 300, "event": "x"}, "track", "wrong_type", "userId"),
        ({"anonymousId": [1], "event": "x"}, "track", "wrong_type", "anonymousId"),
        ({"userId": "u", "event": "x", "messageId": 1.5}, "track", "wrong_type", "messageId"),
        ({"userId": "u", "event": "x", "properties": [1]}, "track", "wrong_type", "properties"),
        ({"userId": "u", "traits": "vip"}, "identify", "wrong_type", "traits"),
        ({"userId": "u", "context": 3}, "page", "wrong_type", "context"),
        ({"userId": "u", "event": "x", "timestamp": "soon"}, "track", "bad_ts", "timestamp"),
        ({"userId": "u", "event": "x", "sentAt": 1e400}, "track", "non_finite", "sentAt"),
        ({"userId": "u"}, None, "missing_field", "type"),
        ({"userId": "u", "type": 3}, None, "wrong_type", "type"),
        ({"userId": "u", "type": "group"}, None, "unknown_action", "type"),
        ({"userId": "u", "type": "alias"}, None, "missing_field", "previousId"),
        ([1, 2], "track", "not_an_object", "body"),
    ],
)
def test_invalid_messages_name_the_field(
    msg: object, kind: str | None, code: str, field: str
) -> None:
    result = invalid(msg, kind)
    assert (result.code, result.field) == (code, field)
    assert field == "body" or f"'{field}'" in result.message
    assert result.reject().code == code


def test_batch_field_names_carry_the_index() -> None:
    result = invalid({"type": "track", "userId": "u"}, None, where="batch[3].")
    assert result.field == "batch[3].event"
    assert "batch[3].event" in result.message
    assert invalid(7, None, where="batch[4].").field == "batch[4]"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
segment_keys = st.sampled_from(
    [
        "type",
        "userId",
        "anonymousId",
        "messageId",
        "event",
        "timestamp",
        "sentAt",
        "properties",
        "traits",
        "context",
        "name",
        "category",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    msg=st.dictionaries(segment_keys, json_values, max_size=8) | json_values,
    kind=st.sampled_from([None, "track", "identify", "page"]),
)
def test_any_input_maps_or_is_invalid_never_raises(msg: object, kind: str | None) -> None:
    result = map_message(msg, kind, received_at=NOW, action_map=ACTIONS)
    assert isinstance(result, Event | Invalid)
    if isinstance(result, Event):
        assert result.contact and result.action and result.ts >= 0


def test_a_message_nested_too_deep_is_invalid_at_any_depth() -> None:
    deep: object = "leaf"
    for _ in range(2000):  # past orjson's 254 levels for writing and Python's recursion limit
        deep = {"k": deep}
    result = invalid(track(properties={"x": deep}), where="batch[2].")
    assert (result.code, result.field) == ("too_deep", "batch[2]")
    assert result.reject().code == "too_deep"
    shallow: object = "leaf"
    for _ in range(MAX_DEPTH - 2):  # message 1, properties 2, the nest 3 to MAX_DEPTH
        shallow = {"k": shallow}
    assert mapped(track(properties={"x": shallow})).props == {"x": shallow}
    assert invalid(track(properties={"x": {"k": shallow}})).code == "too_deep"


def test_identify_with_an_anonymous_id_merges_it_into_the_user() -> None:
    event = mapped({"userId": "u-1", "anonymousId": "anon-9", "traits": {"a": 1}}, "identify")
    assert (event.contact, event.action, event.merge) == ("u-1", "identify", ("anon-9",))
    assert event.to_dict()["merge"] == ["anon-9"]
    # Only the anonymous id, or both the same: an identify with nothing to merge.
    assert mapped({"anonymousId": "anon-9"}, "identify").merge is None
    assert mapped({"userId": "u-1", "anonymousId": "u-1"}, "identify").merge is None
    # A track or page with both ids scores the user and merges nothing.
    assert mapped({"userId": "u-1", "anonymousId": "anon-9", "event": "x"}).merge is None


def test_alias_merges_the_previous_id_into_the_user_id() -> None:
    event = mapped({"userId": "u-1", "previousId": "anon-9"}, "alias")
    assert (event.contact, event.action, event.merge, event.traits) == (
        "u-1",
        "identify",
        ("anon-9",),
        {},
    )
    assert mapped({"type": "alias", "userId": "u-1", "previousId": "anon-9"}, None).merge == (
        "anon-9",
    )
    assert mapped({"userId": "u-1", "previousId": "u-1"}, "alias").merge is None
    assert invalid({"userId": "u-1"}, "alias").field == "previousId"
    assert invalid({"anonymousId": "a", "previousId": "b"}, "alias").field == "userId"
    assert invalid({"userId": "u-1", "previousId": ["x"]}, "alias").code == "wrong_type"
