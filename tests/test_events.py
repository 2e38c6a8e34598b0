"""The event contract (leadscore/events.py): parsing, timestamps and every Reject code."""

from __future__ import annotations

import inspect
import math
import pickle
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from leadscore.events import (
    DEFAULT_MAX_FUTURE,
    MAX_DEPTH,
    MAX_EVENT_BYTES,
    MAX_TS,
    Event,
    Reject,
    format_ts,
    latest_ts,
    parse_event,
    parse_events,
    round4,
    validate_event,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp()
TS = datetime(2026, 11, 22, 10, 0, tzinfo=UTC).timestamp()


def good(**overrides: object) -> dict[str, object]:
    obj: dict[str, object] = {
        "contact": "c-42",
        "action": "page.hit",
        "ts": "2026-11-22T10:00:00Z",
        "id": "evt-1",
        "props": {"url": "https://acme.com/pricing"},
        "traits": {"title": "VP Sales"},
    }
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not ...}


def code(result: Event | Reject) -> str:
    assert isinstance(result, Reject), f"expected a Reject, got {result!r}"
    return result.code


# --- accepted events -----------------------------------------------------------------------


def test_full_event_parses_into_event() -> None:
    e = parse_event(orjson.dumps(good()), NOW)
    assert isinstance(e, Event)
    assert e.contact == "c-42"
    assert e.action == "page.hit"
    assert e.ts == TS
    assert e.id == "evt-1"
    assert e.props == {"url": "https://acme.com/pricing"}
    assert e.traits == {"title": "VP Sales"}


def test_str_input_is_accepted() -> None:
    e = parse_event(orjson.dumps(good()).decode(), NOW)
    assert isinstance(e, Event) and e.ts == TS


def test_optional_fields_default() -> None:
    e = parse_event(b'{"contact": "c", "action": "page.hit"}', NOW)
    assert isinstance(e, Event)
    assert e.ts == NOW  # missing ts -> now
    assert e.id is None
    assert e.props == {}
    assert e.traits is None


def test_null_ts_props_and_traits_mean_missing() -> None:
    e = validate_event(good(ts=None, props=None, traits=None, id=None), NOW)
    assert isinstance(e, Event)
    assert (e.ts, e.props, e.traits, e.id) == (NOW, {}, None, None)


def test_integer_id_becomes_text() -> None:
    e = validate_event(good(id=1234), NOW)
    assert isinstance(e, Event) and e.id == "1234"


def test_event_to_dict_round_trips() -> None:
    e = validate_event(good(), NOW)
    assert isinstance(e, Event)
    again = validate_event(e.to_dict(), NOW)
    assert again == e


# --- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-22T10:00:00Z",
        "2026-11-22T10:00:00+00:00",
        "2026-11-22T11:00:00+01:00",
        "2026-11-22T05:00:00-05:00",
        "2026-11-22T10:00:00.000Z",
        TS,
        int(TS),
        TS * 1000,  # milliseconds
        int(TS * 1000),
    ],
)
def test_timestamp_forms(ts: object) -> None:
    e = validate_event(good(ts=ts), NOW)
    assert isinstance(e, Event), e
    assert e.ts == pytest.approx(TS, abs=1e-6)


def test_fractional_seconds_and_milliseconds_are_kept() -> None:
    e = validate_event(good(ts="2026-11-22T10:00:00.250Z"), NOW)
    assert isinstance(e, Event) and e.ts == pytest.approx(TS + 0.25)
    e = validate_event(good(ts=TS * 1000 + 250), NOW)
    assert isinstance(e, Event) and e.ts == pytest.approx(TS + 0.25)


def test_milliseconds_threshold_is_1e11() -> None:
    below = validate_event(good(ts=99_999_999_999), NOW)
    assert isinstance(below, Event) and below.ts == 99_999_999_999
    at = validate_event(good(ts=100_000_000_000), NOW)
    assert isinstance(at, Event) and at.ts == 100_000_000


