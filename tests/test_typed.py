"""Typed decoding (msgspec) gives exactly what the reference parser gives, line for line.

The reference is ``leadscore.events.parse_event`` (orjson, then validate_event's checks).
Events must be equal value for value and type for type (1 and 1.0, -0.0 and 0.0 differ),
rejections equal in code and reason.
"""

from __future__ import annotations

import json
import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from leadscore.events import MAX_EVENT_BYTES, MAX_TS, NO_TS, Event, Reject, latest_ts, parse_event
from leadscore.typed import line_decoder, parse_events

NOW = 1_800_000_000.0


def shape(result: Event | Reject) -> str:
    """What a result is, exactly: repr tells 1 from 1.0, -0.0 from 0.0, str from int."""
    if type(result) is Event:
        return "event " + repr(result.to_dict()) + repr(type(result.ts))
    return "reject " + repr((result.code, result.detail))


# (now, latest): the service's wall clock with the default skew, a replay's (no ts -> NO_TS,
# the partition's clock given later), and no bound but RFC 3339's.
CLOCKS = [(NOW, latest_ts(NOW)), (NO_TS, latest_ts(NOW, 86400.0)), (NOW, MAX_TS)]


# The file flow decodes with its rules' known actions (line_decoder): a line with any other
# action must still come out as the reference says (an event, rejected later as unknown).
KNOWN_DECODE = line_decoder(["a", "page.hit", "identify", "0", "\u00e9"])


def same_as_reference(lines: list[bytes | str]) -> None:
    for now, latest in CLOCKS:
        for decode in (None, KNOWN_DECODE):
            got = parse_events(lines, now, latest, decode=decode)
            assert len(got) == len(lines)
            for raw, result in zip(lines, got, strict=True):
                expected = shape(parse_event(raw, now, latest))
                assert shape(result) == expected, (raw, now, latest, decode)
    # As the file flow parses: each line with a line end, taken as the line stripped of its
    # trailing CR and LF (what the file source handed out before it kept them).
    for end in LINE_ENDS:
        ended = [raw + (end if type(raw) is bytes else end.decode()) for raw in lines]
        got = parse_events(ended, NOW, latest_ts(NOW), ended=True, decode=KNOWN_DECODE)
        for line, result in zip(ended, got, strict=True):
            raw = line.rstrip(b"\r\n") if type(line) is bytes else line.rstrip("\r\n")
            assert shape(result) == shape(parse_event(raw, NOW, latest_ts(NOW))), line


# What a file's line may end with (the flow strips trailing CR and LF), and none at all: the
# last line of a file without a final line end.
LINE_ENDS = [b"\n", b"\r\n", b"\r\r\n", b""]


