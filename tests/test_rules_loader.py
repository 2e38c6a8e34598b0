"""The rules loader: valid files compile; every bad file names file, rule and field."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from leadscore.rules import Rules, RulesError, load_rules, load_rules_text, parse_rules

GOOD = """
version: 1
known_actions: [chat.start]
groups:
  engagement: {decay: {half_life: 14d}, max: 150, min: -100}
  fit: {}
  product: {decay: {expire_after: 90d}}
actions:
  - id: pricing-page
    name: Visited pricing
    description: Any pricing page
    category: web
    on: page.hit
    where: {url: "*/pricing*"}
    points: 10
    group: engagement
    repeat: {cooldown: 1d}
    active: {from: 2026-01-01, until: 2026-12-31T23:59:59Z}
    enabled: true
  - {id: opens, on: [email.open], points: 1, repeat: {max: 3, per: 1d}}
  - {id: blog-fan, on: page.hit, where: {url: "*/blog/*"}, hits: 3, points: 5, repeat: true}
  - {id: back, on: page.hit, returns_within: 7d, returns_after: 1d, points: 4, repeat: false}
  - {id: cart, on: cart.add, points: 8, group: product, repeat: true}
  - {id: unsub, on: email.unsubscribe, points: -20}
fit:
  - {id: title-vp, trait: title, matches: "(?i)\\\\b(vp|head)\\\\b", points: 15}
  - {id: size, trait: company.size, between: [50, 5000], points: 10, group: fit}
  - {id: country, trait: country, in: [ES, FR, DE], points: 5}
  - {id: role, trait: role, equals: buyer, points: 10}
  - {id: has-phone, trait: phone, exists: true, points: 3}
triggers:
  - id: mql
    score: total
    at_least: 50
    rearm_below: 30
    actions:
      - notify: sales
      - add_segment: mql
      - add_tag: hot
      - set_stage: decision
      - webhook: https://crm.example.com/hooks/mql
  - id: cooled
    score: total
    below: 20
    after: mql
    actions: [{remove_segment: mql}, {add_segment: nurture}, {remove_tag: hot}]
  - {id: product-hot, score: product, at_least: 40, actions: [{notify: product}]}
stages:
  order: [awareness, investigation, decision, action]
  allow_backward: false
  rules:
    - {on: page.hit, where: {url: "*/blog/*"}, stage: awareness}
    - {on: [page.hit], where: {url: "*/pricing*"}, stage: decision}
    - {on: cart.add, stage: action}
grades:
  fit: {group: fit, bands: {A: 40, B: 20, C: 5}, otherwise: D}
  engagement: {group: engagement, bands: {"1": 60, "2": 25}, otherwise: "3"}