@pytest.mark.parametrize("ts", ["2026-11-22T10:00:00", "2026-03-02 09:00:00", "2026-11-22"])
def test_text_timestamp_without_a_time_zone_is_refused_with_what_to_add(ts: str) -> None:
    for result in (
        validate_event(good(ts=ts), NOW),
        parse_event(orjson.dumps(good(ts=ts)), NOW),
        parse_events([orjson.dumps(good(ts=ts))], NOW)[0],
    ):
        assert isinstance(result, Reject) and result.code == "bad_ts"
        assert "no time zone" in result.detail and "add Z" in result.detail
        assert "offset" in result.detail


@pytest.mark.parametrize("ts", ["2026-11-22T10:00:00Z", "2026-11-22T11:00:00+01:00"])
def test_text_timestamp_with_a_time_zone_is_read_in_it(ts: str) -> None:
    e = parse_events([orjson.dumps(good(ts=ts))], NOW)[0]
    assert isinstance(e, Event) and e.ts == TS


@pytest.mark.parametrize(
    "ts", ["2099-01-01T00:00:00Z", 4070908800, 4070908800000, "2026-11-22T12:05:00.001Z"]
)
def test_a_time_past_the_tolerance_is_in_the_future(ts: object) -> None:
    latest = latest_ts(NOW)  # 5 minutes past NOW by default
    assert latest == NOW + DEFAULT_MAX_FUTURE == NOW + 300
    for result in (
        validate_event(good(ts=ts), NOW, latest=latest),
        parse_event(orjson.dumps(good(ts=ts)), NOW, latest),
        parse_events([orjson.dumps(good(ts=ts))], NOW, latest)[0],
    ):
        assert isinstance(result, Reject) and result.code == "bad_ts", result
        assert "in the future" in result.detail
        assert format_ts(latest) in result.detail


@pytest.mark.parametrize("ts", ["2026-11-22T12:05:00Z", NOW + 300, (NOW - 86400) * 1000])
def test_a_time_within_the_tolerance_is_accepted(ts: object) -> None:
    latest = latest_ts(NOW)
    for result in (
        validate_event(good(ts=ts), NOW, latest=latest),
        parse_event(orjson.dumps(good(ts=ts)), NOW, latest),
        parse_events([orjson.dumps(good(ts=ts))], NOW, latest)[0],
    ):
        assert isinstance(result, Event), result


def test_without_a_limit_the_future_is_accepted() -> None:
    e = parse_events([orjson.dumps(good(ts="2099-01-01T00:00:00Z"))], NOW)[0]
    assert isinstance(e, Event) and e.ts == datetime(2099, 1, 1, tzinfo=UTC).timestamp()


def test_latest_ts_never_passes_what_rfc3339_can_write() -> None:
    assert latest_ts(MAX_TS, 1e9) == MAX_TS


def test_zero_epoch_is_valid() -> None:
    e = validate_event(good(ts=0), NOW)
    assert isinstance(e, Event) and e.ts == 0.0


@pytest.mark.parametrize("ts", ["yesterday", "2026-13-01T00:00:00Z", "", "10:00", "NaN"])
def test_bad_text_timestamp(ts: str) -> None:
    assert code(validate_event(good(ts=ts), NOW)) == "bad_ts"


def test_negative_epoch_is_bad_ts() -> None:
    assert code(validate_event(good(ts=-1), NOW)) == "bad_ts"


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf])
def test_non_finite_timestamp(ts: float) -> None:
    assert code(validate_event(good(ts=ts), NOW)) == "non_finite"


def test_nan_literal_in_json_is_invalid_json() -> None:
    raw = b'{"contact": "c", "action": "page.hit", "ts": NaN}'
    assert code(parse_event(raw, NOW)) == "invalid_json"
    raw = b'{"contact": "c", "action": "page.hit", "ts": Infinity}'
    assert code(parse_event(raw, NOW)) == "invalid_json"


@pytest.mark.parametrize("ts", [True, False])
def test_boolean_timestamp_is_not_a_number(ts: bool) -> None:
    assert code(validate_event(good(ts=ts), NOW)) == "wrong_type"


