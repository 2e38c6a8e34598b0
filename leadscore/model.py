"""A predictive model file: its format, strict loading, plain-Python evaluation and explanation.

The live path imports only this module: the flow computes a contact's likelihood to convert
from the saved parameters with a few dict lookups and one ``exp``, no scikit-learn and no
numpy. The file is JSON, versioned, and loading refuses anything that is not exactly the
expected structure, so nothing in a model file can run code (never pickle).

The model is linear in the logit, so a likelihood is explained exactly: each feature adds a
contribution, and the intercept plus every contribution is the logit. A feature is one of:

- ``trait``: a contact trait (a CRM column). Categories carry one weight per level, plus one
  for unseen levels (``other``) and one for missing values; numbers are transformed, clipped,
  standardized (one weight) and binned (one weight per bin), with their own missing weight.
- ``score``: a rules group's score at the contact's last update.
- ``rule_hits``: how many times the contact matched an action rule (while it was active).
- ``action_count``: how many events of an action the contact sent (accepted, not duplicates).

A contact's live state keeps a counter only for what the loaded model reads (a rule with a
repeat tracker counts its hits anyway): both are flat trackers in the state, an action's
under :func:`action_counter_key`, so the state format does not change and rules without a
model pay nothing.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from math import copysign, log1p
from pathlib import Path
from typing import Any

import orjson

FORMAT = "leadscore-model"
VERSION = 1
SOURCES = ("trait", "score", "rule_hits", "action_count")
TRANSFORMS = ("none", "log1p")
MAX_CATEGORY_CHARS = 256  # what a contact's state keeps of a trait (engine.MAX_TRAIT_CHARS)
# Values that mean "not filled in" in CRM exports, compared after strip() and lower().
DEFAULT_MISSING = ("", "select", "none", "null", "nan", "n/a", "na", "-")
MAX_MODEL_BYTES = 16 * 1024 * 1024
# An action's counter sits among the rules' trackers under this prefix: a NUL cannot start a
# rule id anyone writes in YAML by accident, and the rules loader refuses one that does.
ACTION_COUNTER_PREFIX = "\x00"
_MEMO_LIMIT = 4096  # distinct text values remembered per category feature


class ModelError(Exception):
    """A model file that cannot be used, naming the file and, where one is at fault, the feature."""

    def __init__(self, path: str, message: str, feature: str | None = None) -> None:
        self.path = path
        self.feature = feature
        self.message = message
        where = f"feature {feature!r}: " if feature is not None else ""
        super().__init__(f"{path}: {where}{message}")


# --------------------------------------------------------------------------- values


def category_key(value: Any, missing: frozenset[str]) -> str | None:
    """The level a raw value stands for, or None when it is missing (blank, placeholder)."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    elif isinstance(value, int | str):
        text = str(value).strip()
    else:
        return None
    if text.lower() in missing:
        return None
    return text[:MAX_CATEGORY_CHARS]


def number_value(value: Any, missing: frozenset[str] = frozenset()) -> float | None:
    """A raw value as a finite number, or None (missing, a placeholder or not a number)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        try:
            x = float(value)
        except OverflowError:  # an int beyond any float
            return None
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in missing:
            return None
        try:
            x = float(text)
        except ValueError:
            return None
    else:
        return None
    return x if math.isfinite(x) else None


def transform(kind: str, x: float) -> float:
    """The number transform before clipping: log1p keeps the sign and tames long tails."""
    if kind == "log1p":
        return math.copysign(math.log1p(abs(x)), x)
    return x


def action_counter_key(action: str) -> str:
    """Where a contact's state counts an action's events: its tracker id."""
    return ACTION_COUNTER_PREFIX + action


def counter_key(source: str, key: str) -> str:
    """The tracker id of a ``rule_hits`` or ``action_count`` feature's key."""
    return action_counter_key(key) if source == "action_count" else key


# --------------------------------------------------------------------------- features