# Every reject code the contract has, and the unusual inputs msgspec and orjson read
# differently (unknown fields with bad numbers or UTF-8, integers past 64 bits, msgspec's
# laxer datetimes): each must come out as the reference says.
EDGE_LINES: list[bytes | str] = [
    b'{"contact":"c","action":"page.hit","ts":"2026-11-22T10:00:00.123Z","id":"e","props":{}}',
    b'{"contact":"c","action":"page.hit"}',
    b'{"contact":"c","action":"page.hit","ts":null,"id":null,"props":null,"traits":null}',
    b'{"contact":"c","action":"a","pad":"' + b"y" * MAX_EVENT_BYTES + b'"}',  # too_large
    "{" + '"contact":"c","action":"a","pad":"' + "\u00e9" * (MAX_EVENT_BYTES // 2) + '"}',
    b"[1, 2]",  # not_an_object
    b'"text"',
    b'{"contact":"c","action":"a","props":{"x":' + b"[" * 300 + b"]" * 300 + b"}}",  # too_deep
    b'{"contact":"c","action":"a","x":' + b"[" * 2000 + b"]" * 2000 + b"}",  # past orjson's depth
    b'{"contact":"c","action":"a","props":{"x":[[[[1]]]]}}',  # deeper than the struct types
    b'{"action":"a"}',  # missing_field
    b'{"contact":"c"}',
    b'{"contact":5,"action":"a"}',  # wrong_type
    b'{"contact":"","action":"a"}',
    b'{"contact":"' + b"c" * 257 + b'","action":"a"}',
    b'{"contact":"' + "\u00e9".encode() * 256 + b'","action":"a"}',  # 256 characters, 512 bytes
    b'{"contact":"c","action":""}',
    b'{"contact":"c","action":"a","ts":true}',
    b'{"contact":"c","action":"a","ts":[1]}',
    b'{"contact":"c","action":"a","id":7}',  # an integer id becomes text
    b'{"contact":"c","action":"a","id":true}',
    b'{"contact":"c","action":"a","props":[1]}',
    b'{"contact":"c","action":"a","traits":"x"}',
    b'{"contact":"c","action":"a","ts":"yesterday"}',  # bad_ts
    b'{"contact":"c","action":"a","ts":"1969-12-31T23:59:59Z"}',
    b'{"contact":"c","action":"a","ts":-1}',
    b'{"contact":"c","action":"a","ts":99999999999999999999999}',
    b'{"contact":"c","action":"a","ts":-9223372036854775809}',
    b'{"contact":"c","action":"a","ts":1e300}',
    b'{"contact":"c","action":"a","ts":"2026-11-22t10:00:00z"}',  # msgspec's datetime allows it
    b'{"contact":"c","action":"a","ts":"2026-11-22T10:00:00.9999995Z"}',  # and rounds this
    b'{"contact":"c","action":"a","ts":"2026-11-22T10:00:00"}',  # no zone
    b'{"contact":"c","action":"a","ts":"2026-11-22T10:00Z"}',
    b'{"contact":"c","action":"a","ts":1793491372061}',  # milliseconds
    b'{"contact":"c","action":"a","ts":"2099-01-01T00:00:00Z"}',  # in the future
    b'{"contact":"c","action":"a","ts":4070908800}',
    b'{"contact":"c","action":"a","ts":"2027-01-15T08:00:00.000Z"}',  # within a day's skew
    b'{"contact":"c","action":"a","ts":NaN}',  # invalid_json (non_finite cannot come from JSON)
    b'{"contact":"c","action":"a","ts":1e400}',
    b'{"contact":"c","action":"a"',
    b'\xef\xbb\xbf{"contact":"c","action":"a"}',
    b'{"contact":"c\xff","action":"a"}',
    b'{"contact":"c","action":"a","x":1e400}',  # unknown fields msgspec would only skip
    b'{"contact":"c","action":"a","x":"\xff"}',
    b'{"contact":"c","action":"a","x":"\xed\xa0\x80"}',
    b'{"contact":"c","action":"a","props":{"n":99999999999999999999999}}',  # orjson: a float
    b'{"contact":"c","action":"a","props":{"n":-9223372036854775809}}',
    b'{"contact":"c","action":"a","props":{"n":18446744073709551615}}',
    b'{"contact":"c","action":"a","traits":{"n":[{"m":9223372036854775808}]}}',
    b'{"contact":"c","action":"a","props":{"n":1E2,"m":-0.0,"k":-0,"j":0.1e1}}',
    b'{"contact":"c","action":"a","props":{"a":1,"b":2,"a":3}}',  # duplicate keys
    b'{"contact":"x","contact":"c","action":"a"}',
    b'{"contact":5,"contact":"c","action":"a"}',
    b'{"contact":"c","action":"a","props":{"x":"\\ud800"}}',
    b' {"contact":"c","action":"a"} ',
    b'{"contact":"c","action":"a"}\r',  # a line end of its own, and one the flow strips
    b'{"contact":"c","action":"a","pad":"' + b"y" * (MAX_EVENT_BYTES - 37) + b'"}',  # the limit
    b'{"contact":"c","action":"a","pad":"' + b"y" * (MAX_EVENT_BYTES - 36) + b'"}',
    "not bytes",
    '{"contact":"c","action":"a"}',
]


def test_edge_lines_match_the_reference() -> None:
    same_as_reference(EDGE_LINES)
    codes = {r.code for r in parse_events(EDGE_LINES, NOW, latest_ts(NOW)) if type(r) is Reject}
    assert codes >= {
        "too_large",
        "not_an_object",
        "too_deep",
        "missing_field",
        "wrong_type",
        "bad_ts",
        "invalid_json",
    }


def test_non_finite_now_and_accepted_lines_are_events() -> None:
    # non_finite can only come from a number JSON cannot spell: parse_ts's own check.
    events = parse_events([b'{"contact":"c","action":"a"}'], NOW)
    assert type(events[0]) is Event and events[0].ts == NOW


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**64), 2**64),
    st.floats(),  # NaN and infinities: json.dumps writes them, the JSON is then invalid
    st.text(max_size=6),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
_TS = st.one_of(
    _SCALARS,
    st.sampled_from(
        [
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00.123Z",
            "2026-11-22T10:00:00.1234567Z",
            "2026-11-22t10:00:00z",
            "2026-11-22 10:00:00+02:00",
            "2026-11-22T10:00:00",
            "2026-11-22",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "9999-12-31T23:59:59-01:00",
            "2026-02-30T10:00:00Z",
        ]
    ),
    st.integers(-(2**64), 2**64),
    st.floats(min_value=0, max_value=3e14),
)
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "contact": st.one_of(_SCALARS, st.text(min_size=250, max_size=260)),
        "action": _SCALARS,
        "ts": _TS,
        "id": _SCALARS,
        "props": _VALUES,
        "traits": _VALUES,
        "extra": _VALUES,
    },
)


def line_of(fields: dict[str, object], mutation: int, where: int) -> bytes:
    raw = json.dumps(fields, allow_nan=True).encode("utf-8", "surrogatepass")
    if mutation == 1:
        return raw[: where % (len(raw) + 1)]  # cut short
    if mutation == 2:
        cut = where % (len(raw) + 1)
        return raw[:cut] + b"\xff" + raw[cut:]  # invalid UTF-8 somewhere
    return raw


@settings(max_examples=800, deadline=None)
@given(
    st.lists(
        st.builds(line_of, _FIELDS, st.sampled_from([0, 0, 0, 1, 2]), st.integers(0, 500)),
        max_size=8,
    )
)
@example([b'{"contact":"c","action":"a","ts":' + str(2**63).encode() + b"}"])
@example([json.dumps({"contact": "c", "action": "a", "ts": math.inf}).encode()])
def test_typed_parse_matches_the_reference(lines: list[bytes | str]) -> None:
    same_as_reference(lines)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=5))
def test_arbitrary_bytes_match_the_reference(lines: list[bytes | str]) -> None:
    same_as_reference(lines)


def test_the_common_case_never_reaches_the_reference(monkeypatch: object) -> None:
    # The usual lines are decoded by msgspec alone: were they not, this module would be a
    # slower copy of the reference and the tests above could not tell.
    import leadscore.typed as typed

    def refuse(raw: bytes | str, now: float, latest: float = MAX_TS) -> Event | Reject:
        raise AssertionError(f"fell back on {raw!r}")

    monkeypatch.setattr(typed, "parse_event", refuse)  # type: ignore[attr-defined]
    lines: list[bytes | str] = [
        b'{"contact":"c","action":"page.hit","ts":"2026-11-22T10:00:00.123Z","id":"e-1",'
        b'"props":{"url":"https://x.io/a","utm":{"source":"li"},"n":[1,2.5]}}',
        b'{"contact":"c","action":"identify","ts":1793491372061,"traits":{"plan":"pro"}}',
        b'{"contact":"' + "\u00e9".encode() * 256 + b'","action":"a"}',  # the longest contact
    ]
    events = typed.parse_events(lines, NOW)
    assert [type(e) for e in events] == [Event, Event, Event]
    assert len(events[2].contact) == 256
    assert events[0].props["utm"] == {"source": "li"} and events[1].ts == 1793491372.061
    # and with the known actions' decoder, whose action is the very str it was given
    known = ["".join(["page", ".hit"]), "".join(["ident", "ify"]), "a"]  # not interned
    events = typed.parse_events(lines, NOW, decode=typed.line_decoder(known))
    assert [type(e) for e in events] == [Event, Event, Event]
    assert [e.action for e in events] == known and all(
        e.action is name for e, name in zip(events, known, strict=True)
    )
