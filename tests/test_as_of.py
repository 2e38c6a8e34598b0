"""Scores as of a time: Engine.view(contact, state, at) and the live read model's view_at.

The engine decays in closed form, so a view at any later time needs no event and fires
nothing. These tests check it against an independent computation (each award decayed or
expired from its own time), and check that a reader of the stored read model
(leadscore.readmodel.view_at) gets the engine's answer to the bit.
"""

from __future__ import annotations

import copy

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scoring_helpers import DAY, HOUR, MINUTE, T0, engine, ev, of_type
from test_engine_properties import event_lists, rich

from leadscore.engine import PointChange, TriggerFired
from leadscore.events import format_ts
from leadscore.readmodel import VIEW_FIELDS, DocumentWriter, params, view_at, view_at_bytes
from state.codec import encode

H = 10 * DAY  # engagement half-life
E = 20 * DAY  # product expire_after

AS_OF_RULES = """
version: 1
groups:
  engagement: {decay: {half_life: 10d}}
  product: {decay: {expire_after: 20d}}
  fit: {}
actions:
  - {id: a, on: page.hit, points: 10, repeat: true}
  - {id: b, on: email.bounce, points: -4, repeat: true}
  - {id: c, on: cart.add, points: 8, group: product, repeat: true}
  - {id: d, on: cart.abandon, points: -3, group: product, repeat: true}
  - {id: e, on: webinar.attend, points: 5, group: fit, repeat: true}
grades:
  fit: {group: fit, bands: {A: 20, B: 5}, otherwise: C}
  engagement: {group: total, bands: {"1": 40, "2": 10}, otherwise: "3"}
scale: {score: total, max: 100}
"""
ACTION_GROUP = {
    "page.hit": "engagement",
    "email.bounce": "engagement",
    "cart.add": "product",
    "cart.abandon": "product",
    "webinar.attend": "fit",
}


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(sorted(ACTION_GROUP)), st.integers(0, 60)), max_size=25
    ),
    ordered=st.booleans(),
    reads=st.lists(st.integers(0, 90 * 24), min_size=1, max_size=4),
)
def test_view_at_equals_an_independent_closed_form(
    steps: list[tuple[str, int]], ordered: bool, reads: list[int]
) -> None:
    """Each award decays by its own age (half-life) or drops out once expired (expire_after).

    Events fall on whole days (one per group a day at most would share an expiry bucket;
    awards a day apart never do), in order or not; reads fall on any hour from the last
    event up to 90 days later.
    """
    eng = engine(AS_OF_RULES)
    state = eng.new_state()
    awarded: list[tuple[str, float, float]] = []  # group, applied, time
    for action, day in sorted(steps, key=lambda s: s[1]) if ordered else steps:
        for pc in of_type(eng.apply(state, ev(action, T0 + day * DAY)), PointChange):
            awarded.append((pc.group, pc.applied, pc.at))
    last = state.last_ts
    packed = encode(state)
    for hours in reads:
        at = (last or T0) + hours * HOUR
        view = eng.view("c-1", state, at)
        expected = {
            "engagement": sum(p * 2 ** (-(at - t) / H) for g, p, t in awarded if g == "engagement"),
            # An award counts until it expires; one that was late past its expiry never did.
            "product": sum(p for g, p, t in awarded if g == "product" and t + E > max(at, last)),
            "fit": sum(p for g, p, t in awarded if g == "fit"),
        }
        for group, value in expected.items():
            assert view["scores"][group] == pytest.approx(value, abs=1.5e-4), group
        assert view["total"] == pytest.approx(sum(expected.values()), abs=5e-4)
        assert view["normalized"] == pytest.approx(min(100.0, max(0.0, view["total"])), abs=0.051)
        fit_band = (
            "A" if view["scores"]["fit"] >= 20 else "B" if view["scores"]["fit"] >= 5 else "C"
        )
        eng_band = "1" if view["total"] >= 40 else "2" if view["total"] >= 10 else "3"
        assert view["grade"] == fit_band + eng_band
        assert view["as_of"] == format_ts(at if at > last else last)
        assert view["updated_at"] == (format_ts(last) if last else None)
        assert encode(state) == packed  # reading changed nothing