@dataclass(slots=True)
class Feature:
    """One input of the model and how it turns into a contribution to the logit."""

    name: str
    source: str  # one of SOURCES
    key: str  # trait path, group name, rule id or action name
    kind: str  # "category" or "number"
    missing: float  # weight when the value is missing
    # category
    levels: dict[str, float]
    other: float = 0.0
    # number
    transform: str = "none"
    low: float = 0.0
    high: float = 0.0
    mean: float = 0.0
    scale: float = 1.0
    weight: float = 0.0
    edges: tuple[float, ...] = ()
    bins: tuple[float, ...] = (0.0,)

    def contribution(self, value: Any, missing: frozenset[str]) -> float:
        """This feature's raw (uncalibrated) contribution to the logit for one value."""
        if self.kind == "category":
            key = category_key(value, missing)
            if key is None:
                return self.missing
            return self.levels.get(key, self.other)
        x = number_value(value, missing)
        if x is None:
            return self.missing
        x = transform(self.transform, x)
        x = self.low if x < self.low else self.high if x > self.high else x
        return self.weight * (x - self.mean) / self.scale + self.bins[bisect_right(self.edges, x)]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "key": self.key,
            "kind": self.kind,
            "missing": self.missing,
        }
        if self.kind == "category":
            out["levels"] = self.levels
            out["other"] = self.other
        else:
            out.update(
                transform=self.transform,
                clip=[self.low, self.high],
                mean=self.mean,
                scale=self.scale,
                weight=self.weight,
                edges=list(self.edges),
                bins=list(self.bins),
            )
        return out


@dataclass(slots=True)
class Factor:
    """One feature's part in a likelihood: its value and what it adds to the logit."""

    feature: str
    value: Any
    contribution: float

    def to_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "value": self.value,
            "contribution": round(self.contribution, 4),
        }


@dataclass(slots=True)
class Explanation:
    """Why a likelihood is what it is: base (calibrated intercept) + contributions = logit."""

    probability: float
    logit: float
    base: float
    factors: list[Factor]  # every feature, largest contribution first

    def top(self, n: int = 3) -> tuple[list[Factor], list[Factor]]:
        """The n features raising the likelihood most and the n lowering it most."""
        up = [f for f in self.factors if f.contribution > 0][:n]
        down = [f for f in reversed(self.factors) if f.contribution < 0][:n]
        return up, down

    def to_json(self, n: int = 3) -> dict[str, Any]:
        up, down = self.top(n)
        return {
            "likelihood": percent(self.probability),
            "logit": round(self.logit, 4),
            "base": round(self.base, 4),
            "raising": [f.to_json() for f in up],
            "lowering": [f.to_json() for f in down],
        }


# --------------------------------------------------------------------------- the model


