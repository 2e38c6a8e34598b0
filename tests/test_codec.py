"""A contact state's bytes are msgpack's, exactly, whichever writer made them.

Compiled, ``state.codec.encode`` writes a compiled engine's state with its own C writer
(codec.pxd) instead of building a list for ``msgpack.Packer``: stored states must stay the
bytes msgpack wrote before, so that either build (and an older release) reads what the other
wrote. These tests hold both builds to ``msgpack.packb`` of format 3's list, for any value a
state can hold (ids and labels of any text, traits of any JSON-ish type, counters across
every integer width), and check the bytes decode back to the same state.
"""

from __future__ import annotations

import sys
from array import array
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from leadscore.engine import ContactState, Engine
from leadscore.events import NO_TS, Event, parse_event
from leadscore.generate import generate_events
from leadscore.rules import load_rules
from state import codec
from state.codec import decode, encode

RULES = "examples/rules.yaml"

texts = st.text(
    alphabet=st.one_of(
        st.characters(codec=None),
        st.sampled_from(["\x00", "\x7f", "é", "😀", "\ud800"]),  # a lone surrogate: refused
    ),
    max_size=40,
) | st.text(alphabet="ab", min_size=28, max_size=300)  # across the str8 and str16 headers
# every integer width msgpack has, both signs, and past 64 bits (msgpack's error)
ints = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from(
        [
            0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
            -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63),
        ]
    ),
    st.integers(),
)
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), texts, st.binary(max_size=300))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=17),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(texts, inner, max_size=17),
        st.dictionaries(ints, inner, max_size=3),
    ),
    max_leaves=12,
)
doubles = st.lists(st.floats(), max_size=40).map(lambda xs: array("d", xs))


@st.composite
def states(draw: st.DrawFn) -> ContactState:
    state = ContactState()
    state.groups = draw(st.dictionaries(texts, values, max_size=6))
    state.tracked = tuple(draw(st.lists(texts, max_size=6)))
    state.tracks = array("d", draw(st.lists(st.floats(), max_size=18)))
    rules = draw(st.lists(texts, max_size=4))
    state.windows = tuple(x for rule in rules for x in (rule, draw(doubles)))
    state.triggers = draw(st.dictionaries(texts, ints, max_size=17))
    state.seq = draw(ints)
    state.stage = draw(st.integers(min_value=-(2**63), max_value=2**63 - 1))
    state.segments = tuple(draw(st.lists(texts, max_size=17)))
    state.tags = tuple(draw(st.lists(texts, max_size=4)))
    state.traits = draw(st.dictionaries(texts, values, max_size=6))
    state.fit = tuple(draw(st.lists(texts, max_size=3)))
    state.last_ts = draw(st.floats())
    state.recent_ids = array("I", draw(st.lists(st.integers(0, 2**32 - 1), max_size=20)))
    return state


def reference(state: ContactState) -> bytes:
    """What encode wrote before the C writer: format 3's list through msgpack."""
    windows = state.windows
    return msgpack.packb(  # type: ignore[no-any-return]
        [
            3,
            state.groups,
            state.tracked,
            array("d", state.tracks).tobytes(),
            {windows[i]: windows[i + 1].tolist() for i in range(0, len(windows), 2)} or None,
            state.triggers,
            state.seq,
            state.stage,
            state.segments,
            state.tags,
            state.traits,
            state.fit,
            state.last_ts,
            array("I", state.recent_ids).tobytes(),
        ],
        use_bin_type=True,
    )


def outcome(write: Any, state: ContactState) -> bytes | str:
    try:
        return write(state)  # type: ignore[no-any-return]
    except Exception as exc:  # the same refusal either way (surrogates, ints past 64 bits)
        return type(exc).__name__


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(states())
@example(ContactState())
def test_same_bytes_as_msgpack(state: ContactState) -> None:
    assert outcome(encode, state) == outcome(reference, state)


class Text(str):
    pass


class Number(int):
    pass


@pytest.mark.parametrize(
    "value",
    [Text("x"), Number(7), bytearray(b"ab"), memoryview(b"cd"), {"k": [Text("y")]}, 2**64 - 1],
)
def test_values_left_to_msgpack_keep_its_bytes(value: object) -> None:
    state = ContactState()
    state.traits = {"t": value}
    assert encode(state) == reference(state)


def test_a_hand_built_state_with_ids_as_a_list() -> None:
    state = ContactState()
    state.recent_ids = [1, 2**32 - 1]  # what a test may build: written as uint32s
    assert encode(state) == reference(state)


def test_a_rule_twice_in_windows_is_written_as_the_dict_keeps_it() -> None:
    state = ContactState()
    state.windows = ("r", array("d", [1.0]), "r", array("d", [2.0, 3.0]))
    assert encode(state) == reference(state)


def test_the_engine_states_of_generated_events() -> None:
    """Real states (groups with expiries, trackers, windows, triggers, traits) round-trip,
    as msgpack's bytes."""
    engine = Engine(load_rules(RULES))
    states: dict[str, ContactState] = {}
    for line in generate_events(300, 6000, 11):
        event = parse_event(line, NO_TS)
        if type(event) is not Event or event.action not in engine.rules.known_actions:
            continue
        state = states.get(event.contact)
        if state is None:
            state = states[event.contact] = engine.new_state()
        engine.apply(state, event)
    assert any(s.windows for s in states.values()) and any(s.tracked for s in states.values())
    for state in states.values():
        blob = encode(state)
        assert blob == reference(state)
        assert decode(blob) == state


def test_the_writer_runs_compiled() -> None:
    """The C writer is what a compiled build uses (else these tests only checked msgpack)."""
    compiled = Path(codec.__file__ or "").suffix in (".so", ".pyd")
    expected = compiled and sys.byteorder == "little"
    assert codec.WRITES_IN_C is expected
