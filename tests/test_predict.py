"""Predictive likelihood: training from a table, the model file, live scoring and explanation.

Real components throughout: scikit-learn trains, the JSON model file is written and loaded
the way the rules loader loads it, the Bytewax flow scores imported `identify` events, and the
live likelihood is compared with the trainer's own batch prediction for the same rows.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.testing import run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from predict_helpers import make_table

from flows.scoring import FlowConfig, build_flow
from leadscore.engine import Engine
from leadscore.events import Event, parse_event, parse_ts
from leadscore.model import ModelError, load_model, parse_model, save_model
from leadscore.rules import RulesError, load_rules
from leadscore.tables import TableError, import_table
from leadscore.train import TrainError, TrainOptions, train_table

pytest.importorskip("sklearn")

XEDU = Path(__file__).resolve().parents[2] / "shared" / "data" / "xeducation" / "leads_train.csv"
if not XEDU.exists():  # the worktrees live beside the shared folder, CI's clone likewise
    XEDU = Path("/work/shared/data/xeducation/leads_train.csv")
SALES_SIDE = (
    "Tags",
    "Lead Quality",
    "Lead Profile",
    "Asymmetrique Activity Index",
    "Asymmetrique Profile Index",
    "Asymmetrique Activity Score",
    "Asymmetrique Profile Score",
)
T0 = 1_780_000_000.0


def parse_ts_text(text: str) -> float:
    ts = parse_ts(text, 0.0)
    assert isinstance(ts, float)
    return ts


# --------------------------------------------------------------------------- a generated CRM


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_table(tmp_path_factory.mktemp("crm") / "leads.csv")


@pytest.fixture(scope="module")
def trained(table: Path) -> Any:
    return train_table(table, TrainOptions(label="Won", id="Lead Id", min_class=100))


@pytest.fixture(scope="module")
def model_file(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.json"
    save_model(trained.doc, path)
    return path


# --------------------------------------------------------------------------- training


def test_leakage_guard_names_and_refuses_the_leaky_column(trained: Any) -> None:
    assert [name for name, _ in trained.leaky] == ["Status"]
    assert trained.leaky[0][1] >= 0.9
    assert "Status" not in [f.name for f in trained.model.features]
    refused = trained.doc["training"]["refused_as_leaky"]
    assert [r["column"] for r in refused] == ["Status"]


def test_keep_overrides_the_leakage_guard(table: Path) -> None:
    kept = train_table(table, TrainOptions(label="Won", id="Lead Id", keep=("Status",)))
    assert "Status" in [f.name for f in kept.model.features]
    assert [c for c, _ in kept.kept_leaky] == ["Status"]
    assert kept.quality["holdout"]["auc"] > 0.95  # of course: it is the label


def test_quality_is_measured_on_held_out_rows_and_written_into_the_model(trained: Any) -> None:
    q = trained.doc["quality"]["holdout"]
    training = trained.doc["training"]
    assert q["rows"] == training["holdout_rows"] == len(trained.holdout_rows) == 240
    assert training["train_rows"] + training["holdout_rows"] == training["rows"] == 1200
    assert 0.7 < q["auc"] < 0.95  # real signal, no leak
    assert 0 < q["brier"] < 0.25 and 0 < q["log_loss"] < 0.69
    assert q["lift_top_decile"] > 1.5
    table = q["calibration"]
    assert [d["decile"] for d in table] == list(range(1, 11))
    assert sum(d["rows"] for d in table) == q["rows"]
    predicted = [d["predicted"] for d in table]
    assert predicted == sorted(predicted, reverse=True)
    # Calibrated: predicted and observed rates agree overall within a few points.
    mean_p = sum(d["predicted"] * d["rows"] for d in table) / q["rows"]
    assert abs(mean_p - q["base_rate"]) < 0.06


def test_blanks_and_placeholders_are_missing_and_numbers_stay_numbers(trained: Any) -> None:
    by_name = {f.name: f for f in trained.model.features}
    assert by_name["Visits"].kind == "number" and by_name["Minutes"].kind == "number"
    assert by_name["Source"].kind == "category"
    assert "Select" not in by_name["Role"].levels and "" not in by_name["Role"].levels
    model = trained.model
    values = {"Role": "Select", "Country": "  ", "Visits": "", "Source": "Google"}
    blank = {"Source": "Google"}
    assert model.probability(model.values_of(values)) == model.probability(model.values_of(blank))


def test_too_few_converters_is_a_clear_error(table: Path) -> None:
    with pytest.raises(TrainError, match=r"at least 5000 of each"):
        train_table(table, TrainOptions(label="Won", id="Lead Id", min_class=5000))


def test_bad_label_and_unknown_columns_say_what_to_do(tmp_path: Path, table: Path) -> None:
    with pytest.raises(TableError, match="no label column 'Converted'"):
        train_table(table, TrainOptions(label="Converted"))
    with pytest.raises(TableError, match="no column 'Nope'"):
        train_table(table, TrainOptions(label="Won", exclude=("Nope",)))
    bad = tmp_path / "bad.csv"
    bad.write_text("id,won\na,1\nb,maybe\n")
    with pytest.raises(TrainError, match=r"row 3: label 'won' is 'maybe'"):
        train_table(bad, TrainOptions(label="won", id="id"))
    with pytest.raises(TableError, match="table not found"):
        train_table(tmp_path / "absent.csv", TrainOptions(label="won"))


# --------------------------------------------------------------------------- the model file


def test_model_file_round_trips_and_predicts_as_the_trainer_did(
    trained: Any, model_file: Path, table: Path
) -> None:
    model = load_model(model_file)
    rows = read_rows(table)
    for index, batch in zip(trained.holdout_rows, trained.holdout_probabilities, strict=True):
        assert model.probability(model.values_of(rows[index])) == pytest.approx(batch, abs=1e-9)


def test_top_factors_sum_with_the_intercept_to_the_logit(model_file: Path, table: Path) -> None:
    model = load_model(model_file)
    for row in read_rows(table)[:50]:
        values = model.values_of(row)
        explanation = model.explain(values)
        total = explanation.base + math.fsum(f.contribution for f in explanation.factors)
        assert total == pytest.approx(model.logit(values), abs=1e-9)
        assert explanation.logit == pytest.approx(model.logit(values), abs=1e-9)
        up, down = explanation.top(3)
        assert all(f.contribution > 0 for f in up) and all(f.contribution < 0 for f in down)
        assert [f.contribution for f in up] == sorted((f.contribution for f in up), reverse=True)
        out = explanation.to_json()
        assert out["likelihood"] == model.percent(values)


def test_pickle_is_refused(tmp_path: Path, trained: Any) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(trained.doc))
    with pytest.raises(ModelError, match=r"model.pkl: this is a pickle.*never loads pickles"):
        load_model(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version 2 is not supported"),
        ({"version": True}, "version True is not supported"),
        ({"format": "sklearn"}, "not a leadscore model"),
        ({"extra": 1}, "unknown field 'extra'"),
        ({"intercept": "0.5"}, "field 'intercept': expected a number"),
        ({"calibration": {"method": "isotonic", "a": 1, "b": 0}}, "method must be"),
        ({"features": []}, "expected a non-empty list"),
    ],
)
def test_model_files_of_another_shape_are_refused(
    tmp_path: Path, trained: Any, change: dict[str, Any], message: str
) -> None:
    path = tmp_path / "m.json"
    save_model({**trained.doc, **change}, path)
    with pytest.raises(ModelError, match=message) as err:
        load_model(path)
    assert str(err.value).startswith(str(path))


def test_a_broken_feature_is_named(tmp_path: Path, trained: Any) -> None:
    doc = orjson.loads(orjson.dumps(trained.doc))
    minutes = next(f for f in doc["features"] if f["name"] == "Minutes")
    minutes["bins"] = minutes["bins"][:-1]
    with pytest.raises(ModelError, match=r"feature 'Minutes': field 'bins'"):
        parse_model(orjson.dumps(doc), "m.json")
    del minutes["bins"]
    with pytest.raises(ModelError, match=r"feature 'Minutes': field 'bins' is required"):
        parse_model(orjson.dumps(doc), "m.json")


def test_missing_model_file_fails_the_rules_naming_it(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\npredict: {model: nowhere.json, as: likelihood}\n")
    with pytest.raises(RulesError, match=r"nowhere.json: model file not found"):
        load_rules(rules)


def test_features_the_rules_cannot_provide_fail_at_load(tmp_path: Path, trained: Any) -> None:
    doc = orjson.loads(orjson.dumps(trained.doc))
    numbers = [f for f in doc["features"] if f["kind"] == "number"]
    numbers[0]["source"] = "score"
    numbers[0]["key"] = "product"
    numbers[1]["source"] = "action_count"
    numbers[1]["key"] = "Role"
    save_model(doc, tmp_path / "m.json")
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\npredict: {model: m.json}\n")
    with pytest.raises(RulesError) as err:
        load_rules(rules)
    text = str(err.value)
    first, second = numbers[0]["name"], numbers[1]["name"]
    assert f"m.json: feature {first!r}: these rules cannot provide it" in text
    assert "group 'product'" in text
    assert f"feature {second!r}" in text and "counts events of action 'Role'" in text
    assert "known_actions" in text


def test_a_score_or_count_feature_must_be_a_number(tmp_path: Path, trained: Any) -> None:
    doc = orjson.loads(orjson.dumps(trained.doc))
    category = next(f for f in doc["features"] if f["kind"] == "category")
    category["source"] = "rule_hits"
    with pytest.raises(ModelError, match="a rule_hits feature is a number") as err:
        parse_model(orjson.dumps(doc), "m.json")
    assert err.value.feature == category["name"]


def test_predict_name_cannot_shadow_a_contact_field(tmp_path: Path, model_file: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"version: 1\npredict: {{model: {model_file}, as: total}}\n")
    with pytest.raises(RulesError, match="'total' is already a contact field"):
        load_rules(rules)


# --------------------------------------------------------------------------- live


def rules_with_model(tmp_path: Path, model_file: Path, extra: str = "") -> Path:
    path = tmp_path / "rules.yaml"
    rel = Path("models") / "leads.json"
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / rel).write_bytes(model_file.read_bytes())
    path.write_text(
        textwrap.dedent(f"""\
        version: 1
        groups: {{engagement: {{}}, fit: {{}}}}
        actions:
          - {{id: pricing, on: page.hit, where: {{url: "*/pricing*"}}, points: 10}}
        fit:
          - {{id: referral, trait: Source, equals: Referral, points: 5}}
        predict: {{model: {rel}, as: likelihood}}
        """)
        + textwrap.dedent(extra)
    )
    return path


def test_live_likelihood_equals_the_batch_prediction(
    tmp_path: Path, table: Path, trained: Any, model_file: Path
) -> None:
    """Import the table as identify events, score them with the flow, compare with the trainer."""
    imported = import_table(table, "Lead Id", at=T0, exclude=["Won"])
    assert len(imported.events) == 1200 and not imported.skipped
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in imported.events))
    rules = rules_with_model(tmp_path, model_file)
    out = tmp_path / "out"
    run_main(build_flow(FlowConfig(rules=str(rules), events=[str(events)], out=str(out))))
    lines = (out / "contacts.jsonl").read_bytes().splitlines()
    contacts = {c["contact"]: c for c in map(orjson.loads, lines)}
    assert len(contacts) == 1200
    ids = [row["Lead Id"] for row in read_rows(table)]
    for index, batch in zip(trained.holdout_rows, trained.holdout_probabilities, strict=True):
        line = contacts[ids[index]]
        assert line["likelihood"] == pytest.approx(batch * 100.0, abs=0.0051)
        assert "likelihood" not in line["scores"]
        assert line["total"] == sum(line["scores"].values())


def test_likelihood_moves_when_traits_change_and_triggers_watch_it(
    tmp_path: Path, model_file: Path
) -> None:
    rules = load_rules(
        rules_with_model(
            tmp_path,
            model_file,
            """\
            triggers:
              - {id: likely, score: likelihood, at_least: 60, actions: [{add_tag: likely}]}
            """,
        )
    )
    engine = Engine(rules)
    state = engine.new_state()
    cold = {"Source": "Chat", "Role": "Student", "Visits": 0, "Minutes": 1.0}
    hot = {"Source": "Referral", "Role": "Manager", "Visits": 13, "Minutes": 2000.0}
    assert not engine.apply(state, Event("c-1", "identify", T0, "e1", {}, cold))
    low = engine.view("c-1", state)["likelihood"]
    effects = engine.apply(state, Event("c-1", "identify", T0 + 1, "e2", {}, hot))
    high = engine.view("c-1", state)["likelihood"]
    assert low < 20 < 60 <= high
    fired = [e for e in effects if type(e).__name__ == "TriggerFired"]
    assert [e.trigger for e in fired] == ["likely"] and fired[0].score == high
    assert engine.view("c-1", state)["tags"] == ["likely"]
    explanation = engine.explain_likelihood(state)
    assert explanation is not None
    up, _ = explanation.top(3)
    assert "Minutes" in [f.feature for f in up]


def test_without_predict_the_read_model_has_no_likelihood(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\n")
    engine = Engine(load_rules(rules))
    assert "likelihood" not in engine.view("c-1", engine.new_state())


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["Source", "Role", "Visits", "Minutes", "Country", "Other"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(10**6), 10**6),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=12),
        ),
    )
)
def test_any_trait_values_give_a_probability_whose_factors_add_up(
    trained: Any, values: dict[str, Any]
) -> None:
    model = trained.model
    row = model.values_of(values)
    p = model.probability(row)
    assert 0.0 < p < 1.0
    explanation = model.explain(row)
    assert explanation.base + math.fsum(
        f.contribution for f in explanation.factors
    ) == pytest.approx(model.logit(row), abs=1e-9)


# --------------------------------------------------------------------------- X Education


@pytest.mark.slow
@pytest.mark.skipif(not XEDU.exists(), reason="the X Education data set is not in shared/")
def test_xeducation_guard_names_tags_and_the_honest_model_is_good() -> None:
    raw = train_table(XEDU, TrainOptions(label="Converted", id="Prospect ID"))
    assert "Tags" in [name for name, _ in raw.leaky]
    honest = train_table(
        XEDU, TrainOptions(label="Converted", id="Prospect ID", exclude=SALES_SIDE)
    )
    assert not honest.leaky
    assert honest.quality["holdout"]["auc"] >= 0.88


# --------------------------------------------------------------------------- Redis and HTTP


def test_redis_read_model_and_http_api_carry_and_explain_the_likelihood(
    tmp_path: Path, table: Path, trained: Any, model_file: Path, redis_url: str, serve: Any
) -> None:
    import httpx

    from state.redis_store import RedisStore

    prefix, partitions = "predict", 4
    imported = import_table(table, "Lead Id", at=T0, exclude=["Won"])
    rows = read_rows(table)
    batch = dict(zip(trained.holdout_rows, trained.holdout_probabilities, strict=True))
    chosen = sorted(batch)[:40]
    wanted = {rows[i]["Lead Id"]: batch[i] for i in chosen}
    lines = [orjson.dumps(e) for e in imported.events if e["contact"] in wanted]
    with RedisStore(redis_url, prefix=prefix, partitions=partitions) as store:
        store.send_events(lines)
    rules = rules_with_model(tmp_path, model_file)
    config = FlowConfig(
        rules=str(rules),
        source="redis",
        redis_url=redis_url,
        partitions=partitions,
        prefix=prefix,
        tail=False,
    )
    run_main(build_flow(config))
    first = next(iter(wanted))
    shown = subprocess.run(
        [sys.executable, "-m", "leadscore.cli", "show", "--redis", redis_url, "--prefix", prefix,
         first],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    row = re.search(r"likelihood\s+([0-9.]+)", shown.stdout)
    assert row is not None, shown.stdout
    assert float(row.group(1)) == pytest.approx(wanted[first] * 100.0, abs=0.01)
    live = serve(prefix=prefix, partitions=partitions, rules=str(rules))
    for contact, probability in list(wanted.items())[:10]:
        plain = httpx.get(f"{live.url}/v1/contacts/{contact}", timeout=10).json()
        assert plain["likelihood"] == pytest.approx(probability * 100.0, abs=0.0051)
        assert "likelihood_factors" not in plain
        explained = httpx.get(f"{live.url}/v1/contacts/{contact}?explain=1", timeout=10).json()
        factors = explained["likelihood_factors"]
        assert factors["likelihood"] == plain["likelihood"]
        assert factors["raising"] or factors["lowering"]
        named = {f["feature"] for f in factors["raising"] + factors["lowering"]}
        assert named <= {"Source", "Role", "Visits", "Minutes", "Country"}
        contributions = [f["contribution"] for f in factors["raising"]]
        assert contributions == sorted(contributions, reverse=True)
        assert all(c > 0 for c in contributions)
        assert all(f["contribution"] < 0 for f in factors["lowering"])


def test_explain_replay_shows_the_likelihoods_top_factors(
    tmp_path: Path, table: Path, model_file: Path
) -> None:
    from leadscore.explain import replay

    imported = import_table(table, "Lead Id", at=T0, exclude=["Won"])
    rules = load_rules(rules_with_model(tmp_path, model_file))
    lines = [orjson.dumps(e) for e in imported.events[:30]]
    contact = imported.events[7]["contact"]
    result = replay(rules, [lines], contact, T0)
    assert result.view is not None and result.likelihood is not None
    assert result.likelihood["likelihood"] == result.view["likelihood"]
    model = load_model(model_file)
    expected = model.explain(model.values_of(imported.events[7]["traits"]))
    up, down = expected.top(5)
    assert [f["feature"] for f in result.likelihood["raising"]] == [f.feature for f in up]
    assert [f["feature"] for f in result.likelihood["lowering"]] == [f.feature for f in down]


def test_the_xeducation_example_validates_and_loads() -> None:
    import jsonschema
    import yaml

    from leadscore.schema import rules_json_schema

    path = Path(__file__).resolve().parent.parent / "examples" / "xeducation" / "rules.yaml"
    jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), rules_json_schema())
    rules = load_rules(path)
    assert rules.predict is not None and rules.predict.name == "likelihood"
    quality = rules.predict.model.quality["holdout"]
    assert quality["auc"] >= 0.88
    assert not rules.predict.model.doc["training"]["refused_as_leaky"]
    excluded = {"Tags", "Lead Quality", "Lead Profile"}
    assert not excluded & {f.key for f in rules.predict.model.features}


# --------------------------------------------------------------------------- event history


@pytest.mark.slow
def test_train_from_event_history_and_score_live_the_same(tmp_path: Path) -> None:
    """The calibrate population at as_of; the live engine at as_of gives the same likelihood."""
    from leadscore.generate import write_events
    from leadscore.outcomes import conversions
    from leadscore.train import train_events

    example = Path(__file__).resolve().parent.parent / "examples" / "rules.yaml"
    events = tmp_path / "events.jsonl"
    write_events(events, contacts=1500, events=40_000, seed=5, conversions=0.6)
    rules = load_rules(example)
    window = 21 * 86400.0
    result = train_events(
        rules,
        [str(events)],
        conversions(["purchase"]),
        window,
        TrainOptions("purchase", min_class=30),
    )
    doc = result.doc
    assert doc["label"]["conversion"] == ["purchase"] and doc["label"]["window"] == "3w"
    sources = {f.source for f in result.model.features}
    assert sources == {"trait", "score", "rule_hits", "action_count"}
    untracked = {r.id for r in rules.actions if not r.tracked}
    assert untracked & {f.key for f in result.model.features if f.source == "rule_hits"}
    dropped = {d["column"]: d["reason"] for d in doc["training"]["dropped"]}
    assert "count purchase" not in dropped and not any(
        f.key == "purchase" for f in result.model.features
    )  # the label's own action is never a feature
    assert any(reason.startswith("the same counts as") for reason in dropped.values())
    # At most --max-counters (4) counts need a counter the state would not keep otherwise.
    costly = [
        f
        for f in result.model.features
        if f.source == "action_count" or (f.source == "rule_hits" and f.key in untracked)
    ]
    assert len(costly) == 4
    assert any(reason.startswith("over --max-counters 4") for reason in dropped.values())
    assert result.quality["holdout"]["auc"] > 0.6
    # The model works in the rules it was trained with.
    save_model(doc, tmp_path / "model.json")
    with_model = tmp_path / "rules.yaml"
    with_model.write_text(
        example.read_text(encoding="utf-8") + "\npredict: {model: model.json, as: likelihood}\n"
    )
    engine = Engine(load_rules(with_model))
    as_of = parse_ts_text(doc["label"]["as_of"])
    states: dict[str, Any] = {}
    for line in events.read_bytes().splitlines():
        event = parse_event(line, 0.0)
        if type(event) is not Event or event.ts > as_of or not engine.rules.is_known(event.action):
            continue
        state = states.setdefault(event.contact, engine.new_state())
        engine.apply(state, event)
    from leadscore.calibration import calibrate
    from leadscore.outcomes import check_score, population, score_of

    members = population(rules, [str(events)], conversions(["purchase"]), window).members
    # Calibrate (and backtest) can evaluate the likelihood like any score.
    check_score(engine.rules, "likelihood")
    scored = population(engine.rules, [str(events)], conversions(["purchase"]), window).members
    assert [m.contact for m in scored] == [m.contact for m in members]
    likelihoods = [score_of(m.view, "likelihood") for m in scored]
    assert all(0.0 < x < 100.0 for x in likelihoods)
    assert calibrate(likelihoods, [m.label for m in scored]).auc > 0.6
    for index, batch in list(zip(result.holdout_rows, result.holdout_probabilities, strict=True))[
        :200
    ]:
        state = states[members[index].contact]
        engine.advance(state, as_of)
        assert engine.likelihood(state, as_of) == pytest.approx(batch * 100.0, abs=0.0051)


def test_explain_after_a_publish_explains_the_published_rules_likelihood(
    tmp_path: Path, table: Path, model_file: Path, redis_url: str, serve: Any
) -> None:
    """The service keeps running through a publish: ?explain=1 then explains the likelihood
    of the rules now live ({prefix}:meta), not those of its own --rules file."""
    import httpx

    from state.redis_store import RedisStore

    prefix, partitions = "predict", 4
    imported = import_table(table, "Lead Id", at=T0, exclude=["Won"])
    chosen = sorted({e["contact"] for e in imported.events})[:20]
    lines = [orjson.dumps(e) for e in imported.events if e["contact"] in chosen]
    with RedisStore(redis_url, prefix=prefix, partitions=partitions) as store:
        store.send_events(lines)
    rules = rules_with_model(tmp_path, model_file)
    config = FlowConfig(
        rules=str(rules), source="redis", redis_url=redis_url, partitions=partitions,
        prefix=prefix, tail=False,
    )  # fmt: skip
    run_main(build_flow(config))
    live = serve(prefix=prefix, partitions=partitions, rules=str(rules))
    url = f"{live.url}/v1/contacts/{chosen[0]}?explain=1"
    before = httpx.get(url, timeout=10).json()
    assert before["likelihood_factors"]["likelihood"] == before["likelihood"]

    new = tmp_path / "new.yaml"  # the same model, published under another name
    new.write_text(rules.read_text().replace("as: likelihood", "as: chance"))
    done = subprocess.run(
        [sys.executable, "-m", "leadscore.cli", "publish", "--redis", redis_url,
         "--prefix", prefix, "--rules", str(new), "--yes"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    after = httpx.get(url, timeout=10).json()
    assert "likelihood" not in after and "likelihood_factors" not in after
    factors = after["chance_factors"]
    assert factors["likelihood"] == after["chance"] == before["likelihood"]
    assert factors["raising"] == before["likelihood_factors"]["raising"]