scale: {score: total, max: 100}
"""


def good_doc() -> dict:
    # PyYAML's safe_load reads the YAML 1.1 key `on:` as True; quote it for a plain dict
    return yaml.safe_load(re.sub(r"(?<=[\s{])on:", '"on":', GOOD))


def errors_of(doc: dict | str, source: str = "rules.yaml") -> RulesError:
    with pytest.raises(RulesError) as info:
        if isinstance(doc, str):
            load_rules_text(textwrap.dedent(doc), source)
        else:
            parse_rules(doc, source)
    return info.value


def assert_names(err: RulesError, *needles: str) -> None:
    """Some line of str(err) names the file and every needle."""
    text = str(err)
    lines = text.splitlines()
    assert len(lines) == len(err.problems), text
    hits = [line for line in lines if all(n in line for n in ("rules.yaml", *needles))]
    assert hits, f"no line names {needles!r}:\n{text}"


# --- valid input ---------------------------------------------------------------------------


def test_full_document_loads_from_text_dict_and_file(tmp_path: Path) -> None:
    assert isinstance(load_rules_text(GOOD), Rules)
    assert isinstance(parse_rules(good_doc()), Rules)
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    assert isinstance(load_rules(path), Rules)
    assert isinstance(load_rules(str(path)), Rules)


def test_minimal_document() -> None:
    assert isinstance(load_rules_text("version: 1\n"), Rules)


def test_example_rules_file_loads(example_rules_path: Path) -> None:
    if not example_rules_path.exists():
        pytest.skip("examples/rules.yaml not written yet")
    assert isinstance(load_rules(example_rules_path), Rules)


def test_problem_has_the_documented_fields() -> None:
    doc = good_doc()
    doc["actions"][0]["repeat"] = "sometimes"
    err = errors_of(doc)
    assert len(err.problems) == 1
    p = err.problems[0]
    assert p.file == "rules.yaml"
    assert "actions[0]" in p.where
    assert "pricing-page" in p.where
    assert p.field == "repeat"
    assert "sometimes" in p.message
    line = str(err)
    assert line.startswith("rules.yaml: ")
    assert "actions[0]" in line and "pricing-page" in line and "'repeat'" in line


def test_every_problem_is_reported_one_line_each() -> None:
    doc = good_doc()
    doc["actions"][0]["points"] = "ten"
    doc["actions"][1]["repeat"] = {"cooldown": "soon"}
    doc["triggers"][1]["after"] = "nope"
    err = errors_of(doc)
    assert len(err.problems) >= 3
    assert len(str(err).splitlines()) == len(err.problems)
    assert_names(err, "actions[0]", "pricing-page", "points")
    assert_names(err, "actions[1]", "opens", "cooldown")
    assert_names(err, "triggers[1]", "cooled", "after")


def test_load_rules_names_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "my-rules.yaml"
    path.write_text("version: 1\nactions:\n  - {id: a, on: page.hit, points: 1, bogus: 2}\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert "my-rules.yaml" in str(info.value)
    assert "bogus" in str(info.value)


# --- each kind of mistake ------------------------------------------------------------------


def mutate(path: str, value: object) -> dict:
    """good_doc() with the value at ``a.0.b`` style ``path`` replaced (None deletes)."""
    doc = good_doc()
    *parents, last = path.split(".")
    node: object = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]  # type: ignore[index]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is None:
        del node[last]  # type: ignore[union-attr]
    else:
        node[last] = value  # type: ignore[index]
    return doc


@pytest.mark.parametrize(
    ("path", "value", "needles"),
    [
        # unknown keys
        ("actions.0.poins", 5, ("actions[0]", "pricing-page", "poins")),
        ("triggers.0.at_most", 5, ("triggers[0]", "mql", "at_most")),
        ("fit.2.trate", "x", ("fit[2]", "country", "trate")),
        ("groups.engagement.decay", {"halflife": "14d"}, ("engagement", "halflife")),
        ("colour", "blue", ("colour",)),
        # wrong types
        ("actions.0.points", "ten", ("actions[0]", "pricing-page", "points")),
        ("actions.2.hits", "3", ("actions[2]", "blog-fan", "hits")),
        ("actions.2.hits", 0, ("actions[2]", "blog-fan", "hits")),
        ("actions.0.on", 5, ("actions[0]", "pricing-page", "on")),
        ("actions.0.enabled", "yes please", ("actions[0]", "pricing-page", "enabled")),
        ("actions.0.where", ["url"], ("actions[0]", "pricing-page", "where")),
        ("actions.0.repeat", "sometimes", ("actions[0]", "pricing-page", "repeat")),
        ("actions.1.repeat", {"max": 0, "per": "1d"}, ("actions[1]", "opens", "max")),
        ("actions.1.repeat", {"max": "3", "per": "1d"}, ("actions[1]", "opens", "max")),
        ("actions.1.repeat", {"max": 3}, ("actions[1]", "opens", "per")),
        ("actions.1.repeat", {"max": 3, "per": "1d", "cooldown": "1h"}, ("actions[1]", "opens")),
        ("triggers.0.at_least", "fifty", ("triggers[0]", "mql", "at_least")),
        ("triggers.0.actions", [{"notify": "sales", "add_tag": "x"}], ("triggers[0]", "actions")),
        ("triggers.0.actions", [{"launch_rockets": "x"}], ("triggers[0]", "launch_rockets")),
        ("fit.3.points", True, ("fit[3]", "role", "points")),
        ("fit.1.between", [5000, 50], ("fit[1]", "size", "between")),
        ("fit.1.between", [50], ("fit[1]", "size", "between")),
        ("fit.2.in", "ES", ("fit[2]", "country", "in")),
        ("groups.engagement.max", "lots", ("engagement", "max")),
        ("scale.max", 0, ("scale", "max")),
        ("version", 2, ("version",)),
        ("version", None, ("version",)),
        # bad regexes
        ("fit.0.matches", "(unclosed", ("fit[0]", "title-vp", "matches")),
        # bad durations
        ("actions.0.repeat", {"cooldown": "1 fortnight"}, ("actions[0]", "cooldown")),
        ("actions.1.repeat", {"max": 3, "per": "-1d"}, ("actions[1]", "opens", "per")),
        ("actions.3.returns_within", "7", ("actions[3]", "back", "returns_within")),
        ("actions.3.returns_after", "0s", ("actions[3]", "back", "returns_after")),
        ("groups.engagement.decay", {"half_life": "2y"}, ("engagement", "half_life")),
        ("groups.product.decay", {"expire_after": 90}, ("product", "expire_after")),
        ("actions.0.active", {"from": "not a date"}, ("actions[0]", "pricing-page", "from")),
        # references
        ("triggers.1.after", "mqll", ("triggers[1]", "cooled", "after", "mqll")),
        ("actions.4.group", "produce", ("actions[4]", "cart", "group", "produce")),
        ("fit.1.group", "firmographic", ("fit[1]", "size", "group")),
        ("triggers.0.score", "engagment", ("triggers[0]", "mql", "score", "engagment")),
        ("grades.fit.group", "fitt", ("grades", "fitt")),
        ("scale.score", "nope", ("scale", "nope")),
        ("stages.rules.0.stage", "curious", ("stages", "curious")),
        ("triggers.0.actions", [{"set_stage": "curious"}], ("triggers[0]", "curious")),
        # missing fields
        ("actions.0.on", None, ("actions[0]", "pricing-page", "on")),
        ("actions.0.points", None, ("actions[0]", "pricing-page", "points")),
        ("actions.0.id", None, ("actions[0]", "id")),
        ("fit.0.trait", None, ("fit[0]", "title-vp", "trait")),
    ],
)
def test_mistakes_are_reported_with_file_rule_and_field(
    path: str, value: object, needles: tuple[str, ...]
) -> None:
    err = errors_of(mutate(path, value))
    assert_names(err, *needles)


def test_duplicate_action_ids() -> None:
    doc = good_doc()
    doc["actions"][3]["id"] = "pricing-page"
    err = errors_of(doc)
    assert_names(err, "actions[3]", "pricing-page", "id")


def test_duplicate_trigger_ids() -> None:
    doc = good_doc()
    doc["triggers"][2]["id"] = "mql"
    err = errors_of(doc)
    assert_names(err, "triggers[2]", "mql", "id")


def test_duplicate_fit_ids() -> None:
    doc = good_doc()
    doc["fit"][4]["id"] = "role"
    err = errors_of(doc)
    assert_names(err, "fit[4]", "role", "id")


def test_trigger_needs_a_threshold() -> None:
    doc = good_doc()
    del doc["triggers"][2]["at_least"]
    err = errors_of(doc)
    assert_names(err, "triggers[2]", "product-hot")


def test_trigger_cannot_be_both_at_least_and_below() -> None:
    doc = good_doc()
    doc["triggers"][2]["below"] = 5
    err = errors_of(doc)
    assert_names(err, "triggers[2]", "product-hot")


def test_fit_rule_needs_exactly_one_test() -> None:
    doc = good_doc()
    doc["fit"][3]["in"] = ["buyer"]  # equals and in
    err = errors_of(doc)
    assert_names(err, "fit[3]", "role")
    doc = good_doc()
    del doc["fit"][3]["equals"]
    err = errors_of(doc)
    assert_names(err, "fit[3]", "role")


def test_groups_must_be_a_mapping() -> None:
    doc = good_doc()
    doc["groups"] = ["engagement"]
    err = errors_of(doc)
    assert_names(err, "groups")


def test_actions_must_be_a_list_of_mappings() -> None:
    doc = good_doc()
    doc["actions"][2] = "blog-fan"
    err = errors_of(doc)
    assert_names(err, "actions[2]")


def test_top_level_must_be_a_mapping() -> None:
    err = errors_of("- 1\n- 2\n")
    assert "rules.yaml" in str(err)


def test_invalid_yaml_is_a_rules_error() -> None:
    err = errors_of("version: 1\nactions: [ {id: a\n")
    assert "rules.yaml" in str(err)


def test_empty_text_is_a_rules_error() -> None:
    err = errors_of("")
    assert "rules.yaml" in str(err)


def test_yaml_booleans_are_not_points() -> None:
    err = errors_of(
        """
        version: 1
        actions:
          - {id: a, on: page.hit, points: yes}
        """
    )
    assert_names(err, "actions[0]", "points")


def test_where_with_a_bad_value_type() -> None:
    err = errors_of(
        """
        version: 1
        actions:
          - {id: a, on: page.hit, points: 1, where: {url: {nested: map}}}
        """
    )
    assert_names(err, "actions[0]", "where")


# --- semantic checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (
            "triggers:\n  - {id: a, score: total, at_least: 50, rearm_below: 60, actions: []}\n",
            ("triggers[0]", "rearm_below"),
        ),
        (
            "triggers:\n  - {id: a, score: total, below: 50, after: a, actions: []}\n",
            ("triggers[0]", "after"),
        ),
        ("groups: {engagement: {max: 5, min: 10}}\n", ("engagement", "min")),
        ("stages: {order: [a, a, b]}\n", ("stages", "order")),
        (
            "grades: {fit: {group: fit, bands: {A: high}, otherwise: D}}\n",
            ("grades", "bands"),
        ),
        ("scale: {score: total, max: -5}\n", ("scale", "max")),
        (
            "actions:\n  - {id: a, on: page.hit, points: 1,"
            " active: {from: 2026-12-01, until: 2026-01-01}}\n",
            ("actions[0]", "active"),
        ),
        ("actions:\n  - {id: a, on: page.hit, points: .nan}\n", ("actions[0]", "points")),
        ("actions:\n  - {id: a, on: [], points: 1}\n", ("actions[0]", "on")),
        ("groups: {total: {}}\n", ("total",)),
        (
            "triggers:\n  - {id: a, score: total, at_least: 5, actions: [{set_stage: x}]}\n",
            ("triggers[0]", "set_stage"),
        ),
        (
            "actions:\n  - {id: a, on: page.hit, points: 1, repeat: {max: 2.5, per: 1d}}\n",
            ("actions[0]", "max"),
        ),
    ],
)
def test_semantic_mistakes(text: str, needles: tuple[str, ...]) -> None:
    err = errors_of("version: 1\n" + text)
    assert_names(err, *needles)


def test_rearm_below_on_a_below_trigger_is_one_clear_problem() -> None:
    err = errors_of(
        "version: 1\ntriggers:\n  - {id: a, score: total, below: 50, rearm_below: 60,"
        " actions: []}\n"
    )
    assert_names(err, "triggers[0]", "rearm_below")
    # a `below` trigger has no at_least: "must not be above 'at_least'" would mislead
    assert len(err.problems) == 1, str(err)


def test_ids_are_unique_across_actions_and_fit() -> None:
    # both kinds land in PointChange.rule: a shared id makes the change log ambiguous
    err = errors_of(
        """
        version: 1
        actions:
          - {id: a, on: page.hit, points: 1}
        fit:
          - {id: a, trait: title, equals: x, points: 1}
        """
    )
    assert_names(err, "fit[0]", "id")


def test_a_disabled_rule_still_makes_its_action_known() -> None:
    # "An action that no rule mentions ... is rejected": a disabled rule still mentions it;
    # pausing a rule must not turn its events into dead letters.
    r = load_rules_text(
        "version: 1\nactions:\n  - {id: a, on: trial.start, points: 1, enabled: false}\n"
    )
    assert r.is_known("trial.start")


def test_stage_rule_actions_are_known() -> None:
    r = load_rules_text(
        "version: 1\nstages:\n  order: [x]\n  rules:\n    - {on: chat.start, stage: x}\n"
    )
    assert r.is_known("chat.start")


# --- typos: "did you mean" -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "needles", "meant"),
    [
        ("grups", {}, ("grups",), "groups"),
        ("known_action", ["x"], ("known_action",), "known_actions"),
        ("groups.engagement.decya", {"half_life": "1d"}, ("engagement", "decya"), "decay"),
        ("groups.engagement.decay", {"halflife": "14d"}, ("engagement", "halflife"), "half_life"),
        ("actions.0.poins", 5, ("actions[0]", "pricing-page", "poins"), "points"),
        ("actions.0.repeat", {"cooldwn": "1h"}, ("actions[0]", "cooldwn"), "cooldown"),
        ("actions.1.repeat", {"max": 3, "pre": "1d"}, ("actions[1]", "opens", "pre"), "per"),
        ("actions.0.active", {"form": "2026-01-01"}, ("actions[0]", "form"), "from"),
        ("fit.2.trate", "x", ("fit[2]", "country", "trate"), "trait"),
        ("triggers.0.at_leats", 5, ("triggers[0]", "mql", "at_leats"), "at_least"),
        ("triggers.0.actions", [{"add_segmnt": "x"}], ("triggers[0]", "add_segmnt"), "add_segment"),
        ("stages.alow_backward", True, ("stages", "alow_backward"), "allow_backward"),
        ("stages.rules.0.stag", "awareness", ("stages.rules[0]", "stag"), "stage"),
        ("grades.engagment", {"bands": {"A": 1}, "otherwise": "B"}, ("grades",), "engagement"),
        ("grades.fit.otherwse", "D", ("grades.fit", "otherwse"), "otherwise"),
        ("scale.maxx", 5, ("scale", "maxx"), "max"),
        ("actions.4.group", "produce", ("actions[4]", "cart", "produce"), "product"),
        ("triggers.0.score", "engagment", ("triggers[0]", "engagment"), "engagement"),
        (
            "channels",
            {"sales": {"webhook": "https://x.example/h", "formt": "json"}},
            ("formt",),
            "format",
        ),
    ],
)
def test_unknown_keys_suggest_the_nearest_valid_one(
    path: str, value: object, needles: tuple[str, ...], meant: str
) -> None:
    err = errors_of(mutate(path, value))
    assert_names(err, *needles, f"did you mean {meant!r}?")


def test_a_notify_to_a_misspelt_channel_names_the_nearest() -> None:
    doc = mutate("channels", {"sales": {"webhook": "https://x.example/h"}})
    doc["triggers"][0]["actions"] = [{"notify": "slaes"}]
    assert_names(errors_of(doc), "triggers[0]", "slaes", "did you mean 'sales'?")


def test_a_key_like_no_valid_one_gets_no_guess() -> None:
    err = errors_of(mutate("colour", "blue"))
    assert "did you mean" not in str(err)
    assert_names(err, "colour", "expected one of")


def warnings_of(text: str) -> list[str]:
    return [str(w) for w in load_rules_text(textwrap.dedent(text), "rules.yaml").warnings]


def test_an_action_outside_the_vocabulary_is_a_warning_with_a_guess() -> None:
    lines = warnings_of(
        """
        version: 1
        known_actions: [chat.start]
        actions:
          - {id: pricing, on: page.hti, points: 5}
          - {id: opens, on: [email.open, emial.click], points: 1}
          - {id: chat, on: chat.strat, points: 2, enabled: false}
          - {id: fine, on: [chat.start, form.submit], points: 2}
          - {id: odd, on: zzz, points: 2}
        stages:
          order: [x]
          rules:
            - {on: cart.ad, stage: x}
        """
    )
    assert lines == [
        "rules.yaml: warning: actions[0] (pricing): field 'on': 'page.hti' is not a standard "
        "action nor in known_actions; did you mean 'page.hit'? (if it is yours, add it to "
        "known_actions)",
        "rules.yaml: warning: actions[1] (opens): field 'on': 'emial.click' is not a standard "
        "action nor in known_actions; did you mean 'email.click'? (if it is yours, add it to "
        "known_actions)",
        "rules.yaml: warning: actions[2] (chat): field 'on': 'chat.strat' is not a standard "
        "action nor in known_actions; did you mean 'chat.start'? (if it is yours, add it to "
        "known_actions)",
        "rules.yaml: warning: actions[4] (odd): field 'on': 'zzz' is not a standard "
        "action nor in known_actions (if it is yours, add it to known_actions)",
        "rules.yaml: warning: stages.rules[0]: field 'on': 'cart.ad' is not a standard "
        "action nor in known_actions; did you mean 'cart.add'? (if it is yours, add it to "
        "known_actions)",
    ]


def test_the_good_file_and_the_example_have_no_warnings(example_rules_path: Path) -> None:
    assert load_rules_text(GOOD).warnings == ()
    assert load_rules(example_rules_path).warnings == ()


def test_names_the_rules_repeat_are_one_object(example_rules_path: Path) -> None:
    """Every group name, trigger score and rule id a rules file writes is one (interned)
    object, so the engine's dicts keyed by them find them by identity: a contact's groups
    are keyed by the awarding rule's group, looked up by the rules' group names."""
    rules = load_rules(example_rules_path)
    names = {name: name for name in rules.groups}
    for r in [*rules.actions, *rules.fit]:
        assert r.group is names[r.group], r.id
    for trigger in rules.triggers:
        if trigger.score in names:
            assert trigger.score is names[trigger.score], trigger.id
    assert rules.actions[0].id is load_rules(example_rules_path).actions[0].id
