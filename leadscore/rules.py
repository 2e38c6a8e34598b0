"""Load, validate and compile a rules file.

Validation collects every problem instead of stopping at the first, because the person fixing
the file is a marketing ops editor who wants the whole list at once. Compilation turns the
YAML into small slotted objects indexed by action name, so the engine does no parsing and no
lookups by rule id per event.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

from leadscore.accel import restore_slots
from leadscore.channels import Channel, parse_channels, url_problem
from leadscore.durations import parse_duration
from leadscore.events import STANDARD_ACTIONS, parse_ts
from leadscore.matchers import (
    Condition,
    Matcher,
    Predicate,
    any_test,
    compile_matcher,
    compile_where,
    inline_form,
    lowered,
    scalar_test,
)
from leadscore.model import ACTION_COUNTER_PREFIX, Model, ModelError, load_model
from leadscore.patterns import PatternError, compile_search
from leadscore.suggest import did_you_mean

TOTAL = "total"
# The fields of a contact's view (Engine.view, readmodel.view_at, records.view_line), in order.
VIEW_FIELDS = (
    "contact",
    "scores",
    "total",
    "normalized",
    "grade",
    "stage",
    "segments",
    "tags",
    "updated_at",
    "as_of",
)
# Keys of a contact's read model: a prediction's `as` name must not shadow one (``decay`` is
# the stored document's input for readers).
READ_MODEL_KEYS = frozenset(VIEW_FIELDS) | {"decay"}
TRIGGER_ACTION_KINDS = (
    "notify",
    "add_segment",
    "remove_segment",
    "add_tag",
    "remove_tag",
    "set_stage",
    "webhook",
)

# Bounds on the numbers a rules file gives, checked at load (issue 11): a score stays finite
# (1e6 points a rule can never overflow a float), and per-contact state stays small.
MAX_POINTS = 1e6  # points of one action or fit rule, either sign
MAX_SCORE = 1e9  # caps, thresholds, grade bands, the scale's max: either sign
MAX_HITS = 1_000_000  # a counter per contact and rule
MAX_REPEAT_MAX = 1000  # {max: N, per: W} keeps up to N award times per contact and rule

# Repeat kinds, as small ints because the engine branches on them per event.
REPEAT_EVERY, REPEAT_ONCE, REPEAT_WINDOW, REPEAT_COOLDOWN = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding in a rules file. ``level`` "warning": the file loads, but looks mistaken."""

    file: str
    where: str
    field: str
    message: str
    level: str = "error"

    def __str__(self) -> str:
        level = "warning: " if self.level == "warning" else ""
        place = f"{self.where}: " if self.where else ""
        field = f"field '{self.field}': " if self.field else ""
        return f"{self.file}: {level}{place}{field}{self.message}"


class RulesError(Exception):
    """Every problem found in a rules file, one line each."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass  # slots=True when interpreted (restore_slots below); a C type compiled
class GroupSpec:
    name: str
    half_life: float | None = None
    expire_after: float | None = None
    max: float | None = None
    min: float | None = None

    @property
    def decays(self) -> bool:
        return self.half_life is not None or self.expire_after is not None


@dataclass  # slots=True when interpreted (restore_slots below); a C type compiled
class ActionRule:
    id: str
    on: tuple[str, ...]
    points: float
    group: str
    where: tuple[Condition, ...] = ()
    repeat: int = REPEAT_ONCE
    repeat_max: int = 0
    repeat_per: float = 0.0
    cooldown: float = 0.0
    hits: int = 0
    returns_within: float | None = None
    returns_after: float | None = None
    active_from: float | None = None
    active_until: float | None = None
    name: str = ""
    description: str = ""
    category: str = ""
    tracked: bool = False  # set at compile time: whether the rule needs a repeat tracker
    match: Callable[[dict[str, Any]], bool] | None = None  # all of `where`, compiled
    # `where` on one-key props as (key, needle, lowered test, raw test): compile_matcher
    # inlines these.
    conds: tuple[tuple[str, str | None, Callable[[str], bool] | None, Predicate], ...] | None = None

    @property
    def stateful(self) -> bool:
        """Whether the rule needs a repeat tracker in the contact's state."""
        return (
            self.repeat != REPEAT_EVERY
            or self.hits > 0
            or self.returns_within is not None
            or self.returns_after is not None
        )


@dataclass  # slots=True when interpreted (restore_slots below); a C type compiled
class FitRule:
    id: str
    trait: str
    test: Predicate
    points: float
    group: str


@dataclass  # slots=True when interpreted (restore_slots below); a C type compiled
class Trigger:
    id: str
    score: str
    threshold: float
    below: bool
    actions: tuple[dict[str, str], ...]
    rearm_below: float | None = None
    after: str | None = None


restore_slots(globals(), GroupSpec, ActionRule, FitRule, Trigger)