@dataclass
class Model:
    """A loaded model: evaluate with :meth:`probability`, explain with :meth:`explain`."""

    path: str
    features: tuple[Feature, ...]
    intercept: float
    calibration_a: float
    calibration_b: float
    missing_values: frozenset[str]
    doc: dict[str, Any]  # the whole file as loaded: label, training, quality
    # Groups whose scores decay (the rules say which): their features are summed last, by
    # score_tail, so a reader can bring the likelihood to any moment from the contact's
    # ``rest`` (everything else) and the decayed scores, without the model (readmodel).
    fresh: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # The live path evaluates a model once per read model: one generated function with
        # every feature inlined (see _compile) instead of a call per feature.
        tail = [
            i for i, f in enumerate(self.features) if f.source == "score" and f.key in self.fresh
        ]
        head = tuple(f for i, f in enumerate(self.features) if i not in tail)
        self._tail_index = tuple(tail)
        self._tail_keys = tuple(self.features[i].key for i in tail)
        self.tail_plan: tuple[TailFeature, ...] = tuple(
            _tail_feature(self.features[i]) for i in tail
        )
        indices = tuple(i for i in range(len(self.features)) if i not in tail)
        self._raw = _compile(head, self.missing_values, from_state=False, indices=indices)
        # From a state: one generated function summing the head, then the decaying scores'
        # features with the same operations as score_tail, returning (rest, raw).
        tail_features = tuple(self.features[i] for i in tail)
        self._raw_state = _compile(head, self.missing_values, from_state=True, tail=tail_features)

    def logit(self, values: Sequence[Any]) -> float:
        """The calibrated logit for raw values given in ``features`` order."""
        if len(values) != len(self.features):
            raise ValueError(f"expected {len(self.features)} values, got {len(values)}")
        raw = self._raw(values)
        if self.tail_plan:
            missing = self.missing_values
            xs = [number_value(values[i], missing) for i in self._tail_index]
            raw = score_tail(raw, xs, self.tail_plan)
        return self.calibration_a * (self.intercept + raw) + self.calibration_b

    def of_state(
        self,
        traits: Mapping[str, Any],
        scores: Mapping[str, float],
        tracked: Sequence[str],
        tracks: Sequence[float],
    ) -> tuple[float, float]:
        """The likelihood in percent read from a contact's state (see :meth:`percent_of_state`)
        and the raw sum of every feature but the decaying scores' (what a read model stores
        for a reader: ``readmodel.view_at``)."""
        rest, raw = self._raw_state(traits, scores, tracked, tracks)
        a = self.calibration_a
        return percent_of_raw(raw, self.intercept, a, self.calibration_b), rest

    def percent_of_state(
        self,
        traits: Mapping[str, Any],
        scores: Mapping[str, float],
        tracked: Sequence[str],
        tracks: Sequence[float],
    ) -> float:
        """:meth:`percent` reading a contact's state directly: a trait from ``traits``, a score
        from ``scores`` (group -> score), a count from the flat trackers (``tracked`` names
        them, ``tracks`` holds three numbers per tracker, hits first)."""
        return self.of_state(traits, scores, tracked, tracks)[0]

    def fresh_params(self) -> list[Any] | None:
        """What a reader needs to recompute the likelihood as of a read: [intercept, a, b,
        the decaying scores' features]; None when no feature decays (the stored value holds)."""
        if not self.tail_plan:
            return None
        return [
            self.intercept,
            self.calibration_a,
            self.calibration_b,
            [list(f) for f in self.tail_plan],
        ]

    def probability(self, values: Sequence[Any]) -> float:
        return _sigmoid(self.logit(values))

    def percent(self, values: Sequence[Any]) -> float:
        """The likelihood as contacts carry it: calibrated probability in percent, 2 decimals."""
        return percent(_sigmoid(self.logit(values)))

    def values_of(self, row: Mapping[str, Any]) -> list[Any]:
        """Raw values in ``features`` order from a mapping of feature key -> value (a table row)."""
        return [row.get(f.key) for f in self.features]

    def explain(self, values: Sequence[Any]) -> Explanation:
        """Every feature's calibrated contribution; base + their sum is the logit exactly."""
        a = self.calibration_a
        missing = self.missing_values
        factors = [
            Factor(f.name, v, a * f.contribution(v, missing))
            for f, v in zip(self.features, values, strict=True)
        ]
        base = a * self.intercept + self.calibration_b
        logit = base + math.fsum(f.contribution for f in factors)
        factors.sort(key=lambda f: -f.contribution)
        return Explanation(_sigmoid(logit), logit, base, factors)

    @property
    def quality(self) -> dict[str, Any]:
        return dict(self.doc.get("quality") or {})


# A decaying score's feature as a reader evaluates it: key, transform, low, high, mean, scale,
# weight, edges, bins, missing.
TailFeature = tuple[str, str, float, float, float, float, float, list[float], list[float], float]


def _tail_feature(f: Feature) -> TailFeature:
    return (
        f.key,
        f.transform,
        f.low,
        f.high,
        f.mean,
        f.scale,
        f.weight,
        list(f.edges),
        list(f.bins),
        f.missing,
    )


def score_tail(raw: float, xs: Sequence[float | None], plan: Sequence[Sequence[Any]]) -> float:
    """``raw`` plus each decaying score's contribution, in plan order: THE arithmetic the
    engine, a batch prediction and a reader of the read model (no model file) all use, so
    they agree to the bit. The same operations as the generated code's numbers."""
    for x, (_, kind, low, high, mean, scale, weight, edges, bins, missing) in zip(
        xs, plan, strict=True
    ):
        if x is None:
            raw += missing
            continue
        if kind == "log1p":
            x = copysign(log1p(abs(x)), x)
        if x < low:
            x = low
        elif x > high:
            x = high
        raw += weight * (x - mean) / scale + bins[bisect_right(edges, x)]
    return raw


def percent_of_raw(raw: float, intercept: float, a: float, b: float) -> float:
    """The likelihood in percent from the raw sum of contributions."""
    return percent(_sigmoid(a * (intercept + raw) + b))


