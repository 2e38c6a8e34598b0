"""The rules JSON Schema: it accepts what the loader accepts and refuses what it refuses."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from leadscore.durations import parse_duration
from leadscore.rules import RulesError, load_rules, load_rules_text
from leadscore.schema import TRIGGER_ACTIONS, rules_json_schema, schema_text, write_schema

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "rules.yaml"
COMMITTED_SCHEMA = ROOT / "examples" / "rules.schema.json"
SCHEMA = rules_json_schema()
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)


class Yaml12Loader(yaml.SafeLoader):
    """What an editor's YAML 1.2 language server sees: `on` is text, dates stay text."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regex)
        for tag, regex in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=Yaml12Loader)


def schema_errors(doc: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(doc)
    ]


# --- the schema itself ----------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_committed_schema_file_is_up_to_date() -> None:
    assert json.loads(COMMITTED_SCHEMA.read_text(encoding="utf-8")) == SCHEMA
    assert COMMITTED_SCHEMA.read_text(encoding="utf-8") == schema_text()


def test_write_schema_writes_loadable_json(tmp_path: Path) -> None:
    path = write_schema(tmp_path / "rules.schema.json")
    assert json.loads(path.read_text(encoding="utf-8")) == SCHEMA


def _objects_with_properties(node: Any, path: str = "") -> list[tuple[str, dict]]:
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict):
            found.append((path, node))
        for key, child in node.items():
            found += _objects_with_properties(child, f"{path}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found += _objects_with_properties(child, f"{path}/{i}")
    return found


def test_every_object_is_closed_and_every_field_documented() -> None:
    objects = _objects_with_properties(SCHEMA)
    assert len(objects) > 15
    for path, obj in objects:
        assert obj.get("additionalProperties") is False, path
        for name, prop in obj["properties"].items():
            assert prop.get("description"), f"{path}/properties/{name}"
            if "/triggers/items/properties/actions/items/oneOf/" not in path:  # one-key maps
                assert prop.get("title"), f"{path}/properties/{name}"


# --- the example file ----------------------------------------------------------------------


def test_example_starts_with_the_schema_modeline() -> None:
    first = EXAMPLE.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=./rules.schema.json"


def test_example_validates_against_the_schema() -> None:
    assert schema_errors(load_yaml(EXAMPLE.read_text(encoding="utf-8"))) == []


def test_example_loads_with_the_rules_loader() -> None:
    rules = load_rules(EXAMPLE)
    assert len(rules.triggers) == 4
    assert rules.groups["product"].expire_after == 90 * 86400
    assert rules.groups["engagement"].half_life == 14 * 86400
    assert "careers-page" not in {r.id for r in rules.actions}  # enabled: false


def test_example_uses_every_feature_of_the_language() -> None:
    doc = load_yaml(EXAMPLE.read_text(encoding="utf-8"))
    # `predict` needs a trained model file: examples/xeducation/rules.yaml shows it.
    assert set(doc) | {"predict"} == set(SCHEMA["properties"])
    action_keys = set(SCHEMA["properties"]["actions"]["items"]["properties"])
    assert set().union(*(a.keys() for a in doc["actions"])) == action_keys
    repeats = [a.get("repeat") for a in doc["actions"] if "repeat" in a]
    assert True in repeats and False in repeats
    assert any(isinstance(r, dict) and "cooldown" in r for r in repeats)
    assert any(isinstance(r, dict) and "max" in r for r in repeats)
    wheres = [v for a in doc["actions"] for v in a.get("where", {}).items()]
    assert any(isinstance(v, list) for _, v in wheres)
    assert any("." in k for k, _ in wheres)
    assert any(isinstance(v, bool) for _, v in wheres)
    assert any(isinstance(v, int | float) and not isinstance(v, bool) for _, v in wheres)
    assert any(isinstance(a["on"], list) for a in doc["actions"])
    assert any(a["points"] < 0 for a in doc["actions"])
    assert any(a["points"] == 0 for a in doc["actions"])
    fit_keys = set().union(*(f.keys() for f in doc["fit"]))
    assert {"equals", "in", "matches", "between", "exists", "group"} <= fit_keys
    assert any("." in f["trait"] for f in doc["fit"])
    trigger_keys = set().union(*(t.keys() for t in doc["triggers"]))
    assert {"at_least", "below", "rearm_below", "after", "score"} <= trigger_keys
    kinds = {k for t in doc["triggers"] for a in t["actions"] for k in a}
    assert kinds == set(TRIGGER_ACTIONS)
    assert {t["score"] for t in doc["triggers"]} >= {"total", "fit"}
    decays = [g.get("decay", {}) for g in doc["groups"].values()]
    assert any("half_life" in d for d in decays) and any("expire_after" in d for d in decays)
    assert set(doc["stages"]) == {"order", "allow_backward", "rules"}
    assert set(doc["grades"]) == {"fit", "engagement"}


def test_architecture_example_validates_and_loads() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    match = re.search(r"## Rules language.*?```yaml\n(.*?)```", text, re.S)
    assert match is not None
    assert schema_errors(load_yaml(match.group(1))) == []
    load_rules_text(match.group(1))


# --- agreement with the loader on small documents ---------------------------------------------

VALID = {
    "minimal": "version: 1",
    "one action": "version: 1\nactions: [{id: a, on: page.hit, points: 1}]",
    "action list and empty where list item": """
        version: 1
        actions:
          - {id: a, on: [page.hit, email.click], where: {url: ["*/a*", 3, true]}, points: -2.5}
    """,
    "active with date-times": """
        version: 1
        actions:
          - id: a
            on: page.hit
            points: 1
            active: {from: "2026-01-01T00:00:00Z", until: "2026-02-01T12:30:00+01:00"}
    """,
    "below trigger with after": """
        version: 1
        triggers:
          - {id: up, at_least: 10, actions: []}
          - {id: down, below: 5, after: up, actions: [{notify: marketing}]}
    """,
}

INVALID = {
    "unknown top-level key": "version: 1\ntriggerz: []",
    "unknown action key": "version: 1\nactions: [{id: a, on: page.hit, points: 1, pionts: 2}]",
    "wrong version": "version: 2",
    "missing version": "actions: []",
    "bad duration": "version: 1\ngroups: {engagement: {decay: {half_life: 14 days}}}",
    "duration without unit": "version: 1\ngroups: {engagement: {decay: {half_life: '14'}}}",
    "zero duration": """
        version: 1
        actions: [{id: a, on: page.hit, points: 1, repeat: {cooldown: 0d}}]
    """,
    "decay with two kinds": """
        version: 1
        groups: {engagement: {decay: {half_life: 1d, expire_after: 2d}}}
    """,
    "group named total": "version: 1\ngroups: {total: {}}",
    "points as text": "version: 1\nactions: [{id: a, on: page.hit, points: ten}]",
    "points as boolean": "version: 1\nactions: [{id: a, on: page.hit, points: true}]",
    "action without id": "version: 1\nactions: [{on: page.hit, points: 1}]",
    "action without on": "version: 1\nactions: [{id: a, points: 1}]",
    "repeat sometimes": """
        version: 1
        actions: [{id: a, on: page.hit, points: 1, repeat: sometimes}]
    """,
    "repeat max without per": """
        version: 1
        actions: [{id: a, on: page.hit, points: 1, repeat: {max: 3}}]
    """,
    "hits zero": "version: 1\nactions: [{id: a, on: page.hit, points: 1, hits: 0}]",
    "where value is a mapping": """
        version: 1
        actions: [{id: a, on: page.hit, points: 1, where: {url: {glob: x}}}]
    """,
    "active not a date": """
        version: 1
        actions: [{id: a, on: page.hit, points: 1, active: {from: next week}}]
    """,
    "active unknown key": """
        version: 1
        actions: [{id: a, on: page.hit, points: 1, active: {since: 2026-01-01}}]
    """,
    "fit with two tests": """
        version: 1
        fit: [{id: f, trait: title, equals: CTO, matches: CTO, points: 5}]
    """,
    "fit with no test": "version: 1\nfit: [{id: f, trait: title, points: 5}]",
    "fit between three numbers": """
        version: 1
        fit: [{id: f, trait: company.size, between: [1, 2, 3], points: 5}]
    """,
    "fit exists not boolean": "version: 1\nfit: [{id: f, trait: phone, exists: yes, points: 1}]",
    "trigger with at_least and below": """
        version: 1
        triggers: [{id: t, at_least: 50, below: 20, actions: []}]
    """,
    "trigger without threshold": "version: 1\ntriggers: [{id: t, actions: []}]",
    "trigger without actions": "version: 1\ntriggers: [{id: t, at_least: 5}]",
    "rearm_below on a below trigger": """
        version: 1
        triggers: [{id: t, below: 20, rearm_below: 10, actions: []}]
    """,
    "after on an at_least trigger": """
        version: 1
        triggers: [{id: a, at_least: 5, actions: []}, {id: b, at_least: 9, after: a, actions: []}]
    """,
    "trigger action with two keys": """
        version: 1
        triggers: [{id: t, at_least: 5, actions: [{notify: sales, add_tag: x}]}]
    """,
    "unknown trigger action": """
        version: 1
        triggers: [{id: t, at_least: 5, actions: [{send_email: x}]}]
    """,
    "trigger action argument not text": """
        version: 1
        triggers: [{id: t, at_least: 5, actions: [{notify: [sales]}]}]
    """,
    "stages without order": "version: 1\nstages: {rules: []}",
    "stage rule without stage": """
        version: 1
        stages: {order: [a], rules: [{on: page.hit}]}
    """,
    "unknown grade": "version: 1\ngrades: {intent: {bands: {A: 1}, otherwise: B}}",
    "grade without otherwise": "version: 1\ngrades: {fit: {bands: {A: 1}}}",
    "scale max zero": "version: 1\nscale: {max: 0}",
    "scale without max": "version: 1\nscale: {score: total}",
    "points past 1e6": "version: 1\nactions: [{id: a, on: page.hit, points: 1.797e+308}]",
    "fit points past 1e6": "version: 1\nfit: [{id: f, trait: t, exists: true, points: -2.0e+6}]",
    "threshold past 1e9": "version: 1\ntriggers: [{id: t, at_least: 1.0e+10, actions: []}]",
    "cap past 1e9": "version: 1\ngroups: {engagement: {max: 1.0e+10}}",
    "band past 1e9": "version: 1\ngrades: {fit: {bands: {A: 1.0e+10}, otherwise: B}}",
    "hits past 1e6": "version: 1\nactions: [{id: a, on: page.hit, points: 1, hits: 1000001}]",
    "repeat max past 1000": """
        version: 1
        actions: [{id: a, on: page.hit, points: 1, repeat: {max: 1001, per: 1d}}]
    """,
    "expiry past 10 years": "version: 1\ngroups: {p: {decay: {expire_after: 999999w}}}",
}


@pytest.mark.parametrize("text", VALID.values(), ids=VALID.keys())
def test_valid_documents_pass_schema_and_loader(text: str) -> None:
    text = textwrap.dedent(text)
    assert schema_errors(load_yaml(text)) == []
    load_rules_text(text)


@pytest.mark.parametrize("text", INVALID.values(), ids=INVALID.keys())
def test_invalid_documents_fail_schema_and_loader(text: str) -> None:
    text = textwrap.dedent(text)
    assert schema_errors(load_yaml(text)) != []
    with pytest.raises(RulesError):
        load_rules_text(text)


DURATION = SCHEMA["properties"]["groups"]["additionalProperties"]["properties"]["decay"]["oneOf"][
    0
]["properties"]["half_life"]


@given(st.text(alphabet="0123456789.smhdwx", max_size=11))
@example("522w")
@example("522.0w")
@example("522.01w")
@example("3654d")
@example("3655d")
@example("999999w")
@example("0315705600s")
@example("315705601s")
def test_schema_durations_agree_with_the_loader(text: str) -> None:
    """Format and bound (at most 522w): the schema says what the loader accepts, exactly."""
    try:
        parse_duration(text)
        loader_ok = True
    except ValueError:
        loader_ok = False
    assert Draft202012Validator(DURATION).is_valid(text) == loader_ok
