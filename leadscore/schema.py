"""JSON Schema (draft 2020-12) of the rules file, for editors and CI (`leadscore schema`).

The loader in :mod:`leadscore.rules` is the authority and also checks what a schema cannot
(unique ids, that a group or stage named somewhere is declared, that regexes compile and
run on RE2). The
schema's job is earlier feedback: with the yaml-language-server modeline

    # yaml-language-server: $schema=./rules.schema.json

an editor completes keys, shows the ``description`` of each field on hover and underlines a
typo before anyone runs ``leadscore check``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leadscore.durations import MAX_WEEKS, max_in
from leadscore.rules import MAX_HITS, MAX_POINTS, MAX_REPEAT_MAX, MAX_SCORE


def _at_most(n: int) -> str:
    """A regex for decimal numbers (leading zeros and a fraction allowed) of value <= ``n``."""
    digits = str(n)
    below = []  # positive integers under n, without leading zeros
    if len(digits) > 1:
        below.append(rf"[1-9]\d{{0,{len(digits) - 2}}}")
    for i, d in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(d) > low:
            rest = len(digits) - i - 1
            tail = rf"\d{{{rest}}}" if rest else ""
            below.append(f"{digits[:i]}[{low}-{int(d) - 1}]{tail}")
    under = "|".join(["0+", *[f"0*{b}" for b in below]])
    return rf"(?:(?:{under})(?:\.\d+)?|0*{digits}(?:\.0+)?)"


# A number and a unit, at most MAX_WEEKS weeks (the loader's bound: leadscore.durations).
DURATION_PATTERN = "^(?:" + "|".join(f"{_at_most(max_in(unit))}{unit}" for unit in "smhdw") + ")$"
_ZERO_DURATION = r"^0+(\.0+)?[smhdw]$"
_INSTANT_PATTERN = r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})?)?$"
TRIGGER_ACTIONS: dict[str, str] = {
    "notify": "Tell a channel, e.g. `sales`: `leadscore deliver` POSTs the firing to the "
    "channel's webhook (declare it under `channels`).",
    "add_segment": "Put the contact in this segment (a list your tools can pull).",
    "remove_segment": "Take the contact out of this segment.",
    "add_tag": "Add a free-form tag to the contact.",
    "remove_tag": "Remove a tag from the contact.",
    "set_stage": "Move the contact to this buying stage (one of `stages.order`).",
    "webhook": "POST the trigger record to this URL (https; signed with "
    "$LEADSCORE_WEBHOOK_SECRET by `leadscore deliver`).",
}


# The loader's bounds on numbers (leadscore.rules), stated for editors too.
_POINTS = {"minimum": -MAX_POINTS, "maximum": MAX_POINTS}
_SCORE = {"minimum": -MAX_SCORE, "maximum": MAX_SCORE}


def _s(kind: str | list[str], title: str, description: str, **extra: Any) -> dict[str, Any]:
    """A leaf schema with the title and description editors show on hover."""
    return {"type": kind, "title": title, "description": description, **extra}


def _duration(title: str, description: str) -> dict[str, Any]:
    return _s(
        "string",
        title,
        description + " A number and a unit: s, m, h, d or w (`30s`, `15m`, `2h`, `1d`, `2w`); "
        f"at most {MAX_WEEKS}w ({MAX_WEEKS * 7}d, about 10 years).",
        pattern=DURATION_PATTERN,
        # Zero would mean "no window at all"; the loader refuses it, so refuse it here too.
        **{"not": {"pattern": _ZERO_DURATION}},
        examples=["30m", "1d", "2w"],
    )


_NAME = {"type": "string", "minLength": 1}
_SCALAR = {"type": ["string", "number", "boolean"]}


def _action_names(title: str, description: str) -> dict[str, Any]:
    return {
        "title": title,
        "description": description,
        "oneOf": [
            {**_NAME, "description": "One action name, e.g. `page.hit`."},
            {
                "type": "array",
                "description": "Any of these action names.",
                "items": _NAME,
                "minItems": 1,
            },
        ],
        "examples": ["page.hit", ["email.open", "email.click"]],
    }


def _where() -> dict[str, Any]:
    value = {
        "description": "Text is a case-insensitive glob (`*/pricing*`); numbers and true/false "
        "must be equal; a list matches any of its entries.",
        "oneOf": [
            _SCALAR,
            {"type": "array", "items": _SCALAR, "minItems": 1},
        ],
    }
    return {
        "type": "object",
        "title": "Only when",
        "description": "Conditions on the event's props, all of which must hold. Keys are "
        "prop names or dotted paths into nested props (`utm.source`).",
        "propertyNames": {"minLength": 1},
        "additionalProperties": value,
        "examples": [{"url": "*/pricing*"}, {"form": ["demo-request", "contact"]}],
    }


def _group() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "Score group",
        "description": "A separate score, e.g. engagement or fit; `total` adds them all up.",
        "additionalProperties": False,
        "properties": {
            "description": _s("string", "Description", "What this score means."),
            "decay": {
                "title": "Decay",
                "description": "How points fade: a half-life, or each award expiring whole "
                "after a while. Leave out for points that never fade.",
                "oneOf": [
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["half_life"],
                        "properties": {
                            "half_life": _duration(
                                "Half-life", "The score halves every this long without news."
                            )
                        },
                    },
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["expire_after"],
                        "properties": {
                            "expire_after": _duration(
                                "Expire after",
                                "Each award is dropped this long after it was given.",
                            )
                        },
                    },
                ],
            },
            "max": _s("number", "Maximum", "The score never goes above this (a cap).", **_SCORE),
            "min": _s("number", "Minimum", "The score never goes below this (a floor).", **_SCORE),
        },
    }


def _point_action() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "Point action",
        "description": "Award points when a contact does something.",
        "additionalProperties": False,
        "required": ["id", "on", "points"],
        "properties": {
            "id": _s(
                "string", "Id", "Unique and stable: the change log refers to it.", minLength=1
            ),
            "name": _s("string", "Name", "A human name for reports."),
            "description": _s("string", "Description", "Why this action is worth points."),
            "category": _s("string", "Category", "Free-form grouping for reports."),
            "on": _action_names("On", "The action(s) that can earn these points."),
            "where": _where(),
            "points": _s("number", "Points", "Points to add; may be negative or zero.", **_POINTS),
            "group": _s(
                "string",
                "Group",
                "Which score gets the points. Default: `engagement` if declared, else the "
                "first group.",
                minLength=1,
            ),
            "repeat": {
                "title": "Repeat",
                "description": "How often a contact can earn these points.",
                "default": False,
                "oneOf": [
                    {
                        "type": "boolean",
                        "description": "`false`: once ever (default); `true`: every time.",
                    },
                    {
                        "type": "object",
                        "description": "At most `max` times in any window of `per`.",
                        "additionalProperties": False,
                        "required": ["max", "per"],
                        "properties": {
                            "max": _s(
                                "integer",
                                "Max",
                                "Awards allowed per window.",
                                minimum=1,
                                maximum=MAX_REPEAT_MAX,
                            ),
                            "per": _duration("Per", "The sliding window."),
                        },
                    },
                    {
                        "type": "object",
                        "description": "Again only once this long has passed since the last award.",
                        "additionalProperties": False,
                        "required": ["cooldown"],
                        "properties": {
                            "cooldown": _duration("Cooldown", "Quiet time between awards."),
                        },
                    },
                ],
            },
            "hits": _s(
                "integer",
                "Hits",
                "Award only once the contact has done this N times (this time included).",
                minimum=1,
                maximum=MAX_HITS,
            ),
            "returns_within": _duration(
                "Returns within",
                "Award only if the previous matching event was at most this long ago.",
            ),
            "returns_after": _duration(
                "Returns after",
                "Award only if the previous matching event was at least this long ago.",
            ),
            "active": {
                "type": "object",
                "title": "Active",
                "description": "Only events in this period count (inclusive, event time). "
                "A bare `until` date means the end of that day.",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": {
                    "from": _s(
                        "string",
                        "From",
                        "An RFC 3339 date or date-time.",
                        pattern=_INSTANT_PATTERN,
                    ),
                    "until": _s(
                        "string",
                        "Until",
                        "An RFC 3339 date or date-time.",
                        pattern=_INSTANT_PATTERN,
                    ),
                },
            },
            "enabled": _s(
                "boolean", "Enabled", "Set to false to keep a rule without using it.", default=True
            ),
        },
    }


def _fit_rule() -> dict[str, Any]:
    scalar_list = {"type": "array", "items": _SCALAR, "minItems": 1}
    matchers: dict[str, dict[str, Any]] = {
        "equals": {
            **_SCALAR,
            "title": "Equals",
            "description": "The trait equals this (text ignores case).",
        },
        "in": {**scalar_list, "title": "In", "description": "The trait is one of these."},
        "matches": _s(
            "string",
            "Matches",
            "A regular expression searched in the trait; `(?i)` ignores case.",
            format="regex",
        ),
        "between": {
            "type": "array",
            "title": "Between",
            "description": "`[low, high]`, inclusive: the trait is a number in this range.",
            "prefixItems": [{"type": "number"}, {"type": "number"}],
            "items": False,
            "minItems": 2,
        },
        "exists": _s("boolean", "Exists", "`true`: the trait has a value; `false`: it has none."),
    }
    return {
        "type": "object",
        "title": "Fit rule",
        "description": "Points for who the contact is (their traits), not what they do. "
        "Exactly one test: equals, in, matches, between or exists.",
        "additionalProperties": False,
        "required": ["id", "trait", "points"],
        "properties": {
            "id": _s("string", "Id", "Unique and stable.", minLength=1),
            "description": _s("string", "Description", "Why this trait matters."),
            "trait": _s(
                "string",
                "Trait",
                "A trait name or dotted path (`company.size`).",
                minLength=1,
            ),
            "points": _s(
                "number", "Points", "Points while the test holds; may be negative.", **_POINTS
            ),
            "group": _s("string", "Group", "Which score gets the points. Default: `fit`."),
            **matchers,
        },
        "oneOf": [{"required": [name]} for name in matchers],
    }


def _trigger() -> dict[str, Any]:
    action_maps = [
        {
            "type": "object",
            "title": kind,
            "description": text,
            "additionalProperties": False,
            "required": [kind],
            "properties": {
                kind: {
                    **_NAME,
                    "description": text,
                    **({"format": "uri", "pattern": "^https?://"} if kind == "webhook" else {}),
                }
            },
        }
        for kind, text in TRIGGER_ACTIONS.items()
    ]
    return {
        "type": "object",
        "title": "Trigger",
        "description": "Do something when a score crosses a threshold: `at_least` fires once "
        "when the score reaches it, `below` when it drops under it.",
        "additionalProperties": False,
        "required": ["id", "actions"],
        "properties": {
            "id": _s("string", "Id", "Unique; other triggers name it in `after`.", minLength=1),
            "name": _s("string", "Name", "A human name for reports."),
            "description": _s("string", "Description", "What this trigger is for."),
            "score": _s(
                "string",
                "Score",
                "`total` (default), a group name, or the name `predict` gives the likelihood "
                "(0-100).",
                minLength=1,
                default="total",
            ),
            "at_least": _s(
                "number", "At least", "Fire once when the score reaches this.", **_SCORE
            ),
            "below": _s(
                "number",
                "Below",
                "Fire when the score drops under this (events or decay).",
                **_SCORE,
            ),
            "rearm_below": _s(
                "number",
                "Re-arm below",
                "With `at_least`: allow firing again once the score fell under this.",
                **_SCORE,
            ),
            "after": _s(
                "string",
                "After",
                "With `below`: only if this other trigger fired since this one last fired.",
                minLength=1,
            ),
            "actions": {
                "type": "array",
                "title": "Actions",
                "description": "What to do, in order; each item is a one-key map.",
                "items": {"oneOf": action_maps},
                "examples": [[{"notify": "sales"}, {"add_segment": "mql"}]],
            },
        },
        "oneOf": [{"required": ["at_least"]}, {"required": ["below"]}],
        "dependentRequired": {"rearm_below": ["at_least"], "after": ["below"]},
    }


def _channel() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "Channel",
        "description": "Where `notify: <name>` goes. Secrets live in environment variables, "
        "never in this file.",
        "additionalProperties": False,
        "properties": {
            "webhook": _s(
                "string",
                "Webhook",
                "The URL the deliverer POSTs to (https; plain http only to loopback or to "
                "hosts allowed with --allow-http).",
                format="uri",
                pattern="^https?://",
            ),
            "webhook_env": _s(
                "string",
                "Webhook variable",
                "Instead of `webhook`: the environment variable holding the URL, for URLs "
                "that are secrets themselves (Slack incoming webhooks).",
                pattern=_ENV_PATTERN,
            ),
            "secret_env": _s(
                "string",
                "Secret variable",
                "The environment variable holding the HMAC secret that signs each body "
                "(X-Leadscore-Signature). Required for json channels.",
                pattern=_ENV_PATTERN,
            ),
            "format": _s(
                "string",
                "Format",
                "`json` (default): the trigger record with its delivery id; `slack`: an "
                "incoming-webhook `{text: ...}` sentence.",
                enum=["json", "slack"],
                default="json",
            ),
            "description": _s("string", "Description", "Who reads this channel."),
        },
        "oneOf": [{"required": ["webhook"]}, {"required": ["webhook_env"]}],
    }


_ENV_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _stages() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "Buying stages",
        "description": "Where the contact is in the buying process, moved by their actions.",
        "additionalProperties": False,
        "required": ["order"],
        "properties": {
            "order": {
                "type": "array",
                "title": "Order",
                "description": "Stage names from earliest to latest.",
                "items": _NAME,
                "uniqueItems": True,
                "examples": [["awareness", "investigation", "decision", "action"]],
            },
            "allow_backward": _s(
                "boolean",
                "Allow backward",
                "If false (default) a contact only ever moves to a later stage.",
                default=False,
            ),
            "rules": {
                "type": "array",
                "title": "Stage rules",
                "description": "An event matching `on` and `where` moves the contact to `stage`.",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["on", "stage"],
                    "properties": {
                        "on": _action_names("On", "The action(s) that move the contact."),
                        "where": _where(),
                        "stage": _s("string", "Stage", "One of `order`.", minLength=1),
                    },
                },
            },
        },
    }


def _bands(title: str, default_group: str) -> dict[str, Any]:
    return {
        "type": "object",
        "title": title,
        "description": "The first band whose minimum the score meets gives the grade.",
        "additionalProperties": False,
        "required": ["bands", "otherwise"],
        "properties": {
            "group": _s(
                "string",
                "Group",
                f"The score graded. Default: `{default_group}`.",
                default=default_group,
            ),
            "bands": {
                "type": "object",
                "title": "Bands",
                "description": "Grade label to minimum score, e.g. `{A: 40, B: 20}`.",
                "minProperties": 1,
                "additionalProperties": {"type": "number", **_SCORE},
            },
            "otherwise": _s("string", "Otherwise", "The grade when no band is met."),
        },
    }


def rules_json_schema() -> dict[str, Any]:
    """The rules file format of docs/ARCHITECTURE.md as a draft 2020-12 JSON Schema."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "leadscore rules",
        "description": "Lead scoring rules: point actions, fit rules, triggers, stages, "
        "grades. Checked fully by `leadscore check`.",
        "type": "object",
        "additionalProperties": False,
        "required": ["version"],
        "properties": {
            "version": {
                "const": 1,
                "title": "Version",
                "description": "The rules format version; always 1 for now.",
            },
            "known_actions": {
                "type": "array",
                "title": "Known actions",
                "description": "Extra action names to accept even though no rule scores "
                "them; other unknown actions are rejected as `unknown_action`.",
                "items": _NAME,
            },
            "groups": {
                "type": "object",
                "title": "Score groups",
                "description": "Separate scores. Default: `{engagement: {}, fit: {}}`.",
                "minProperties": 1,
                "propertyNames": {"minLength": 1, "not": {"const": "total"}},
                "additionalProperties": _group(),
            },
            "actions": {
                "type": "array",
                "title": "Point actions",
                "description": "Points for what contacts do. Ids must be unique.",
                "items": _point_action(),
            },
            "fit": {
                "type": "array",
                "title": "Fit rules",
                "description": "Points for who contacts are. Ids must be unique.",
                "items": _fit_rule(),
            },
            "triggers": {
                "type": "array",
                "title": "Triggers",
                "description": "Automatic actions on score thresholds. Ids must be unique.",
                "items": _trigger(),
            },
            "channels": {
                "type": "object",
                "title": "Channels",
                "description": "Delivery channels that `notify` actions name; once this "
                "section exists, every `notify` must name one of them.",
                "propertyNames": {"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
                "additionalProperties": _channel(),
            },
            "stages": _stages(),
            "grades": {
                "type": "object",
                "title": "Grades",
                "description": "A letter for fit and a band for engagement, shown together "
                "as e.g. `A1`.",
                "additionalProperties": False,
                "properties": {
                    "fit": _bands("Fit grade", "fit"),
                    "engagement": _bands("Engagement grade", "engagement"),
                },
            },
            "predict": {
                "type": "object",
                "title": "Predict",
                "description": "Give every contact a likelihood to convert (0-100, a calibrated "
                "probability in percent) from a model trained by `leadscore train`. It is a "
                "top-level field of the contact, not a group: it is not added to `total`.",
                "additionalProperties": False,
                "required": ["model"],
                "properties": {
                    "model": _s(
                        "string",
                        "Model",
                        "The model file (JSON), relative to this rules file.",
                        minLength=1,
                    ),
                    "as": _s(
                        "string",
                        "As",
                        "The contact field holding the likelihood; triggers watch it with "
                        "`score: <as>`.",
                        minLength=1,
                        default="likelihood",
                    ),
                },
            },
            "scale": {
                "type": "object",
                "title": "Scale",
                "description": "Report a 0-100 score: clamp(score / max * 100, 0, 100).",
                "additionalProperties": False,
                "required": ["max"],
                "properties": {
                    "score": _s(
                        "string",
                        "Score",
                        "`total` (default) or a group name.",
                        minLength=1,
                        default="total",
                    ),
                    "max": _s(
                        "number",
                        "Max",
                        "The score that counts as 100.",
                        exclusiveMinimum=0,
                        maximum=MAX_SCORE,
                    ),
                },
            },
        },
    }


def schema_text() -> str:
    """The schema as stable, indented JSON text (what `leadscore schema` prints)."""
    return json.dumps(rules_json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: str | Path) -> Path:
    """Write the schema to ``path`` so editors can point at a file; returns the path."""
    target = Path(path)
    target.write_text(schema_text(), encoding="utf-8")
    return target