def _compile(
    features: Sequence[Feature],
    missing: frozenset[str],
    from_state: bool,
    indices: Sequence[int] | None = None,
    tail: Sequence[Feature] | None = None,
) -> Callable[..., Any]:
    """Sum of every feature's ``contribution``, as one generated function: same results.

    ``raw(values)`` takes the values in feature order; with ``from_state``,
    ``raw(traits, scores, tracked, tracks)`` fetches each from a contact's state itself
    (keys are passed as variables, never written into the source; a count's key is its
    tracker id, see :func:`counter_key`). ``indices``: where each feature's value sits in
    ``values`` (the decaying scores are left to :func:`score_tail`). With ``tail`` (decaying
    scores' number features, from a state only) it returns ``(rest, raw)``: the sum of
    ``features``, then that plus each tail feature's, in :func:`score_tail`'s operations.

    The source holds only indices and float literals (``repr`` of validated finite numbers),
    never text from the model file, so a model file cannot put code in it. Text values of a
    category are memoized per feature (bounded, so free text cannot grow the memo); anything
    unusual (numbers for a category, text for a number) falls back to ``contribution``.
    """
    namespace: dict[str, Any] = {"bisect_right": bisect_right, "copysign": math.copysign}
    namespace["log1p"] = math.log1p
    head = "def raw(traits, scores, tracked, tracks):" if from_state else "def raw(values):"
    lines = [head, "    total = 0.0"]
    namespace["missing_set"] = missing
    for i, f in enumerate(features):
        namespace[f"contribution_{i}"] = f.contribution
        namespace[f"key_{i}"] = (
            f.key if f.source in ("trait", "score") else counter_key(f.source, f.key)
        )
        namespace[f"edges_{i}"] = f.edges
        namespace[f"bins_{i}"] = f.bins
        if from_state and f.kind == "number" and f.source != "trait":
            # Always a finite float here (a view's score, a tracker's count): no checks.
            if f.source == "score":
                lines.append(f"    x = scores.get(key_{i}, 0.0)")
            else:  # the engine keeps a tracker for every count the model reads
                lines.append(
                    f"    x = tracks[tracked.index(key_{i}) * 3] if key_{i} in tracked else 0.0"
                )
            lines += _number_lines(i, f, "    ")
            continue
        if not from_state:
            lines.append(f"    v = values[{indices[i] if indices is not None else i}]")
        elif f.source == "trait":
            lines.append(f"    v = traits.get(key_{i})")
        elif f.source == "score":  # declared a category: the general path below
            lines.append(f"    v = scores.get(key_{i}, 0.0)")
        else:
            lines.append(
                f"    v = tracks[tracked.index(key_{i}) * 3] if key_{i} in tracked else 0.0"
            )
        lines.append("    if v is None:")
        lines.append(f"        total += {f.missing!r}")
        if f.kind == "category":
            namespace[f"memo_{i}"] = {}
            lines += [
                "    elif v.__class__ is str:",
                f"        c = memo_{i}.get(v)",
                "        if c is None:",
                f"            c = contribution_{i}(v, missing_set)",
                f"            if len(memo_{i}) < {_MEMO_LIMIT}:",
                f"                memo_{i}[v] = c",
                "        total += c",
            ]
        else:
            lines += [
                "    elif v.__class__ is float or (v.__class__ is int and -1e300 < v < 1e300):",
                "        x = float(v)",
                "        if x - x != 0.0:  # inf or nan: missing",
                f"            total += {f.missing!r}",
                "        else:",
                *_number_lines(i, f, "            "),
            ]
        lines += ["    else:", f"        total += contribution_{i}(v, missing_set)"]
    if tail is not None:
        lines.append("    rest = total")
        for k, f in enumerate(tail):
            i = len(features) + k
            namespace[f"key_{i}"] = f.key
            namespace[f"edges_{i}"] = list(f.edges)  # as a reader's JSON gives them
            namespace[f"bins_{i}"] = list(f.bins)
            lines.append(f"    x = scores.get(key_{i}, 0.0)")
            lines += _number_lines(i, f, "    ")
        lines.append("    return rest, total")
    else:
        lines.append("    return total")
    exec(compile("\n".join(lines), "<leadscore model>", "exec"), namespace)
    raw: Callable[..., Any] = namespace["raw"]
    return raw


