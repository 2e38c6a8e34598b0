"""A likelihood whose model reads counts and decaying scores: live counters, freshness.

The engine keeps a counter only for what the model reads (a rule's hits with no repeat
tracker, an action's events), and the likelihood is as of the read like the scores: the
engine's view at any time, the stored read model brought to that time by a reader without the
model (``readmodel.view_at``), and the batch prediction from the same values all agree to the
bit. Counting never changes scoring.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scoring_helpers import DAY, HOUR, T0, ev

from leadscore.engine import RECENT_IDS, Engine
from leadscore.model import Feature, action_counter_key, model_document, save_model
from leadscore.readmodel import DocumentWriter, view_at
from leadscore.rules import Rules, RulesError, load_rules
from state.codec import decode, encode

RULES = """\
version: 1
groups:
  engagement: {decay: {half_life: 10d}}
  product: {decay: {expire_after: 20d}}
  fit: {}
actions:
  - {id: visit, on: page.hit, points: 2, repeat: true}
  - {id: pricing, on: page.hit, where: {url: "*pricing*"}, points: 10}
  - {id: cart, on: cart.add, points: 8, group: product, repeat: true}
  - {id: bounce, on: email.bounce, points: -4, repeat: true}
fit:
  - {id: boss, trait: title, equals: CEO, points: 15}
"""


def number(name: str, source: str, key: str, weight: float, **kw: Any) -> Feature:
    f = Feature(name, source, key, "number", -0.2, {}, weight=weight)
    for k, v in kw.items():
        setattr(f, k, v)
    return f


FEATURES = [
    Feature("title", "trait", "title", "category", -0.1, {"CEO": 0.8, "Intern": -0.6}, 0.05),
    number(
        "engagement",
        "score",
        "engagement",
        0.35,
        transform="log1p",
        low=0.0,
        high=4.5,
        mean=1.3,
        scale=0.9,
        edges=(0.5, 1.7, 3.0),
        bins=(-0.3, 0.0, 0.1, 0.45),
    ),
    number("visits", "rule_hits", "visit", 0.21, low=0.0, high=40.0, mean=3.0, scale=4.0),
    number(
        "product",
        "score",
        "product",
        -0.4,
        low=-20.0,
        high=60.0,
        mean=5.0,
        scale=9.0,
        edges=(1.0,),
        bins=(0.0, 0.3),
    ),
    number("fit", "score", "fit", 0.5, low=0.0, high=15.0, mean=2.0, scale=5.0),
    number("opens", "action_count", "email.open", 0.3, low=0.0, high=30.0, mean=2.0, scale=3.0),
]


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fresh")
    doc = model_document(FEATURES, -0.7, {"method": "platt", "a": 1.1, "b": -0.05}, [], {})
    save_model(doc, folder / "model.json")
    path = folder / "rules.yaml"
    path.write_text(RULES + "predict: {model: model.json, as: likelihood}\n")
    return path


@pytest.fixture(scope="module")
def live(rules_file: Path) -> Engine:
    return Engine(load_rules(rules_file))


@pytest.fixture(scope="module")
def plain() -> Engine:
    from scoring_helpers import rules

    return Engine(rules(RULES))


ACTIONS = ["page.hit", "cart.add", "email.bounce", "email.open", "identify"]
events_strategy = st.lists(
    st.tuples(
        st.sampled_from(ACTIONS),
        st.integers(0, 60 * 24),  # hours from T0
        st.sampled_from(["/blog", "/pricing", "/docs"]),
        st.sampled_from(["CEO", "Intern", "Dev", None]),
        st.integers(0, 3),  # an id out of 4: duplicates happen
    ),
    max_size=30,
)


def make(spec: tuple[str, int, str, str | None, int], n: int) -> Any:
    action, hours, url, title, dup = spec
    traits = {"title": title} if action == "identify" and title is not None else None
    return ev(action, T0 + hours * HOUR, id=f"e{n if dup else 'x'}", url=url, traits=traits)


@settings(max_examples=120, deadline=None)
@given(steps=events_strategy, reads=st.lists(st.integers(-2 * DAY, 120 * DAY), max_size=4))
def test_the_likelihood_is_as_of_the_read_everywhere_to_the_bit(
    live: Engine, steps: list[Any], reads: list[int]
) -> None:
    state = live.new_state()
    for n, spec in enumerate(steps):
        live.apply(state, make(spec, n))
    writer = DocumentWriter(live)
    raw = writer.encode("c-1", state)
    doc = orjson.loads(raw)
    assert "predict" in doc["decay"] and doc["decay"]["params"]["predict"][0] == "likelihood"
    model = live.rules.predict.model  # type: ignore[union-attr]
    for offset in reads:
        at = (state.last_ts or T0) + offset
        view = live.view("c-1", state, at)
        t = max(at, state.last_ts)
        # The batch prediction from the same values, and the trigger path, agree.
        assert view["likelihood"] == model.percent(live.predict_values(state, t))
        assert view["likelihood"] == live.likelihood(state, t)
        # A reader of the stored document, without the model, gets the same bits.
        assert view_at(doc, at) == view
    # The state round-trips with its counters (the Redis flow stores it so).
    again = decode(encode(state))
    assert live.view("c-1", again) == live.view("c-1", state)


@settings(max_examples=80, deadline=None)
@given(steps=events_strategy)
def test_counters_count_and_change_no_score(live: Engine, plain: Engine, steps: list[Any]) -> None:
    a, b = live.new_state(), plain.new_state()
    counts = {"email.open": 0, "page.hit": 0}
    recent: list[str] = []  # the engine drops an id among the last RECENT_IDS it scored
    for n, spec in enumerate(steps):
        event = make(spec, n)
        effects_live, effects_plain = live.apply(a, event), plain.apply(b, event)
        assert effects_live == effects_plain
        if event.id not in recent:
            if event.action in counts:
                counts[event.action] += 1
            recent.append(event.id or "")
            del recent[:-RECENT_IDS]
    assert {k: v for k, v in live.view("c-1", a).items() if k != "likelihood"} == plain.view(
        "c-1", b
    )
    for key, expected in ((action_counter_key("email.open"), "email.open"), ("visit", "page.hit")):
        got = a.tracks[a.tracked.index(key) * 3] if key in a.tracked else 0.0
        assert got == counts[expected], key  # `visit` matches every page hit
    # Without a model reading them, the plain engine keeps no counters at all.
    assert b.tracked == tuple(r for r in b.tracked if r == "pricing")


def test_decay_moves_the_likelihood_between_events(live: Engine) -> None:
    state = live.new_state()
    for day in range(6):
        live.apply(state, ev("page.hit", T0 + day * HOUR, url="/pricing"))
    now = live.view("c-1", state)["likelihood"]
    later = live.view("c-1", state, state.last_ts + 60 * DAY)["likelihood"]
    assert later != now  # the engagement score decayed, and with it the likelihood
    doc = orjson.loads(DocumentWriter(live).encode("c-1", state))
    assert view_at(doc, state.last_ts + 60 * DAY)["likelihood"] == later


def test_a_model_without_decaying_features_stores_nothing_more(tmp_path: Path) -> None:
    doc = model_document(FEATURES[:1], -0.7, {"method": "none", "a": 1.0, "b": 0.0}, [], {})
    save_model(doc, tmp_path / "model.json")
    path = tmp_path / "rules.yaml"
    path.write_text(RULES + "predict: {model: model.json}\n")
    engine = Engine(load_rules(path))
    state = engine.new_state()
    engine.apply(state, ev("identify", T0, traits={"title": "CEO"}))
    stored = orjson.loads(DocumentWriter(engine).encode("c-1", state))
    assert "predict" not in stored["decay"] and "predict" not in stored["decay"]["params"]
    assert view_at(stored, T0 + 90 * DAY)["likelihood"] == stored["likelihood"]


def test_counts_the_rules_cannot_give_and_reserved_ids_fail_at_load(tmp_path: Path) -> None:
    feature = number("x", "action_count", "fax.sent", 0.1)
    save_model(
        model_document([feature], 0.0, {"method": "none", "a": 1, "b": 0}, [], {}),
        tmp_path / "m.json",
    )
    path = tmp_path / "rules.yaml"
    path.write_text(RULES + "predict: {model: m.json}\n")
    with pytest.raises(RulesError, match=r"counts events of action .fax\.sent."):
        load_rules(path)
    path.write_text(RULES + "known_actions: [fax.sent]\npredict: {model: m.json}\n")
    assert isinstance(load_rules(path), Rules)
    path.write_text(
        textwrap.dedent("""\
        version: 1
        actions:
          - {id: "\\0page.hit", on: page.hit, points: 1}
        """)
    )
    with pytest.raises(RulesError, match="cannot start with a NUL"):
        load_rules(path)