@pytest.mark.parametrize("ts", [[1], {"s": 1}])
def test_structured_timestamp_is_wrong_type(ts: object) -> None:
    assert code(validate_event(good(ts=ts), NOW)) == "wrong_type"


def test_format_ts_is_rfc3339_utc_millis() -> None:
    assert format_ts(0) == "1970-01-01T00:00:00.000Z"
    assert format_ts(TS + 0.25) == "2026-11-22T10:00:00.250Z"
    e = validate_event(good(ts=format_ts(TS + 0.125)), NOW)
    assert isinstance(e, Event) and e.ts == pytest.approx(TS + 0.125)


# --- rejects -------------------------------------------------------------------------------


def test_invalid_json() -> None:
    assert code(parse_event(b'{"contact": "c", ', NOW)) == "invalid_json"
    assert code(parse_event(b"", NOW)) == "invalid_json"
    assert code(parse_event(b"\xff\xfe", NOW)) == "invalid_json"


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"event"', b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert code(parse_event(raw, NOW)) == "not_an_object"


@pytest.mark.parametrize("field", ["contact", "action"])
def test_missing_field(field: str) -> None:
    result = validate_event(good(**{field: ...}), NOW)
    assert code(result) == "missing_field"
    assert isinstance(result, Reject) and field in result.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("contact", 42),
        ("contact", True),
        ("contact", ["c"]),
        ("contact", ""),
        ("contact", "x" * 257),
        ("action", 7),
        ("action", ""),
        ("action", False),
        ("id", 1.5),
        ("id", True),
        ("id", {"a": 1}),
        ("props", "url=x"),
        ("props", [1, 2]),
        ("traits", "VP"),
        ("traits", [1]),
    ],
)
def test_wrong_type(field: str, value: object) -> None:
    result = validate_event(good(**{field: value}), NOW)
    assert code(result) == "wrong_type"
    assert isinstance(result, Reject) and field in result.detail


def test_contact_of_256_characters_is_fine() -> None:
    assert isinstance(validate_event(good(contact="x" * 256), NOW), Event)


def test_too_large() -> None:
    pad = "x" * MAX_EVENT_BYTES
    raw = orjson.dumps(good(props={"pad": pad}))
    assert code(parse_event(raw, NOW)) == "too_large"


def test_just_under_the_limit_is_accepted() -> None:
    base = orjson.dumps(good(props={"pad": ""}))
    pad = "x" * (MAX_EVENT_BYTES - len(base))
    raw = orjson.dumps(good(props={"pad": pad}))
    assert len(raw) == MAX_EVENT_BYTES
    assert isinstance(parse_event(raw, NOW), Event)


def test_too_large_counts_bytes_not_characters() -> None:
    # 30k characters of a 3-byte UTF-8 character is ~90 KiB on the wire
    raw = orjson.dumps(good(props={"pad": "€" * 30_000})).decode()
    assert len(raw) < MAX_EVENT_BYTES < len(raw.encode())
    assert code(parse_event(raw, NOW)) == "too_large"


def test_validate_event_accepts_the_documented_size_argument() -> None:
    # ARCHITECTURE.md: validate_event(obj, now, size=0), for already decoded objects (HTTP)
    assert "size" in inspect.signature(validate_event).parameters
    result = validate_event(good(), NOW, size=MAX_EVENT_BYTES + 1)  # type: ignore[call-arg]
    assert code(result) == "too_large"
    assert isinstance(validate_event(good(), NOW, size=100), Event)  # type: ignore[call-arg]


def test_reject_reason() -> None:
    r = Reject("bad_ts", "field 'ts' is not RFC 3339")
    assert r.reason == "bad_ts: field 'ts' is not RFC 3339"
    assert r == Reject("bad_ts", "field 'ts' is not RFC 3339")
    assert r != Reject("bad_ts", "other")


