"""The hot path, per event, against a plain dict update measured in the same session.

Run: ``python -m pytest bench/ --benchmark-only``. Targets (issue #2): apply <= 2.5 µs/event,
packed state <= 500 bytes for a typical contact. Nothing here asserts a time: the summary at
the end prints each figure and its ratio to the baseline, and ``bench/results/hotpath.json``
keeps them.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import yaml

from bench.common import rules_path
from bench.conftest import BASELINE, HotPath, percentiles
from flows.scoring import effect_record
from leadscore.engine import ContactState, Duplicate, Effect
from leadscore.events import Event, parse_event, parse_events
from leadscore.typed import parse_events as parse_events_typed
from state.codec import decode, encode


def test_dict_update(benchmark: Any, hot: HotPath) -> None:
    """Baseline: the least a per-event step can do (look a contact up, add its points)."""
    events = hot.events

    def loop() -> dict[str, int]:
        scores: dict[str, int] = {}
        for e in events:
            scores[e.contact] = scores.get(e.contact, 0) + 1
        return scores

    assert len(benchmark(loop)) == len(hot.states)
    hot.record(benchmark, BASELINE, len(events))


def test_apply(benchmark: Any, hot: HotPath) -> None:
    """Engine.apply over the realistic mix, from fresh states, including the state lookup."""
    events = hot.events
    apply, new_state = hot.engine.apply, hot.engine.new_state

    def loop() -> dict[str, ContactState]:
        states: dict[str, ContactState] = {}
        for e in events:
            state = states.get(e.contact)
            if state is None:
                state = states[e.contact] = new_state()
            apply(state, e)
        return states

    assert len(benchmark(loop)) == len(hot.states)
    hot.record(benchmark, "apply", len(events))


def test_rule_matching(benchmark: Any, hot: HotPath) -> None:
    """Only the `where` tests of every action and stage rule an event's action selects."""
    events = hot.events
    matchers = hot.rules.matchers  # one generated function per action, as apply calls it

    def loop() -> int:
        hits = 0
        for e in events:
            matcher = matchers.get(e.action)
            if matcher is not None:
                rules, stages = matcher(e.props)
                hits += len(rules) + len(stages)
        return hits

    assert benchmark(loop) > 0
    hot.record(benchmark, "rule_matching", len(events))


def _fit_matches(hot: HotPath) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """The rules' `matches` fit tests (id, trait, pattern) and the traits of the mix's events."""
    doc = yaml.safe_load(rules_path().read_text())
    rules = [(r["id"], r["trait"], r["matches"]) for r in doc.get("fit", []) if "matches" in r]
    return rules, [e.traits for e in hot.events if e.traits]


def test_fit_matching(benchmark: Any, hot: HotPath) -> None:
    """Every `matches` fit test (RE2, as the rules compile them) on every trait it reads."""
    matches, traits = _fit_matches(hot)
    ids = {rid for rid, _, _ in matches}
    tests = [(r.trait, r.test) for r in hot.rules.fit if r.id in ids]
    cases = [(test, t[trait]) for t in traits for trait, test in tests if trait in t]

    def loop() -> int:
        return sum(test(value) for test, value in cases)

    assert benchmark(loop) > 0
    hot.record(benchmark, "fit_matching", len(cases), unit="test")


def test_fit_matching_re(benchmark: Any, hot: HotPath) -> None:
    """The same tests with Python's re (the matcher before RE2): the ratio's reference."""
    matches, traits = _fit_matches(hot)
    tests = [(trait, re.compile(pattern).search) for _, trait, pattern in matches]
    cases = [(search, t[trait]) for t in traits for trait, search in tests if trait in t]

    def loop() -> int:
        return sum(v is not None and search(str(v)) is not None for search, v in cases)

    assert benchmark(loop) > 0
    hot.record(benchmark, "fit_matching_re", len(cases), unit="test")


def test_parse_event(benchmark: Any, hot: HotPath) -> None:
    """parse_event per raw line (orjson + contract checks), what the flow does before apply."""
    lines = hot.lines

    def loop() -> int:
        return sum(1 for raw in lines if parse_event(raw, 0.0) is not None)

    benchmark(loop)
    hot.record(benchmark, "parse_event", len(lines))


def test_parse_events(benchmark: Any, hot: HotPath) -> None:
    """parse_events over chunks of 2048 lines, as the file flow's Parser calls it."""
    lines = hot.lines
    chunks = [lines[i : i + 2048] for i in range(0, len(lines), 2048)]

    def loop() -> int:
        return sum(len(parse_events(chunk, 0.0)) for chunk in chunks)

    assert benchmark(loop) == len(lines)
    hot.record(benchmark, "parse_events", len(lines))


def test_parse_events_typed(benchmark: Any, hot: HotPath) -> None:
    """leadscore.typed.parse_events (msgspec) over the same chunks: ratio to parse_events."""
    lines = hot.lines
    chunks = [lines[i : i + 2048] for i in range(0, len(lines), 2048)]

    def loop() -> int:
        return sum(len(parse_events_typed(chunk, 0.0)) for chunk in chunks)

    assert benchmark(loop) == len(lines)
    hot.record(benchmark, "parse_events_typed", len(lines))


def test_records(benchmark: Any, hot: HotPath) -> None:
    """One output line per effect (record dict, format_ts, orjson.dumps), as the flow writes."""
    engine = hot.engine
    states: dict[str, ContactState] = {}
    effects: list[tuple[str, Effect]] = []
    for e in hot.events:
        state = states.get(e.contact)
        if state is None:
            state = states[e.contact] = engine.new_state()
        out = engine.apply(state, e)
        if out and type(out[0]) is not Duplicate:
            effects += [(e.contact, effect) for effect in out]
    assert all(type(e) is Event for e in hot.events)

    def loop() -> int:
        return sum(len(effect_record(contact, effect)[1]) for contact, effect in effects)

    assert benchmark(loop) > 0
    hot.record(benchmark, "records", len(effects), unit="record")


def test_orjson_loads(benchmark: Any, hot: HotPath) -> None:
    """orjson.loads alone per raw line: the floor under parse_event."""
    lines = hot.lines
    loads, error = orjson.loads, orjson.JSONDecodeError

    def loop() -> int:
        n = 0
        for raw in lines:
            try:
                loads(raw)
                n += 1
            except error:
                pass
        return n

    benchmark(loop)
    hot.record(benchmark, "orjson_loads", len(lines))


def test_encode(benchmark: Any, hot: HotPath) -> None:
    """msgpack encode of every contact's state after the replay; also its packed size."""
    states = list(hot.states.values())
    sizes = [len(encode(s)) for s in states]

    def loop() -> int:
        return sum(len(encode(s)) for s in states)

    assert benchmark(loop) == sum(sizes)
    hot.record(benchmark, "encode", len(states), unit="contact", packed_bytes=percentiles(sizes))


def test_decode(benchmark: Any, hot: HotPath) -> None:
    """msgpack decode back to ContactState (what a lazy MGET load costs per contact)."""
    blobs = [encode(s) for s in hot.states.values()]
    first = next(iter(hot.states.values()))
    assert decode(blobs[0]) == first

    def loop() -> int:
        return sum(1 for b in blobs if decode(b) is not None)

    assert benchmark(loop) == len(blobs)
    hot.record(benchmark, "decode", len(blobs), unit="contact")