def _number_lines(i: int, f: Feature, indent: str) -> list[str]:
    """Source lines adding number feature ``i``'s contribution for a finite float ``x``."""
    lines = ["x = copysign(log1p(abs(x)), x)"] if f.transform == "log1p" else []
    lines += [
        f"if x < {f.low!r}:",
        f"    x = {f.low!r}",
        f"elif x > {f.high!r}:",
        f"    x = {f.high!r}",
        f"total += {f.weight!r} * (x - {f.mean!r}) / {f.scale!r}"
        f" + bins_{i}[bisect_right(edges_{i}, x)]",
    ]
    return [indent + line for line in lines]


def percent(probability: float) -> float:
    """A probability in percent with 2 decimals: round() to an int is ~5x cheaper than
    round(x, 2), and this runs once per read model."""
    return round(probability * 10000.0) / 100.0


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


# --------------------------------------------------------------------------- save / load


def model_document(
    features: Sequence[Feature],
    intercept: float,
    calibration: Mapping[str, Any],
    missing_values: Sequence[str],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON document of a model: what :func:`save_model` writes and :func:`load_model` reads."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": "logistic",
        "intercept": intercept,
        "calibration": dict(calibration),
        "missing_values": list(missing_values),
        "features": [f.to_json() for f in features],
        **extra,
    }