def test_documented_codes_that_events_py_produces() -> None:
    # `unknown_action` and `duplicate` are decided with the rules / state (Rules.is_known,
    # Engine.apply -> Duplicate); every other code comes from parse_event / validate_event.
    seen = {
        code(parse_event(b"x" * (MAX_EVENT_BYTES + 1), NOW)),
        code(parse_event(b"{", NOW)),
        code(parse_event(b"[]", NOW)),
        code(validate_event({"action": "a"}, NOW)),
        code(validate_event(good(contact=1), NOW)),
        code(validate_event(good(ts="soon"), NOW)),
        code(validate_event(good(ts=math.nan), NOW)),
        code(validate_event(good(props=nested(MAX_DEPTH)), NOW)),
    }
    assert seen == {
        "too_large",
        "invalid_json",
        "not_an_object",
        "missing_field",
        "wrong_type",
        "bad_ts",
        "non_finite",
        "too_deep",
    }


# --- every accepted timestamp must be usable downstream -------------------------------------


@pytest.mark.parametrize(
    "ts",
    [
        1e20,  # "milliseconds" -> 1e17 s, year ~3 billion
        1e300,
        "9999-12-31T23:59:59-01:00",  # year 10000 in UTC
        "0001-01-01T00:00:00+01:00",  # year 0 in UTC
    ],
)
def test_accepted_timestamps_can_be_rendered(ts: object) -> None:
    # Every sink and the read model render `at` / `updated_at` with format_ts: an event the
    # contract accepts must not crash them later. Either reject it (bad_ts) or render it.
    result = validate_event(good(ts=ts), NOW)
    if isinstance(result, Event):
        format_ts(result.ts)
    else:
        assert result.code == "bad_ts"


def test_pre_1970_text_is_rejected_like_negative_numbers() -> None:
    # -1 as a number is bad_ts ("negative"); the same instant as text should be too
    assert code(validate_event(good(ts="1969-12-31T23:59:59Z"), NOW)) == "bad_ts"


def test_huge_integer_timestamp_is_a_reject_not_an_exception() -> None:
    # validate_event takes already-decoded objects (e.g. stdlib json gives unbounded ints)
    assert code(validate_event(good(ts=10**400), NOW)) in {"bad_ts", "non_finite"}


# --- format_ts: the cached fast path renders exactly what datetime does -----------------------


def reference_format_ts(ts: float) -> str:
    """format_ts as it was: one datetime per call (the fast path must match it to the byte)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def outcome(fn: object, ts: float) -> str:
    try:
        return fn(ts)  # type: ignore[operator,no-any-return]
    except (ValueError, OverflowError, OSError) as exc:
        return f"raises {type(exc).__name__}"


def near_half(second: int, micros: int, way: int) -> float:
    """A time a hair from a half-microsecond, where rounding to microseconds decides."""
    ts = second + (micros + 0.5) / 1e6
    return math.nextafter(ts, math.inf * way) if way else ts


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.floats(),  # anything: NaN, infinities, negatives, huge values
        st.floats(min_value=0, max_value=MAX_TS),
        st.floats(min_value=0, max_value=4e9),  # the years we actually see
        st.builds(
            near_half,
            st.integers(0, int(MAX_TS)),
            st.integers(0, 999_999),
            st.sampled_from([-1, 0, 1]),
        ),
        st.integers(-(2**40), 2**40).map(float),
        st.integers(-(2**40), 2**40),
    )
)
@example(0.0)
@example(-0.0)
@example(0.0005)
@example(0.9999995)
@example(59.9999996)
@example(3599.9999999)
@example(MAX_TS)
@example(MAX_TS + 0.5)
@example(math.nextafter(MAX_TS, 0))
@example(5e-324)
@example(-1e-300)
def test_format_ts_matches_datetime_exactly(ts: float) -> None:
    assert outcome(format_ts, ts) == outcome(reference_format_ts, ts)


def test_format_ts_is_right_across_many_hours() -> None:
    # Enough distinct hours to fill and clear the hour cache: every rendering still matches.
    for hour in range(0, 2_000_000, 97):
        ts = hour * 3600.0 + 1234.5678
        assert format_ts(ts) == reference_format_ts(ts)


def test_format_ts_repeats_and_alternations_match() -> None:
    # format_ts remembers its last rendering: repeats, alternations and int/float twins of one
    # instant must still render exactly what datetime does.
    for ts in [5.0, 5.0, 5, 6.25, 5.0, 6.25, 6.25, -0.0, 0.0, 0, 1793491372.06, 1793491372.06]:
        assert format_ts(ts) == reference_format_ts(ts)


# --- round4: round(x, 4) without the decimal round trip --------------------------------------


def near_half_4(whole: int, way: int) -> float:
    """A value within an ulp of a half of the 4th decimal, where rounding decides."""
    x = (whole + 0.5) / 10000
    return math.nextafter(x, math.inf * way) if way else x


@settings(max_examples=4000, deadline=None)
@given(
    st.one_of(
        st.floats(),
        st.floats(min_value=-1000, max_value=1000),
        st.floats(min_value=-1e9, max_value=1e9),
        st.builds(near_half_4, st.integers(-(10**12), 10**12), st.sampled_from([-1, 0, 1])),
        st.integers(-(10**9), 10**9).map(lambda n: n / 10**5),
    )
)
@example(0.0)
@example(-0.0)
@example(-0.00004)
@example(0.00005)
@example(-0.00005)
@example(0.00015)
@example(1e8)
@example(99999999.99995)
@example(1e-300)
def test_round4_matches_round_exactly(x: float) -> None:
    expected = round(x, 4)
    got = round4(x)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert orjson.dumps(got) == orjson.dumps(expected)  # the sign of zero included
        assert got == expected


# --- parse_events and parse_event: the inlined checks give exactly what the checks did -------

_FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(
        [
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00.123Z",
            "2026-11-22T10:00:00+02:00",
            "2026-11-22T10:00:00",
            "1969-12-31T23:59:59Z",
            "9999-12-31T23:59:59.999Z",
            "2026-02-30T10:00:00Z",
            "x" * 300,
            "c-42",
            "page.hit",
        ]
    ),
    st.lists(st.integers(-5, 5), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(-5, 5), max_size=2),
)


def event_line(fields: dict[str, object], drop: list[str], form: int) -> bytes | str:
    obj = {k: v for k, v in good(**fields).items() if k not in drop}
    raw = orjson.dumps(obj)
    if form == 1:
        return raw.decode()  # text input
    if form == 2:
        return raw[: len(raw) // 2]  # truncated JSON
    if form == 3:
        return orjson.dumps([obj])  # not an object
    if form == 4:
        return raw[:-1] + b',"pad":"' + b"y" * MAX_EVENT_BYTES + b'"}'  # too large
    return raw


def reference_parse_event(raw: bytes | str, now: float, latest: float = MAX_TS) -> Event | Reject:
    """parse_event as it was: size, orjson, then validate_event's checks one by one."""
    size = len(raw) if type(raw) is bytes else len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_EVENT_BYTES:
        return Reject("too_large", f"event is {size} bytes, the limit is {MAX_EVENT_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit"):
            return Reject("too_deep", f"the event nests more than {MAX_DEPTH} levels deep")
        return Reject("invalid_json", str(exc))
    return validate_event(obj, now, latest=latest)


def same(a: Event | Reject, b: Event | Reject) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, Reject):
        return a == b
    assert isinstance(b, Event)
    return repr(a) == repr(b) and a.to_dict() == b.to_dict() and type(a.ts) is type(b.ts)


@settings(max_examples=600, deadline=None)
@given(
    st.lists(
        st.builds(
            event_line,
            st.dictionaries(
                st.sampled_from(["contact", "action", "ts", "id", "props", "traits"]),
                _FIELD_VALUES,
                max_size=3,
            ),
            st.lists(st.sampled_from(["contact", "action", "ts", "id", "props", "traits"])),
            st.sampled_from([0, 0, 0, 0, 1, 2, 3, 4]),
        ),
        max_size=6,
    ),
    st.sampled_from([MAX_TS, TS, NOW + 300]),
)
def test_parse_events_matches_parse_event(lines: list[bytes | str], latest: float) -> None:
    batch = parse_events(lines, NOW, latest)
    assert len(batch) == len(lines)
    for raw, got in zip(lines, batch, strict=True):
        expected = reference_parse_event(raw, NOW, latest)
        assert same(got, expected), raw[:200]
        assert same(parse_event(raw, NOW, latest), expected), raw[:200]


def test_parse_events_reads_generated_lines_like_parse_event() -> None:
    from leadscore.generate import generate_events

    lines = list(generate_events(300, 5000, 3, malformed_rate=0.02))
    for raw, got in zip(lines, parse_events(lines, NOW), strict=True):
        assert same(got, reference_parse_event(raw, NOW))
        assert same(parse_event(raw, NOW), got)


@settings(max_examples=100, deadline=None)
@given(
    event_id=st.none() | st.text(max_size=5),
    props=st.none() | st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3)),
    traits=st.none() | st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
)
def test_an_event_survives_pickling(
    event_id: str | None, props: dict[str, object] | None, traits: dict[str, object] | None
) -> None:
    # How events travel between the processes of one Bytewax cluster.
    event = Event("c-1", "page.hit", 1.5, event_id, props, traits)
    back = pickle.loads(pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL))
    assert type(back) is Event
    assert (back.contact, back.action, back.ts, back.id, back.props, back.traits) == (
        "c-1",
        "page.hit",
        1.5,
        event_id,
        props or {},
        traits,
    )


# --- nesting depth ----------------------------------------------------------------------


def nested(levels: int, kinds: str = "da") -> object:
    """``levels`` containers one inside the other, alternating dict and list by ``kinds``."""
    value: object = "leaf"
    for i in range(levels):
        value = {"k": value} if kinds[i % len(kinds)] == "d" else [value]
    return value


def test_depth_up_to_the_limit_is_accepted_one_more_is_too_deep() -> None:
    # The event object is level 1 and props level 2: props may hold MAX_DEPTH - 1 levels.
    fits = good(props=nested(MAX_DEPTH - 1))
    deep = good(props=nested(MAX_DEPTH))
    assert isinstance(validate_event(fits, NOW), Event)
    assert code(validate_event(deep, NOW)) == "too_deep"
    lines = [
        orjson.dumps(fits),
        orjson.dumps(deep),
        orjson.dumps(good(traits={"t": nested(MAX_DEPTH)})),
    ]
    assert isinstance(parse_event(lines[0], NOW), Event)
    assert code(parse_event(lines[1], NOW)) == "too_deep"
    assert code(parse_event(lines[1].decode(), NOW)) == "too_deep"
    assert [type(r).__name__ for r in parse_events(lines, NOW)] == ["Event", "Reject", "Reject"]
    assert {code(r) for r in parse_events(lines[1:], NOW)} == {"too_deep"}


@pytest.mark.parametrize("levels", [253, 254, 300, 1023, 1100, 5000])
def test_any_depth_is_too_deep_never_an_exception(levels: int) -> None:
    # 253+ levels broke re-encoding (orjson stops at 254), 1024+ broke decoding.
    raw = b'{"contact":"c","action":"page.hit","props":{"x":' + b"[" * levels
    raw += b"1" + b"]" * levels + b"}}"
    assert code(parse_event(raw, NOW)) == "too_deep"
    assert [code(r) for r in parse_events([raw, raw.decode()], NOW)] == ["too_deep"] * 2


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    raw = orjson.dumps(good(props={"json": "[" * 200 + "{" * 200}))
    assert isinstance(parse_event(raw, NOW), Event)
    assert isinstance(parse_events([raw], NOW)[0], Event)


