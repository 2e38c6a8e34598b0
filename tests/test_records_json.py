"""Output records written as JSON without orjson (compiled) are orjson's bytes, exactly.

Compiled, ``leadscore.records.effect_line`` and ``dump_line`` write a record's JSON straight
into a C buffer; everything downstream (files, Redis streams, ``explain``) reads those bytes,
so they must be the ones ``orjson.dumps`` wrote before, for any value a user controls (contact
ids, rule and trigger names, reasons, traits) and any float the engine makes. Interpreted, both
functions are orjson itself, and these tests check that too.
"""

from __future__ import annotations

import math
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