@dataclass(slots=True)
class StageRule:
    on: tuple[str, ...]
    where: tuple[Condition, ...]
    rank: int
    match: Callable[[dict[str, Any]], bool] | None = None  # all of `where`, compiled
    conds: tuple[tuple[str, str | None, Callable[[str], bool] | None, Predicate], ...] | None = None


@dataclass(slots=True)
class GradeBands:
    group: str
    bands: tuple[tuple[str, float], ...]
    otherwise: str

    def grade(self, score: float) -> str:
        for label, minimum in self.bands:
            if score >= minimum:
                return label
        return self.otherwise


@dataclass(slots=True)
class Prediction:
    """`predict: {model: FILE, as: NAME}`: every contact carries the model's likelihood."""

    model: Model
    name: str  # the read model's field and the score triggers name, e.g. "likelihood"


@dataclass(slots=True)
class Rules:
    source: str
    groups: dict[str, GroupSpec]
    actions: tuple[ActionRule, ...]
    fit: tuple[FitRule, ...]
    triggers: tuple[Trigger, ...]
    stage_order: tuple[str, ...]
    stage_rules: tuple[StageRule, ...]
    allow_backward: bool
    fit_grade: GradeBands | None
    engagement_grade: GradeBands | None
    scale_score: str | None
    scale_max: float | None
    known_actions: frozenset[str]
    by_action: dict[str, tuple[ActionRule, ...]]
    stages_by_action: dict[str, tuple[StageRule, ...]]
    # Per action name, all of its action and stage rules' `where` as one generated function.
    matchers: dict[str, Matcher] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)  # `notify:` targets
    predict: Prediction | None = None
    # What loads but looks mistaken (an `on:` outside the vocabulary): `leadscore check` shows it.
    warnings: tuple[Problem, ...] = ()

    def is_known(self, action: str) -> bool:
        return action in self.known_actions

    def summary(self) -> str:
        decaying = [g.name for g in self.groups.values() if g.decays]
        return (
            f"{self.source}: {len(self.groups)} groups ({', '.join(self.groups)}"
            f"{'; decaying: ' + ', '.join(decaying) if decaying else ''}), "
            f"{len(self.actions)} point actions on {len(self.by_action)} action names, "
            f"{len(self.fit)} fit rules, {len(self.triggers)} triggers, "
            f"{len(self.stage_order)} stages, grades {'on' if self.fit_grade else 'off'}"
        )


# --------------------------------------------------------------------------- loading


def load_rules(path: str | Path) -> Rules:
    """Read, validate and compile a rules file; raises RulesError naming every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError([Problem(source, "", "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError([Problem(source, "", "", f"cannot read: {exc}")]) from None
    return load_rules_text(text, source)


# Values a rules file may stand for, with every alias counted as a copy of its anchor. Why: a
# 500-byte file of nested anchors and aliases stands for billions of values, and walking or
# printing them took gigabytes (issue 11). example/rules.yaml is about 1,000.
MAX_YAML_VALUES = 100_000


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false (YAML 1.1 would read the key `on:` as True), and
    aliases counted as they compose: a file that expands past MAX_YAML_VALUES is refused."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.sizes: dict[int, int] = {}  # id(node) -> values it stands for, aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        alias = self.peek_event() if self.check_event(yaml.AliasEvent) else None
        node = super().compose_node(parent, index)
        size = self.sizes.get(id(node))
        if alias is not None:
            if size is None:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"the alias *{alias.anchor} is inside its own anchor",
                    alias.start_mark,
                )
            return node
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(self.sizes[id(k)] + self.sizes[id(v)] for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self.sizes[id(item)] for item in node.value)
        else:
            size = 1
        if size > MAX_YAML_VALUES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"this value stands for more than {MAX_YAML_VALUES:,} values once its aliases "
                "(*name) are expanded; write the rules out or use fewer aliases",
                node.start_mark,
            )
        self.sizes[id(node)] = size
        return node


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
# YAML 1.2 numbers: 1e3, 5e-324 and 1.5e3 (as JSON and orjson write them) are floats, where
# YAML 1.1 wants a dot and a signed exponent and reads them as text.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _interned_str(loader: _Loader, node: yaml.ScalarNode) -> str:
    """A YAML string, interned: every group name, rule and trigger id, action and trait path
    of the rules is then one object wherever it is written, so the engine's dicts keyed by
    them (a contact's groups, the rules' specs) find them by identity, not by comparing
    their characters, once per award, evaluation and view."""
    return sys.intern(loader.construct_scalar(node))  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:str", _interned_str)


def load_rules_text(text: str, source: str = "<rules>") -> Rules:
    try:
        doc = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RulesError([Problem(source, where, "", f"invalid YAML: {problem}")]) from None
    return parse_rules(doc, source)


def parse_rules(doc: object, source: str = "<rules>") -> Rules:
    return _Compiler(source).compile(doc)


# --------------------------------------------------------------------------- compiling


class _Compiler:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.channels: dict[str, Channel] = {}
        self.declared = False  # a `channels:` section exists: every notify must name one
        self.predicted: str | None = None  # predict's `as` name: a score triggers may watch
        # (where, action name) of every `on:`, checked against the vocabulary at the end.
        self.action_refs: list[tuple[str, str]] = []
        self.stage_refs: list[tuple[str, str]] = []

    def problem(self, where: str, field: str, message: str) -> None:
        self.problems.append(Problem(self.source, where, field, message))

    def keys(self, where: str, node: dict[str, Any], allowed: set[str], required: set[str]) -> None:
        for key in node:
            if key not in allowed:
                self.problem(
                    where,
                    str(key),
                    f"unknown key; {did_you_mean(key, allowed)}expected one of {sorted(allowed)}",
                )
        for key in sorted(required - node.keys()):
            self.problem(where, key, "is required")

    def compile(self, doc: object) -> Rules:
        if not isinstance(doc, dict):
            self.problem("", "", f"expected a mapping at the top level, got {_kind(doc)}")
            raise RulesError(self.problems)
        self.keys(
            "",
            doc,
            {
                "version",
                "known_actions",
                "groups",
                "actions",
                "fit",
                "triggers",
                "stages",
                "grades",
                "scale",
                "channels",
                "predict",
            },
            {"version"},
        )
        if "version" in doc and doc["version"] != 1:
            self.problem("", "version", f"expected 1, got {doc['version']!r}")

        groups = self.groups(doc.get("groups"))
        default_group = "engagement" if "engagement" in groups else next(iter(groups), "")
        stage_order, allow_backward, stage_rules = self.stages(doc.get("stages"))
        self.disabled_actions: set[str] = set()
        actions = self.actions(doc.get("actions"), groups, default_group)
        fit = self.fit_rules(doc.get("fit"), groups, {a.id for a in actions})
        self.channels = parse_channels(doc.get("channels"), self.problem)
        self.declared = "channels" in doc
        predict = self.predict(
            doc.get("predict"), groups, actions, stage_rules, doc.get("known_actions")
        )
        self.predicted = predict.name if predict is not None else None
        triggers = self.triggers(doc.get("triggers"), groups, stage_order)
        fit_grade, engagement_grade = self.grades(doc.get("grades"), groups)
        scale_score, scale_max = self.scale(doc.get("scale"), groups)
        extra = self.string_list("", "known_actions", doc.get("known_actions", []))
        if self.problems:
            raise RulesError(self.problems)
        warnings = self.vocabulary_warnings(STANDARD_ACTIONS | set(extra))

        by_action: dict[str, list[ActionRule]] = {}
        for rule in actions:
            for name in rule.on:
                by_action.setdefault(name, []).append(rule)
        stages_by_action: dict[str, list[StageRule]] = {}
        for stage_rule in stage_rules:
            for name in stage_rule.on:
                stages_by_action.setdefault(name, []).append(stage_rule)
        known = STANDARD_ACTIONS | set(by_action) | set(stages_by_action) | set(extra)
        known |= self.disabled_actions
        return Rules(
            source=self.source,
            groups=groups,
            actions=tuple(actions),
            fit=tuple(fit),
            triggers=tuple(triggers),
            stage_order=stage_order,
            stage_rules=tuple(stage_rules),
            allow_backward=allow_backward,
            fit_grade=fit_grade,
            engagement_grade=engagement_grade,
            scale_score=scale_score,
            scale_max=scale_max,
            known_actions=frozenset(known),
            by_action={k: tuple(v) for k, v in by_action.items()},
            stages_by_action={k: tuple(v) for k, v in stages_by_action.items()},
            matchers={
                name: compile_matcher(
                    name, tuple(by_action.get(name, ())), tuple(stages_by_action.get(name, ()))
                )
                for name in {**by_action, **stages_by_action}
            },
            channels=self.channels,
            predict=predict,
            warnings=tuple(warnings),
        )

    def vocabulary_warnings(self, vocabulary: frozenset[str] | set[str]) -> list[Problem]:
        """An `on:` naming neither a standard action nor one of `known_actions` is most likely
        a typo: its rule would wait for events that never come, silently."""
        out = []
        for where, name in [*self.action_refs, *self.stage_refs]:
            if name in vocabulary:
                continue
            guess = did_you_mean(name, vocabulary).rstrip()
            out.append(
                Problem(
                    self.source,
                    where,
                    "on",
                    f"{name!r} is not a standard action nor in known_actions"
                    f"{'; ' + guess if guess else ''} (if it is yours, add it to known_actions)",
                    "warning",
                )
            )
        return out

    # ---- groups

    def groups(self, node: object) -> dict[str, GroupSpec]:
        if node is None:
            return {"engagement": GroupSpec("engagement"), "fit": GroupSpec("fit")}
        if not isinstance(node, dict):
            self.problem("groups", "", f"expected a mapping of group names, got {_kind(node)}")
            return {}
        if not node:
            self.problem(
                "groups",
                "",
                "declares no group; declare at least one, or leave "
                "'groups' out for the default engagement and fit",
            )
            return {}
        groups: dict[str, GroupSpec] = {}
        for name, spec in node.items():
            where = f"groups.{name}"
            if not isinstance(name, str) or not name or name == TOTAL:
                self.problem(
                    where, "", "a group name must be a non-empty string other than 'total'"
                )
                continue
            group = GroupSpec(name)
            spec = {} if spec is None else spec
            if not isinstance(spec, dict):
                self.problem(where, "", f"expected a mapping, got {_kind(spec)}")
                continue
            self.keys(where, spec, {"decay", "max", "min", "description"}, set())
            if "decay" in spec:
                decay = spec["decay"]
                if not isinstance(decay, dict) or len(decay) != 1:
                    self.problem(where, "decay", "expected {half_life: 14d} or {expire_after: 90d}")
                elif "half_life" in decay:
                    group.half_life = self.duration(where, "decay.half_life", decay["half_life"])
                elif "expire_after" in decay:
                    group.expire_after = self.duration(
                        where, "decay.expire_after", decay["expire_after"]
                    )
                else:
                    key = next(iter(decay))
                    guess = did_you_mean(key, {"half_life", "expire_after"})
                    self.problem(
                        where,
                        f"decay.{key}",
                        f"unknown key; {guess}expected half_life or expire_after",
                    )
            group.max = self.number(where, "max", spec.get("max"), optional=True)
            group.min = self.number(where, "min", spec.get("min"), optional=True)
            if group.max is not None and group.min is not None and group.min > group.max:
                self.problem(where, "min", f"min {group.min:g} is above max {group.max:g}")
            groups[name] = group
        return groups

    # ---- point actions

    def actions(
        self, node: object, groups: dict[str, GroupSpec], default_group: str
    ) -> list[ActionRule]:
        items = self.list_of_maps("actions", node)
        seen: set[str] = set()
        compiled: list[ActionRule] = []
        allowed = {
            "id",
            "name",
            "description",
            "category",
            "on",
            "where",
            "points",
            "group",
            "repeat",
            "hits",
            "returns_within",
            "returns_after",
            "active",
            "enabled",
        }
        for i, item in items:
            rid = item.get("id")
            where = f"actions[{i}]" + (f" ({rid})" if isinstance(rid, str) else "")
            self.keys(where, item, allowed, {"id", "on", "points"})
            if not isinstance(rid, str) or not rid:
                if "id" in item:
                    self.problem(where, "id", f"expected a non-empty string, got {_kind(rid)}")
                continue
            if rid in seen:
                self.problem(where, "id", f"duplicate id {rid!r}; ids must be unique")
            if rid.startswith(ACTION_COUNTER_PREFIX):  # where the state counts actions
                self.problem(where, "id", "an id cannot start with a NUL character")
            seen.add(rid)
            on = self.action_names(where, item.get("on"))
            self.action_refs.extend((where, name) for name in on)
            points = self.number(where, "points", item.get("points"), limit=MAX_POINTS)
            group = item.get("group", default_group)
            self.group_ref(where, "group", group, groups)
            enabled = item.get("enabled", True)
            if not isinstance(enabled, bool):
                self.problem(where, "enabled", f"expected true or false, got {enabled!r}")
            rule = ActionRule(
                id=rid,
                on=on,
                points=points or 0.0,
                group=str(group),
                where=self.where(where, item.get("where")),
                name=str(item.get("name", "")),
                description=str(item.get("description", "")),
                category=str(item.get("category", "")),
            )
            self.repeat(where, item.get("repeat", False), rule)
            if "hits" in item:
                rule.hits = self.count(where, "hits", item["hits"], MAX_HITS) or 0
            if "returns_within" in item:
                rule.returns_within = self.duration(where, "returns_within", item["returns_within"])
            if "returns_after" in item:
                rule.returns_after = self.duration(where, "returns_after", item["returns_after"])
            if "active" in item:
                self.active(where, item["active"], rule)
            rule.tracked = rule.stateful
            rule.match = compile_where(rule.where)
            rule.conds = inline_form(rule.where)
            if enabled is not False:
                compiled.append(rule)
            else:
                self.disabled_actions.update(on)  # switched off, still a known action
        return compiled

    def repeat(self, where: str, node: object, rule: ActionRule) -> None:
        expected = "expected false, true, {max: N, per: 1d} or {cooldown: 30m}"
        allowed = {"max", "per", "cooldown"}
        if isinstance(node, dict) and not set(node) <= allowed:
            for key in node:
                if key not in allowed:
                    guess = did_you_mean(key, allowed)
                    self.problem(where, f"repeat.{key}", f"unknown key; {guess}{expected}")
            return
        if node is False:
            rule.repeat = REPEAT_ONCE
        elif node is True:
            rule.repeat = REPEAT_EVERY
        elif isinstance(node, dict) and set(node) == {"max", "per"}:
            n = self.count(where, "repeat.max", node["max"], MAX_REPEAT_MAX)
            if n is not None:
                rule.repeat, rule.repeat_max = REPEAT_WINDOW, n
                rule.repeat_per = self.duration(where, "repeat.per", node["per"]) or 0.0
        elif isinstance(node, dict) and set(node) == {"cooldown"}:
            rule.repeat = REPEAT_COOLDOWN
            rule.cooldown = self.duration(where, "repeat.cooldown", node["cooldown"]) or 0.0
        else:
            self.problem(where, "repeat", f"{expected}, got {node!r}")

    def active(self, where: str, node: object, rule: ActionRule) -> None:
        if not isinstance(node, dict) or not node:
            self.problem(where, "active", f"expected {{from, until}}, got {_kind(node)}")
            return
        self.keys(f"{where} active", node, {"from", "until"}, set())
        if "from" in node:
            rule.active_from = self.instant(where, "active.from", node["from"])
        if "until" in node:
            rule.active_until = self.instant(where, "active.until", node["until"], end=True)
        if (
            rule.active_from is not None
            and rule.active_until is not None
            and rule.active_from > rule.active_until
        ):
            self.problem(where, "active", "'from' is after 'until'")

    # ---- where filters

    def where(self, where: str, node: object) -> tuple[Condition, ...]:
        if node is None:
            return ()
        if not isinstance(node, dict):
            self.problem(where, "where", f"expected a mapping of prop paths, got {_kind(node)}")
            return ()
        conditions = []
        for path, expected in node.items():
            if not isinstance(path, str) or not path:
                self.problem(where, "where", f"a prop path must be text, got {path!r}")
                continue
            test = self.matcher(where, f"where.{path}", expected)
            if test is not None:
                low, needle = lowered(expected)
                conditions.append(Condition(tuple(path.split(".")), test, low, needle, expected))
        return tuple(conditions)

    def matcher(self, where: str, field: str, expected: object) -> Predicate | None:
        if isinstance(expected, list):
            tests = [self.matcher(where, field, e) for e in expected]
            if not tests:
                self.problem(where, field, "an empty list matches nothing")
            return any_test(tuple(t for t in tests if t is not None))
        test = scalar_test(expected)
        if test is not None:
            return test
        self.problem(
            where,
            field,
            f"expected text (a glob), a number, true/false or a list, got {expected!r}",
        )
        return None

    # ---- fit

    def fit_rules(
        self, node: object, groups: dict[str, GroupSpec], action_ids: set[str]
    ) -> list[FitRule]:
        items = self.list_of_maps("fit", node)
        seen: set[str] = set()
        compiled = []
        tests = {"equals", "in", "matches", "between", "exists"}
        for i, item in items:
            rid = item.get("id")
            where = f"fit[{i}]" + (f" ({rid})" if isinstance(rid, str) else "")
            self.keys(
                where,
                item,
                {"id", "trait", "points", "group", "description"} | tests,
                {"id", "trait", "points"},
            )
            if not isinstance(rid, str) or not rid:
                continue
            if rid in seen or rid in action_ids:
                self.problem(where, "id", f"duplicate id {rid!r}; ids must be unique")
            seen.add(rid)
            trait = item.get("trait")
            if not isinstance(trait, str) or not trait:
                self.problem(where, "trait", f"expected a trait name, got {trait!r}")
                continue
            group = item.get("group", "fit")
            self.group_ref(where, "group", group, groups)
            present = [k for k in item if k in tests]
            if len(present) != 1:
                self.problem(where, "", f"expected exactly one of {sorted(tests)}, got {present}")
                continue
            test = self.fit_test(where, present[0], item[present[0]])
            points = self.number(where, "points", item.get("points"), limit=MAX_POINTS)
            if test is not None and points is not None:
                compiled.append(FitRule(rid, trait, test, points, str(group)))
        return compiled

    def fit_test(self, where: str, kind: str, arg: object) -> Predicate | None:
        if kind == "exists":
            if not isinstance(arg, bool):
                self.problem(where, "exists", f"expected true or false, got {arg!r}")
                return None
            return lambda v: (v not in (None, "")) is arg
        if kind == "equals":
            return _equals(arg)
        if kind == "in":
            if not isinstance(arg, list) or not arg:
                self.problem(where, "in", f"expected a non-empty list, got {_kind(arg)}")
                return None
            # Text compares case-insensitively, so one set lookup decides a text value; only
            # a number or a flag needs the other options.
            folded = frozenset(a.casefold() for a in arg if isinstance(a, str))
            options = [_equals(a) for a in arg if not isinstance(a, str)]
            return lambda v: (
                v.casefold() in folded if isinstance(v, str) else any(t(v) for t in options)
            )
        if kind == "matches":
            if not isinstance(arg, str):
                self.problem(where, "matches", f"expected a regular expression, got {_kind(arg)}")
                return None
            try:
                search = compile_search(arg)  # RE2: linear in the input, whatever the pattern
            except PatternError as exc:
                self.problem(where, "matches", f"{arg!r}: {exc}")
                return None
            seen = search.seen  # type: ignore[attr-defined]

            def matches(v: object) -> bool:
                if v is None:
                    return False
                text = v if type(v) is str else str(v)
                found = seen.get(text)  # search's remembered answer: no call on a hit
                return search(text) if found is None else found

            return matches
        # between
        if (
            not isinstance(arg, list)
            or len(arg) != 2
            or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in arg
            )
        ):
            self.problem(where, "between", f"expected [low, high] numbers, got {arg!r}")
            return None
        lo, hi = float(arg[0]), float(arg[1])
        if lo > hi:
            self.problem(where, "between", f"low {lo:g} is above high {hi:g}")
        return lambda v: (n := _as_number(v)) is not None and lo <= n <= hi

    # ---- predict

    def predict(
        self,
        node: object,
        groups: dict[str, GroupSpec],
        actions: list[ActionRule],
        stage_rules: list[StageRule],
        extra: object,
    ) -> Prediction | None:
        """Load the model a rules file names; its path is relative to the rules file."""
        if node is None:
            return None
        if not isinstance(node, dict):
            self.problem("predict", "", f"expected {{model, as}}, got {_kind(node)}")
            return None
        self.keys("predict", node, {"model", "as"}, {"model"})
        name = node.get("as", "likelihood")
        if not isinstance(name, str) or not name:
            self.problem("predict", "as", "expected a non-empty name, e.g. likelihood")
            return None
        if name in READ_MODEL_KEYS or name in groups or name == TOTAL:
            self.problem("predict", "as", f"{name!r} is already a contact field or a group")
            return None
        file = node.get("model")
        if not isinstance(file, str) or not file:
            self.problem("predict", "model", "expected the path of a model file")
            return None
        base = Path(self.source).parent if self.source and not self.source.startswith("<") else None
        path = base / file if base is not None and not Path(file).is_absolute() else Path(file)
        try:
            model = load_model(path)
        except ModelError as exc:
            self.problem("predict", "model", str(exc))
            return None
        known = {a.id for a in actions}
        # The actions whose events can reach a contact (the others are dead-lettered).
        names = set(STANDARD_ACTIONS) | self.disabled_actions
        names.update(n for a in actions for n in a.on)
        names.update(n for r in stage_rules for n in r.on)
        if isinstance(extra, list):
            names.update(n for n in extra if isinstance(n, str))
        for feature in model.features:
            why = None
            if feature.source == "score" and feature.key not in groups:
                why = f"it reads the score of group {feature.key!r}, which these rules lack"
            elif feature.source == "rule_hits" and feature.key not in known:
                why = f"it counts hits of rule {feature.key!r}, which these rules lack"
            elif feature.source == "action_count" and feature.key not in names:
                why = (
                    f"it counts events of action {feature.key!r}, which these rules do not "
                    "accept (add it to known_actions if your events send it)"
                )
            if why:
                self.problem(
                    "predict",
                    "model",
                    f"{path}: feature {feature.name!r}: these rules cannot provide it: {why}",
                )
        # Decaying scores are summed last, so readers can bring the likelihood to a read.
        fresh = frozenset(g for g, spec in groups.items() if spec.decays)
        return Prediction(dataclasses.replace(model, fresh=fresh), name)

    # ---- triggers

    def triggers(
        self, node: object, groups: dict[str, GroupSpec], stage_order: tuple[str, ...]
    ) -> list[Trigger]:
        items = self.list_of_maps("triggers", node)
        ids = [item.get("id") for _, item in items]
        compiled = []
        seen: set[str] = set()
        allowed = {
            "id",
            "name",
            "description",
            "score",
            "at_least",
            "below",
            "rearm_below",
            "after",
            "actions",
        }
        for i, item in items:
            tid = item.get("id")
            where = f"triggers[{i}]" + (f" ({tid})" if isinstance(tid, str) else "")
            self.keys(where, item, allowed, {"id", "actions"})
            if not isinstance(tid, str) or not tid:
                continue
            if tid in seen:
                self.problem(where, "id", f"duplicate id {tid!r}; ids must be unique")
            seen.add(tid)
            score = item.get("score", TOTAL)
            if score != TOTAL and score not in groups and score != self.predicted:
                scores = [TOTAL, *groups, *([self.predicted] if self.predicted else [])]
                self.problem(
                    where,
                    "score",
                    f"unknown score {score!r}; {did_you_mean(score, scores)}"
                    f"expected 'total' or a group: {list(groups)}"
                    + (f", or the prediction {self.predicted!r}" if self.predicted else ""),
                )
            if ("at_least" in item) == ("below" in item):
                self.problem(where, "", "expected exactly one of 'at_least' or 'below'")
                continue
            below = "below" in item
            threshold = self.number(
                where, "below" if below else "at_least", item["below" if below else "at_least"]
            )
            trigger = Trigger(tid, str(score), threshold or 0.0, below, ())
            if "rearm_below" in item:
                if below:
                    self.problem(where, "rearm_below", "only 'at_least' triggers re-arm")
                trigger.rearm_below = self.number(where, "rearm_below", item["rearm_below"])
                rearm = trigger.rearm_below
                if not below and rearm is not None and threshold is not None and rearm > threshold:
                    self.problem(where, "rearm_below", "must not be above 'at_least'")
            if "after" in item:
                after = item["after"]
                if not below:
                    self.problem(where, "after", "only 'below' triggers take 'after'")
                elif after not in ids or after == tid:
                    self.problem(where, "after", f"names no other trigger: {after!r}")
                trigger.after = str(after)
            trigger.actions = self.trigger_actions(where, item.get("actions"), stage_order)
            compiled.append(trigger)
        return compiled

    def trigger_actions(
        self, where: str, node: object, stage_order: tuple[str, ...]
    ) -> tuple[dict[str, str], ...]:
        if not isinstance(node, list):
            self.problem(where, "actions", f"expected a list of one-key maps, got {_kind(node)}")
            return ()
        out = []
        for j, action in enumerate(node):
            field = f"actions[{j}]"
            if not isinstance(action, dict) or len(action) != 1:
                self.problem(
                    where, field, f"expected a one-key map like {{notify: sales}}, got {action!r}"
                )
                continue
            kind, arg = next(iter(action.items()))
            if kind not in TRIGGER_ACTION_KINDS:
                self.problem(
                    where,
                    field,
                    f"unknown action {kind!r}; {did_you_mean(kind, TRIGGER_ACTION_KINDS)}"
                    f"expected one of {list(TRIGGER_ACTION_KINDS)}",
                )
                continue
            if not isinstance(arg, str) or not arg:
                self.problem(where, f"{field}.{kind}", f"expected text, got {arg!r}")
                continue
            if kind == "set_stage" and arg not in stage_order:
                self.problem(
                    where,
                    f"{field}.set_stage",
                    f"unknown stage {arg!r}; {did_you_mean(arg, stage_order)}"
                    f"stages are {list(stage_order)}",
                )
            elif kind == "notify" and self.declared and arg not in self.channels:
                self.problem(
                    where,
                    f"{field}.notify",
                    f"unknown channel {arg!r}; {did_you_mean(arg, self.channels)}"
                    f"channels are {sorted(self.channels)}",
                )
            elif kind == "webhook" and (why := url_problem(arg)):
                self.problem(where, f"{field}.webhook", why)
            out.append({kind: arg})
        return tuple(out)

    # ---- stages, grades, scale

    def stages(self, node: object) -> tuple[tuple[str, ...], bool, list[StageRule]]:
        if node is None:
            return (), False, []
        if not isinstance(node, dict):
            self.problem("stages", "", f"expected a mapping, got {_kind(node)}")
            return (), False, []
        self.keys("stages", node, {"order", "allow_backward", "rules"}, {"order"})
        order = tuple(self.string_list("stages", "order", node.get("order", [])))
        if len(set(order)) != len(order):
            self.problem("stages", "order", "stage names must be unique")
        allow_backward = node.get("allow_backward", False)
        if not isinstance(allow_backward, bool):
            self.problem(
                "stages", "allow_backward", f"expected true or false, got {allow_backward!r}"
            )
            allow_backward = False
        rules = []
        for i, item in self.list_of_maps("stages.rules", node.get("rules")):
            where = f"stages.rules[{i}]"
            self.keys(where, item, {"on", "where", "stage"}, {"on", "stage"})
            stage = item.get("stage")
            if stage not in order:
                self.problem(
                    where,
                    "stage",
                    f"unknown stage {stage!r}; {did_you_mean(stage, order)}"
                    f"stages.order is {list(order)}",
                )
                continue
            on = self.action_names(where, item.get("on"))
            self.stage_refs.extend((where, name) for name in on)
            conditions = self.where(where, item.get("where"))
            rank = order.index(stage)
            rules.append(
                StageRule(on, conditions, rank, compile_where(conditions), inline_form(conditions))
            )
        return order, allow_backward, rules

    def grades(
        self, node: object, groups: dict[str, GroupSpec]
    ) -> tuple[GradeBands | None, GradeBands | None]:
        if node is None:
            return None, None
        if not isinstance(node, dict):
            self.problem("grades", "", f"expected a mapping, got {_kind(node)}")
            return None, None
        self.keys("grades", node, {"fit", "engagement"}, set())
        return (
            self.bands("grades.fit", node.get("fit"), groups, "fit"),
            self.bands("grades.engagement", node.get("engagement"), groups, "engagement"),
        )

    def bands(
        self, where: str, node: object, groups: dict[str, GroupSpec], default: str
    ) -> GradeBands | None:
        if node is None:
            return None
        if not isinstance(node, dict):
            self.problem(where, "", f"expected {{group, bands, otherwise}}, got {_kind(node)}")
            return None
        self.keys(where, node, {"group", "bands", "otherwise"}, {"bands", "otherwise"})
        group = node.get("group", default)
        if group != TOTAL:
            self.group_ref(where, "group", group, groups)
        bands = node.get("bands")
        if not isinstance(bands, dict) or not bands:
            self.problem(where, "bands", "expected a mapping of grade to minimum score")
            return None
        compiled = []
        for label, minimum in bands.items():
            number = self.number(where, f"bands.{label}", minimum)
            if number is not None:
                compiled.append((str(label), number))
        compiled.sort(key=lambda band: -band[1])
        return GradeBands(str(group), tuple(compiled), str(node.get("otherwise", "")))

    def scale(self, node: object, groups: dict[str, GroupSpec]) -> tuple[str | None, float | None]:
        if node is None:
            return None, None
        if not isinstance(node, dict):
            self.problem("scale", "", f"expected {{score, max}}, got {_kind(node)}")
            return None, None
        self.keys("scale", node, {"score", "max"}, {"max"})
        score = node.get("score", TOTAL)
        if score != TOTAL and score not in groups:
            self.problem(
                "scale",
                "score",
                f"unknown score {score!r}; {did_you_mean(score, {TOTAL, *groups})}"
                f"expected 'total' or a group: {list(groups)}",
            )
        maximum = self.number("scale", "max", node.get("max"))
        if maximum is not None and maximum <= 0:
            self.problem("scale", "max", f"expected a positive number, got {maximum:g}")
        return str(score), maximum

    # ---- scalar helpers

    def group_ref(
        self, where: str, field: str, group: object, groups: dict[str, GroupSpec]
    ) -> None:
        if group not in groups:
            self.problem(
                where,
                field,
                f"unknown group {group!r}; {did_you_mean(group, groups)}declared: {list(groups)}",
            )

    def list_of_maps(self, where: str, node: object) -> list[tuple[int, dict[str, Any]]]:
        if node is None:
            return []
        if not isinstance(node, list):
            self.problem(where, "", f"expected a list, got {_kind(node)}")
            return []
        out = []
        for i, item in enumerate(node):
            if isinstance(item, dict):
                out.append((i, item))
            else:
                self.problem(f"{where}[{i}]", "", f"expected a mapping, got {_kind(item)}")
        return out

    def action_names(self, where: str, node: object) -> tuple[str, ...]:
        names = [node] if isinstance(node, str) else node
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            self.problem(where, "on", f"expected an action name or a list of them, got {node!r}")
            return ()
        return tuple(names)

    def string_list(self, where: str, field: str, node: object) -> list[str]:
        if not isinstance(node, list) or not all(isinstance(x, str) and x for x in node):
            self.problem(where, field, f"expected a list of names, got {node!r}")
            return []
        return list(node)

    def number(
        self,
        where: str,
        field: str,
        value: object,
        optional: bool = False,
        limit: float = MAX_SCORE,
    ) -> float | None:
        """A finite number within +/-``limit``: scores stay finite whatever the rules say."""
        if value is None and optional:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.problem(where, field, f"expected a number, got {value!r}")
            return None
        if not -limit <= value <= limit:
            self.problem(
                where,
                field,
                f"{value:g} is out of range: expected a number from {-limit:g} to {limit:g}",
            )
            return None
        return float(value)

    def count(self, where: str, field: str, value: object, limit: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            self.problem(where, field, f"expected a whole number from 1 to {limit}, got {value!r}")
            return None
        return value

    def duration(self, where: str, field: str, value: object) -> float | None:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.problem(where, field, str(exc))
            return None

    def instant(self, where: str, field: str, value: object, end: bool = False) -> float | None:
        # YAML reads bare dates as date objects; a bare `until` date means its last second.
        if isinstance(value, datetime):
            value = value if value.tzinfo else value.replace(tzinfo=UTC)
            return value.timestamp()
        if isinstance(value, date):
            start = datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
            return start + 86399.999 if end else start
        if isinstance(value, str):
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
                try:
                    return self.instant(where, field, date.fromisoformat(value.strip()), end)
                except ValueError:
                    pass
            ts = parse_ts(value, 0.0)
            if isinstance(ts, float):
                return ts
        self.problem(where, field, f"expected an RFC 3339 date or time, got {value!r}")
        return None


def _equals(expected: object) -> Predicate:
    if isinstance(expected, str):
        folded = expected.casefold()
        return lambda v: isinstance(v, str) and v.casefold() == folded
    if isinstance(expected, bool) or expected is None:
        return lambda v: v is expected
    return lambda v: not isinstance(v, bool) and v == expected


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace(",", ""))
        except ValueError:
            return None
    return None


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