@settings(max_examples=200, deadline=None)
@given(levels=st.integers(1, 1200), kinds=st.sampled_from(["d", "a", "da", "dda"]))
def test_depth_is_judged_alike_by_every_parser(levels: int, kinds: str) -> None:
    line = b'{"contact":"c","action":"page.hit","props":{"p":'
    inner = nested(levels, kinds)
    if levels < 250:
        line += orjson.dumps(inner) + b"}}"
    else:  # beyond what orjson.dumps writes: build the text by hand
        opens = "".join('{"k":' if kinds[i % len(kinds)] == "d" else "[" for i in range(levels))
        closes = "".join(
            "}" if kinds[i % len(kinds)] == "d" else "]" for i in reversed(range(levels))
        )
        line += (opens + '"leaf"' + closes).encode() + b"}}"
    expected_deep = levels + 2 > MAX_DEPTH  # event 1, props 2, then the nest
    got = parse_event(line, NOW)
    assert (isinstance(got, Reject) and got.code == "too_deep") == expected_deep
    assert isinstance(got, Event) != expected_deep
    assert same(parse_events([line], NOW)[0], got)
    assert same(reference_parse_event(line, NOW), got)


# --------------------------------------------------------------------------- RFC 3339 by hand


def reference_seconds(text: str) -> float | None:
    """What parse_ts took before utc_text_seconds: fromisoformat, then an aware timestamp."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt.timestamp() if dt.tzinfo is not None else None


@settings(max_examples=3000, deadline=None)
@given(
    st.datetimes(min_value=datetime(1969, 12, 25), max_value=datetime(2200, 1, 10)),
    st.booleans(),
)
@example(datetime(1970, 1, 1), False)
@example(datetime(2199, 12, 31, 23, 59, 59, 999000), True)
@example(datetime(2000, 2, 29, 12), True)
@example(datetime(2100, 2, 28, 23, 59, 59), False)
def test_usual_rfc3339_text_is_read_by_hand_to_the_bit(when: datetime, millis: bool) -> None:
    from leadscore.events import parse_ts, utc_text_seconds

    text = when.isoformat(timespec="milliseconds" if millis else "seconds") + "Z"
    expected = reference_seconds(text)
    assert expected is not None
    got = utc_text_seconds(text)
    if 1970 <= when.year <= 2199:
        assert got == expected and math.copysign(1.0, got) == 1.0, text
    else:
        assert got == -1.0, text  # left to the reference reading
    ts = parse_ts(text, NOW, MAX_TS)
    assert ts == expected if expected >= 0 else type(ts) is Reject


SHAPES = st.text(alphabet="0123456789-T:.Zt +\u0663", min_size=19, max_size=25)


@settings(max_examples=4000, deadline=None)
@given(
    st.one_of(
        SHAPES,
        st.datetimes()
        .map(lambda d: d.isoformat() + "Z")
        .flatmap(
            lambda text: st.integers(0, len(text) - 1).flatmap(
                lambda i: st.sampled_from("0123456789-T:.Zx\u0663").map(
                    lambda c: text[:i] + c + text[i + 1 :]
                )
            )
        ),
    )
)
@example("2025-02-29T10:00:00Z")  # not a leap year
@example("2024-13-01T10:00:00Z")
@example("2024-04-31T10:00:00Z")
@example("2024-04-30T24:00:00Z")
@example("2024-04-30T23:60:00Z")
@example("2024-04-30T23:59:60Z")
@example("2024-04-30T23:59:59.\u0663\u0663\u0663Z")  # Arabic-Indic digits: isdigit, not ASCII
@example("2024-04-30t23:59:59Z")
@example("2024-04-30 23:59:59Z")
@example("2024-00-10T23:59:59Z")
@example("2024-01-00T23:59:59Z")
@example("2000-01-01T00:00:0:Z")  # a field that is not digits (hypothesis found it)
def test_text_read_by_hand_is_the_reference_or_left_to_it(text: str) -> None:
    """Any other text gives -1.0 (the reference reads it); what it reads, it reads alike."""
    from leadscore.events import parse_ts, utc_text_seconds

    got = utc_text_seconds(text)
    expected = reference_seconds(text)
    if got != -1.0:
        assert got == expected, text
    # and parse_ts as a whole decides as the reference: the same time or the same refusal
    ts = parse_ts(text, NOW, MAX_TS)
    if expected is None or not 0 <= expected <= MAX_TS:
        assert type(ts) is Reject, text
    else:
        assert ts == expected, text