def test_view_at_fires_nothing_and_leaves_the_timer_alone() -> None:
    eng = engine(
        """
        version: 1
        groups: {engagement: {decay: {half_life: 1d}}}
        actions: [{id: a, on: form.submit, points: 100, repeat: true}]
        triggers:
          - {id: cooled, score: total, below: 20, actions: [{add_tag: cooled}]}
        """
    )
    state = eng.new_state()
    eng.apply(state, ev("form.submit", T0))
    due = eng.next_due(state)
    packed = encode(state)
    view = eng.view("c-1", state, T0 + 10 * DAY)  # far past the crossing
    assert view["total"] == pytest.approx(100 * 2**-10, abs=1e-4)
    assert view["tags"] == []  # the crossing is a trigger's job, not a reader's
    assert encode(state) == packed and eng.next_due(state) == due and state.last_ts == T0
    assert view["updated_at"] == format_ts(T0)
    assert view["as_of"] == format_ts(T0 + 10 * DAY)
    fired = of_type(eng.advance(state, T0 + 10 * DAY), TriggerFired)
    assert [(f.trigger, f.at) for f in fired] == [("cooled", due)]


def test_a_time_before_the_last_update_reads_as_that_update() -> None:
    eng = engine(AS_OF_RULES)
    state = eng.new_state()
    eng.apply(state, ev("page.hit", T0 + DAY))
    assert eng.view("c-1", state, T0) == eng.view("c-1", state)
    assert eng.view("c-1", state)["as_of"] == format_ts(T0 + DAY)


# --- the stored read model -------------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(events=event_lists(), reads=st.lists(st.integers(-5 * DAY, 200 * DAY), max_size=4))
def test_view_at_of_the_stored_document_is_the_engine_view_to_the_bit(
    events: list, reads: list[int]
) -> None:
    """RICH has caps, expiry buckets, fit, grades and a scale: every path of the arithmetic."""
    eng = rich()
    writer = DocumentWriter(eng)
    state = eng.new_state()
    for e in events:
        eng.apply(state, e)
    raw = writer.encode("c-1", state)
    doc = orjson.loads(raw)
    stored = copy.deepcopy(doc)
    for offset in reads:
        at = (state.last_ts or T0) + offset
        assert view_at(doc, at) == eng.view("c-1", state, at)
        assert orjson.loads(view_at_bytes(raw, at)) == eng.view("c-1", state, at)
    assert doc == stored  # the reader changed nothing
    # The document itself reads, without view_at, as the view at the last update.
    assert {k: doc[k] for k in VIEW_FIELDS} == eng.view("c-1", state)


def test_the_document_carries_the_rules_a_reader_needs() -> None:
    eng = rich()
    doc = orjson.loads(DocumentWriter(eng).encode("c-1", eng.new_state()))
    assert doc["decay"]["params"] == orjson.loads(orjson.dumps(params(eng.rules)))
    assert doc["decay"]["params"]["groups"] == [
        ["engagement", 14 * DAY, None],
        ["fit", None, None],
        ["product", None, 30 * DAY],
    ]
    assert doc["decay"]["params"]["scale"] == ["total", 100]
    assert view_at(doc, T0)["scores"] == {"engagement": 0.0, "fit": 0.0, "product": 0.0}


def test_an_older_document_without_decay_reads_as_stored() -> None:
    doc = {
        "contact": "c-1",
        "scores": {"engagement": 12.5},
        "total": 12.5,
        "normalized": None,
        "grade": None,
        "stage": None,
        "segments": [],
        "tags": [],
        "updated_at": "2026-06-01T00:00:00.000Z",
    }
    got = view_at(doc, T0 + 30 * DAY)
    assert got["total"] == 12.5 and got["as_of"] == "2026-06-01T00:00:00.000Z"


def test_expiry_in_the_document_drops_points_at_their_time() -> None:
    eng = engine(AS_OF_RULES)
    state = eng.new_state()
    eng.apply(state, ev("cart.add", T0))
    eng.apply(state, ev("cart.add", T0 + 5 * DAY))
    doc = orjson.loads(DocumentWriter(eng).encode("c-1", state))
    assert view_at(doc, T0 + E - MINUTE)["scores"]["product"] == 16
    assert view_at(doc, T0 + E)["scores"]["product"] == 8
    assert view_at(doc, T0 + 5 * DAY + E)["scores"]["product"] == 0