def save_model(doc: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


def load_model(path: str | Path) -> Model:
    """Read and validate a model file; ModelError names the file and the field at fault."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MODEL_BYTES + 1)
    except FileNotFoundError:
        raise ModelError(source, "model file not found") from None
    except OSError as exc:
        raise ModelError(source, f"cannot read the model file: {exc.strerror or exc}") from None
    if len(data) > MAX_MODEL_BYTES:
        raise ModelError(source, f"model file is larger than {MAX_MODEL_BYTES} bytes")
    return parse_model(data, source)


def parse_model(data: bytes, source: str = "<model>") -> Model:
    if data[:1] == b"\x80" or data[:2] in (b"(d", b"(l", b"}q", b"]q"):
        raise ModelError(
            source,
            "this is a pickle, not a leadscore model: leadscore never loads pickles "
            "(they can run code); write the model with `leadscore train`",
        )
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ModelError(source, f"not a JSON model file: {exc}") from None
    return _Validator(source).model(doc)


_TOP_KEYS = {
    "format",
    "version",
    "kind",
    "intercept",
    "calibration",
    "missing_values",
    "features",
    "label",
    "source",
    "training",
    "quality",
    "created_at",
}
_REQUIRED_TOP = {
    "format",
    "version",
    "kind",
    "intercept",
    "calibration",
    "missing_values",
    "features",
}
_CATEGORY_KEYS = {"name", "source", "key", "kind", "missing", "levels", "other"}
_NUMBER_KEYS = {
    "name",
    "source",
    "key",
    "kind",
    "missing",
    "transform",
    "clip",
    "mean",
    "scale",
    "weight",
    "edges",
    "bins",
}


class _Validator:
    """Checks every field's type and shape; the first problem found is the error raised."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str, feature: str | None = None) -> ModelError:
        return ModelError(self.source, message, feature)

    def number(self, value: Any, field: str, feature: str | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"field {field!r}: expected a number, got {_kind(value)}", feature)
        x = float(value)
        if not math.isfinite(x):
            raise self.fail(f"field {field!r}: expected a finite number", feature)
        return x

    def numbers(self, value: Any, field: str, feature: str | None) -> tuple[float, ...]:
        if not isinstance(value, list):
            raise self.fail(f"field {field!r}: expected a list of numbers", feature)
        return tuple(self.number(v, field, feature) for v in value)

    def keys(
        self,
        node: dict[str, Any],
        allowed: set[str],
        required: set[str],
        feature: str | None = None,
    ) -> None:
        unknown = sorted(str(k) for k in node if k not in allowed)
        if unknown:
            raise self.fail(f"unknown field {unknown[0]!r}", feature)
        absent = sorted(required - node.keys())
        if absent:
            raise self.fail(f"field {absent[0]!r} is required", feature)

    def model(self, doc: Any) -> Model:
        if not isinstance(doc, dict):
            raise self.fail(f"expected a JSON object at the top level, got {_kind(doc)}")
        if doc.get("format") != FORMAT:
            raise self.fail(f"not a leadscore model (field 'format' is {doc.get('format')!r})")
        version = doc.get("version")
        if version != VERSION or isinstance(version, bool):
            raise self.fail(
                f"model format version {version!r} is not supported (this leadscore reads "
                f"version {VERSION}); retrain it with this leadscore's `leadscore train`"
            )
        self.keys(doc, _TOP_KEYS, _REQUIRED_TOP)
        if doc["kind"] != "logistic":
            raise self.fail(f"field 'kind': expected 'logistic', got {doc['kind']!r}")
        intercept = self.number(doc["intercept"], "intercept")
        calibration = doc["calibration"]
        if not isinstance(calibration, dict) or set(calibration) != {"method", "a", "b"}:
            raise self.fail("field 'calibration': expected {method, a, b}")
        if calibration["method"] not in ("platt", "none"):
            raise self.fail("field 'calibration': method must be 'platt' or 'none'")
        a = self.number(calibration["a"], "calibration.a")
        b = self.number(calibration["b"], "calibration.b")
        missing = doc["missing_values"]
        if not isinstance(missing, list) or not all(isinstance(m, str) for m in missing):
            raise self.fail("field 'missing_values': expected a list of strings")
        for field in ("label", "source", "training", "quality"):
            if field in doc and not isinstance(doc[field], dict | str):
                raise self.fail(f"field {field!r}: expected an object or a string")
        raw_features = doc["features"]
        if not isinstance(raw_features, list) or not raw_features:
            raise self.fail("field 'features': expected a non-empty list")
        features = []
        names: set[str] = set()
        for i, node in enumerate(raw_features):
            feature = self.feature(i, node)
            if feature.name in names:
                raise self.fail("duplicate feature name", feature.name)
            names.add(feature.name)
            features.append(feature)
        return Model(
            path=self.source,
            features=tuple(features),
            intercept=intercept,
            calibration_a=a,
            calibration_b=b,
            missing_values=frozenset(m.strip().lower() for m in missing),
            doc=doc,
        )

    def feature(self, i: int, node: Any) -> Feature:
        if not isinstance(node, dict):
            raise self.fail(f"features[{i}]: expected an object, got {_kind(node)}")
        name = node.get("name")
        if not isinstance(name, str) or not name:
            raise self.fail(f"features[{i}]: field 'name': expected a non-empty string")
        kind = node.get("kind")
        if kind not in ("category", "number"):
            raise self.fail(f"field 'kind': expected 'category' or 'number', got {kind!r}", name)
        allowed = _CATEGORY_KEYS if kind == "category" else _NUMBER_KEYS
        self.keys(node, allowed, allowed, name)
        source, key = node["source"], node["key"]
        if source not in SOURCES:
            raise self.fail(
                f"field 'source': expected one of {list(SOURCES)}, got {source!r}", name
            )
        if source != "trait" and kind != "number":
            raise self.fail(f"field 'kind': a {source} feature is a number", name)
        if not isinstance(key, str) or not key:
            raise self.fail("field 'key': expected a non-empty string", name)
        missing = self.number(node["missing"], "missing", name)
        if kind == "category":
            levels = node["levels"]
            if not isinstance(levels, dict):
                raise self.fail("field 'levels': expected an object of level -> weight", name)
            checked = {str(k): self.number(v, f"levels.{k}", name) for k, v in levels.items()}
            other = self.number(node["other"], "other", name)
            return Feature(name, source, key, kind, missing, checked, other)
        if node["transform"] not in TRANSFORMS:
            raise self.fail(f"field 'transform': expected one of {list(TRANSFORMS)}", name)
        clip = self.numbers(node["clip"], "clip", name)
        if len(clip) != 2 or clip[0] > clip[1]:
            raise self.fail("field 'clip': expected [low, high] with low <= high", name)
        scale = self.number(node["scale"], "scale", name)
        if scale <= 0:
            raise self.fail("field 'scale': must be above 0", name)
        edges = self.numbers(node["edges"], "edges", name)
        if any(b <= a for a, b in pairwise(edges)):
            raise self.fail("field 'edges': must be strictly increasing", name)
        bins = self.numbers(node["bins"], "bins", name)
        if len(bins) != len(edges) + 1:
            raise self.fail("field 'bins': expected one weight more than 'edges'", name)
        return Feature(
            name,
            source,
            key,
            kind,
            missing,
            {},
            transform=node["transform"],
            low=clip[0],
            high=clip[1],
            mean=self.number(node["mean"], "mean", name),
            scale=scale,
            weight=self.number(node["weight"], "weight", name),
            edges=edges,
            bins=bins,
        )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )
