"""Output records written as JSON without orjson (compiled) are orjson's bytes, exactly.

Compiled, ``leadscore.records.effect_line`` and ``dump_line`` write a record's JSON straight
into a C buffer; everything downstream (files, Redis streams, ``explain``) reads those bytes,
so they must be the ones ``orjson.dumps`` wrote before, for any value a user controls (contact
ids, rule and trigger names, reasons, traits) and any float the engine makes. Interpreted, both
functions are orjson itself, and these tests check that too.
"""

from __future__ import annotations

import math
import random
import struct
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from leadscore.engine import (
    Duplicate,
    Engine,
    PointChange,
    SegmentChanged,
    StageChanged,
    TagChanged,
    TriggerFired,
)
from leadscore.events import Event, format_ts, parse_event
from leadscore.generate import generate_events
from leadscore.merge import Merged
from leadscore.records import dump_line, effect_line, effect_record, time_json, view_line
from leadscore.rules import load_rules

# Strings a user can put in an id or a name: controls, quotes, backslashes, DEL, non-ASCII of
# every width, lone surrogates (which orjson refuses: so must the writer).
hostile = st.text(
    alphabet=st.one_of(
        st.characters(codec=None),
        st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\u2028", "\ud800", "é", "😀"]),
    ),
    max_size=40,
)
floats = st.one_of(
    st.floats(),  # NaN, infinities, subnormals, huge and tiny
    st.floats(min_value=-1e12, max_value=1e12),
    st.integers(min_value=-(10**15), max_value=10**15).map(lambda q: q / 10000),
    st.sampled_from([0.0, -0.0, 1e-4, -1e-4, 9.99e-5, 1e11, 1e16, 9.999999999999998e15, 0.1]),
)
# Times: any format_ts writes (up to the end of 9999), half-microsecond and millisecond edges,
# leap days; and ones the compiled writer must leave to format_ts (negative, NaN, past 9999).
times = st.one_of(
    st.floats(min_value=0, max_value=4e9),
    st.floats(min_value=0, max_value=253402300799.0),
    st.integers(min_value=0, max_value=253402300799 * 10**6).map(lambda us: us / 1e6),
    st.integers(min_value=0, max_value=2 * 10**15).map(lambda k: (k + 0.5) / 1e6),
    st.sampled_from(
        [
            0.0,
            1e-7,
            0.0005,
            0.9999995,
            951782400.0,
            4107542399.9995,
            253402300799.0,
            253402300798.9999996,
        ]
    ),
)
beyond = st.sampled_from([253402300799.0000305, -1.0, -0.0, float("nan"), float("inf"), 1e12])
numbers = st.one_of(floats, st.integers(min_value=-(2**70), max_value=2**70), st.booleans())
scalars = st.one_of(st.none(), hostile, numbers)


def same(value: Any, line: bytes | None, expected: Any) -> None:
    assert line == expected, value


def dumps_or_error(value: Any) -> bytes | type[BaseException]:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return type(exc)


def line_or_error(fn: Any, *args: Any) -> bytes | type[BaseException] | None:
    try:
        return fn(*args)  # type: ignore[no-any-return]
    except (TypeError, orjson.JSONEncodeError) as exc:
        return type(exc)


@settings(max_examples=300, deadline=None)
@given(st.recursive(scalars, lambda inner: st.lists(inner) | st.dictionaries(hostile, inner)))
def test_dump_line_writes_what_orjson_writes(value: Any) -> None:
    assert line_or_error(dump_line, value) == dumps_or_error(value)


@settings(max_examples=400, deadline=None)
@given(floats)
@example(float("nan"))
@example(5e-324)
@example(123456789012.3456)
@example(99999999999.9999)
def test_floats_are_orjsons(x: float) -> None:
    assert dump_line(x) == orjson.dumps(x), x
    assert dump_line([x, -x]) == orjson.dumps([x, -x])


def from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]  # type: ignore[no-any-return]


# Every double: any bit pattern (subnormals, huge, NaNs, negative zero), the writer's own range
# (1e-4 <= |x| < 1e16, its shortest-digits path) at full precision, short decimals, integers,
# powers of two and their neighbours (where the gap below is half the gap above).
all_doubles = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1).map(from_bits),
    st.floats(min_value=1e-4, max_value=1e16),
    st.floats(min_value=-1e16, max_value=-1e-4),
    st.builds(lambda x, e: x * 2.0**-e, st.floats(0, 1000), st.floats(0, 30)),
    st.builds(lambda d, e: float(f"{d}e{e}"), st.integers(1, 10**17), st.integers(-22, 16)),
    st.integers(-(2**63), 2**63).map(float),
    st.builds(
        lambda e, step: math.nextafter(2.0**e, step),
        st.integers(-20, 60),
        st.sampled_from([0.0, math.inf]),
    ),
)


@settings(max_examples=3000, deadline=None)
@given(all_doubles)
@example(20824041573376.938)  # x 10^3 exactly halfway between two 17-digit candidates
@example(2.0**52)
@example(math.nextafter(2.0**-13, 0.0))
@example(9999999999999998.0)
@example(0.30000000000000004)
def test_every_double_is_orjsons(x: float) -> None:
    """The writer's floats (the shortest digits that read back, compiled) are orjson's."""
    assert dump_line(x) == orjson.dumps(x), x
    assert dump_line({"s": [x, -x, 0.5]}) == orjson.dumps({"s": [x, -x, 0.5]}), x


def test_many_doubles_in_one_record_are_orjsons() -> None:
    """200k doubles, those of the writer's range in one record: orjson's bytes."""
    rng = random.Random(19)
    xs = [rng.uniform(-1.0, 1.0) * 10.0 ** rng.uniform(-5.0, 17.0) for _ in range(100_000)]
    xs += [from_bits(rng.getrandbits(64)) for _ in range(50_000)]
    xs += [round(rng.uniform(0.0, 1e4), rng.randint(0, 8)) for _ in range(50_000)]
    # One value the writer leaves to orjson (NaN, inf, |x| < 1e-4 or >= 1e16, which orjson
    # writes in its own forms) would hand orjson the whole record: those are checked alone.
    ours = [x for x in xs if x == 0.0 or 1e-4 <= abs(x) < 1e16]
    assert len(ours) > 140_000
    assert dump_line(ours) == orjson.dumps(ours)
    for x in xs[::50]:
        assert dump_line(x) == orjson.dumps(x), x


@settings(max_examples=3000, deadline=None)
@given(st.one_of(times, beyond))
def test_times_are_format_ts_text(ts: float) -> None:
    line = time_json(ts)
    if line is not None:  # compiled, and a time it writes itself
        assert line == orjson.dumps(format_ts(ts)), ts
    else:  # interpreted, or a time left to format_ts (out of its range)
        assert not is_compiled() or not 0 <= ts <= 253402300799.0 or ts == -0.0


def is_compiled() -> bool:
    return time_json(1.0) is not None


# Times in a row as a run writes them: an event's records share its time, events crowd into
# a day. Steps that keep the second, the millisecond or the day, cross midnight, a month's or
# a year's end (leap days), go back, repeat, or leave the writer's range.
steps = st.sampled_from(
    [
        0.0,
        0.0,
        1e-3,
        4e-4,
        5e-7,
        -5e-7,
        1.0,
        -1.0,
        59.9995,
        3600.0,
        86399.9995,
        86400.0,
        -86400.0,
        86400.0 * 28,
        86400.0 * 365,
        -0.25,
        1e9,
    ]
)
edges = st.sampled_from(
    [
        0.0,  # the epoch
        951782399.9995,  # 1999-02-28T23:59:59.9995 -> 2000-02-29 (a leap day)
        951868799.9999995,  # the end of 2000-02-29, rounded into 03-01
        946684799.9995,  # 1999-12-31T23:59:59.9995 -> 2000-01-01
        1709164800.0,  # 2024-02-29
        4107542399.9995,  # the end of 2100-02-28 (2100 is not a leap year)
        253402300799.0,  # the last instant format_ts writes in C
        1.5,
    ]
)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(times, edges), st.lists(steps, max_size=12))
def test_times_in_a_row_are_format_ts_text(start: float, moves: list[float]) -> None:
    """The writer keeps the last time's and the last day's text: each time of a sequence
    (repeats, the same second, the next day, back again) is format_ts's text all the same."""
    ts = start
    for move in [0.0, *moves]:
        ts += move
        line = time_json(ts)
        if line is not None:
            assert line == orjson.dumps(format_ts(ts)), (start, moves, ts)
        else:
            assert not is_compiled() or not 0 <= ts <= 253402300799.0, ts


def test_each_escape_at_each_place_is_orjsons() -> None:
    """The writer looks for what needs escaping eight bytes at a time: each such character
    (and its neighbours in byte value), at every place of texts of 1-40 characters, ASCII or
    not, is written as orjson writes it."""
    specials = ['"', "\\", "\x00", "\x1f", "\x20", "\x21", "\x23", "\x5b", "\x5d", "\x7f", "\n"]
    for fill in ("a", "é", "😀"):
        for n in range(1, 41):
            for i in range(n):
                for c in specials:
                    text = fill * i + c + fill * (n - i - 1)
                    assert dump_line(text) == orjson.dumps(text), (fill, n, i, c)
                    assert dump_line([text, c]) == orjson.dumps([text, c])


def test_deep_and_odd_values_are_left_to_orjson() -> None:
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    assert dump_line(deep) == orjson.dumps(deep)
    assert line_or_error(dump_line, {1: "a"}) == dumps_or_error({1: "a"})
    assert line_or_error(dump_line, 2**64) == dumps_or_error(2**64)
    assert dump_line((1, "x", None)) == orjson.dumps((1, "x", None))
    assert line_or_error(dump_line, {"\ud800": 1}) == dumps_or_error({"\ud800": 1})
    assert line_or_error(dump_line, object()) == dumps_or_error(object())
    big = {"k" * 2000: ["v" * 3000] * 3}  # over the writer's first buffer
    assert dump_line(big) == orjson.dumps(big)


def record_bytes(contact: str, effect: Any, action: str | None) -> bytes | type | None:
    try:
        rec = effect_record(contact, effect, action)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return type(exc)
    return None if rec is None else dumps_or_error(rec)


def effects() -> st.SearchStrategy[Any]:
    ts = st.one_of(times, st.integers(min_value=0, max_value=4 * 10**9))
    reasons = st.one_of(st.none(), hostile)

    def points(rule, group, delta, applied, after, event_id, at, capped, reason):  # type: ignore[no-untyped-def]
        change = PointChange(rule, group, delta, applied, after, event_id, at, capped)
        change.reason = reason
        return change

    return st.one_of(
        st.builds(
            points,
            hostile,
            hostile,
            numbers,
            numbers,
            floats,
            st.one_of(st.none(), hostile),
            ts,
            st.booleans(),
            reasons,
        ),
        st.builds(
            TriggerFired,
            hostile,
            floats,
            ts,
            st.lists(st.one_of(hostile, st.dictionaries(hostile, scalars))),
            hostile,
        ),
        st.builds(StageChanged, hostile, st.one_of(st.none(), hostile), ts, hostile),
        st.builds(SegmentChanged, hostile, st.booleans(), ts, hostile),
        st.builds(TagChanged, hostile, st.booleans(), ts, hostile),
        st.builds(Merged, hostile, ts),
        st.builds(Duplicate, hostile),
    )


@settings(max_examples=400, deadline=None)
@given(hostile, effects(), st.one_of(st.none(), hostile))
def test_effect_line_is_the_records_orjson_bytes(contact: str, effect: Any, action: Any) -> None:
    assert line_or_error(effect_line, contact, effect, action) == record_bytes(
        contact, effect, action
    )


@pytest.mark.parametrize("x", [1.0, 2.5, 0.1 + 0.2, 1 / 3, 1e15, 12.34567, -7.0])
def test_points_records_as_before(x: float) -> None:
    change = PointChange("r", "g", x, x, x, "e1", 1700000000.0, False)
    assert effect_line("c", change, "page_view") == orjson.dumps(
        effect_record("c", change, "page_view")
    )
    assert not math.isnan(x)


@settings(max_examples=300, deadline=None)
@given(
    hostile,
    st.lists(st.tuples(effects(), st.one_of(st.none(), hostile)), max_size=6),
    st.one_of(times, edges),
    st.lists(steps, min_size=6, max_size=6),
)
def test_records_in_a_row_are_orjsons(
    contact: str, batch: list[tuple[Any, Any]], start: float, moves: list[float]
) -> None:
    """An event's records (one time, or times a step apart), written one after another: the
    bytes orjson writes for each record, whatever the writer kept from the record before."""
    ts = start
    for (effect, action), move in zip(batch, moves, strict=False):
        ts += move
        if hasattr(effect, "at"):
            effect.at = ts
        # Past 9999 format_ts raises ValueError, the same on both paths.
        assert view_or_error(partial(effect_line, contact, effect, action)) == view_or_error(
            partial(record_bytes, contact, effect, action)
        )


# ---------------------------------------------------------------------------- final views

_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _scored_states(rules_file: Path, seed: int) -> tuple[Engine, list[tuple[str, Any]]]:
    """An engine and real contact states: generated events applied, as a run would."""
    rules = load_rules(rules_file)
    engine = Engine(rules)
    states: dict[str, Any] = {}
    for line in generate_events(25, 600, seed):
        event = parse_event(line, 4e9)
        if type(event) is Event and event.action in rules.known_actions:
            state = states.get(event.contact)
            if state is None:
                state = states[event.contact] = engine.new_state()
            engine.apply(state, event)
    return engine, sorted(states.items())


_ENGINES = {
    name: _scored_states(path, 3)
    for name, path in (
        ("examples", _EXAMPLES / "rules.yaml"),
        ("model", _EXAMPLES / "xeducation" / "rules.yaml"),
    )
}


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(sorted(_ENGINES)),
    st.integers(0, 10**6),
    hostile,
    st.one_of(st.none(), times, beyond),
    st.one_of(st.none(), times, beyond),
    st.one_of(st.none(), st.lists(hostile, max_size=3).map(tuple)),
)
@example("examples", 0, "c-1", None, None, None)
@example("examples", 1, "c-1", 0.0, 0.0, ())
def test_final_view_lines_are_the_views_orjson_bytes(
    rules: str, pick: int, contact: str, last: Any, at: Any, names: Any
) -> None:
    """contacts.jsonl's lines: compiled, written without the view's dict (its times in C);
    always the bytes orjson writes for ``Engine.view``, or the same error."""
    engine, states = _ENGINES[rules]
    state = states[pick % len(states)][1]
    kept = (state.last_ts, state.segments, state.tags)
    try:
        if last is not None:
            state.last_ts = last
        if names is not None:
            state.segments = state.tags = names
        assert view_or_error(lambda: view_line(engine, contact, state, at)) == view_or_error(
            lambda: orjson.dumps(engine.view(contact, state, at))
        )
    finally:
        state.last_ts, state.segments, state.tags = kept


def view_or_error(fn: Any) -> bytes | type[BaseException]:
    try:
        return fn()  # type: ignore[no-any-return]
    except Exception as exc:
        return type(exc)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(_ENGINES)),
    st.integers(0, 10**6),
    hostile,
    st.one_of(st.none(), times, beyond),
    st.one_of(st.none(), st.lists(hostile, max_size=3).map(tuple)),
    st.one_of(st.none(), st.dictionaries(hostile, st.lists(numbers, max_size=3), max_size=3)),
)
@example("examples", 0, "c-1", None, None, None)
@example("examples", 1, "c-1", 0.0, (), {})
def test_read_models_are_the_documents_orjson_bytes(
    rules: str, pick: int, contact: str, last: Any, names: Any, groups: Any
) -> None:
    """What the Redis flow stores per dirty contact (``DocumentWriter.encode``): compiled,
    written without the view's and decay's dicts; always the bytes orjson writes for the
    document, or the same error."""
    from leadscore.readmodel import DocumentWriter

    engine, states = _ENGINES[rules]
    writer = DocumentWriter(engine)
    state = states[pick % len(states)][1]
    kept = (state.last_ts, state.segments, state.tags, state.groups)
    try:
        if last is not None:
            state.last_ts = last
        if names is not None:
            state.segments = state.tags = names
        if groups is not None:  # decay's groups: as stored, whatever they hold
            state.groups = {**state.groups, **groups}
        assert view_or_error(lambda: writer.encode(contact, state)) == view_or_error(
            lambda: orjson.dumps(writer.document(contact, state))
        )
    finally:
        state.last_ts, state.segments, state.tags, state.groups = kept
