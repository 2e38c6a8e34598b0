"""Train a likelihood-to-convert model from a CRM table, honestly measured (`leadscore train`).

scikit-learn and numpy are needed here only (the ``train`` extra); the saved model is a JSON
file that :mod:`leadscore.model` evaluates in plain Python, live. The model is a logistic
regression over one-hot categories and standardized + binned numbers, with a Platt
calibration fitted on cross-validated scores, so a likelihood is a calibrated probability and
its logit is exactly the intercept plus one contribution per feature.

Honesty, in order: columns that predict the label almost perfectly on their own are named and
refused (filled in after the outcome, as a sales status is), unless the caller keeps them; a
stratified part of the rows is held out before anything is fitted, and the quality written
into the model file is measured on it, for the very model that is shipped.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from leadscore.events import format_ts
from leadscore.model import (
    DEFAULT_MISSING,
    Feature,
    Model,
    action_counter_key,
    category_key,
    model_document,
    number_value,
    parse_model,
    transform,
)
from leadscore.outcomes import Conversions
from leadscore.rules import Rules
from leadscore.tables import (
    ID_LIKE_SHARE,
    Column,
    TableError,
    infer_columns,
    parse_label,
    read_table,
)

MIN_LEVEL_ROWS = 10  # a category level seen fewer times in training falls into "other"
MAX_BINS = 8
C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)


class TrainError(TableError):
    """Why a model cannot be trained, said so the user knows what to change."""


@dataclass(slots=True)
class TrainOptions:
    label: str
    id: str | None = None
    exclude: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    min_class: int = 100  # fewer converters or non-converters than this is an error
    leak_auc: float = 0.9  # a column whose AUC alone reaches this is refused unless kept
    holdout: float = 0.2
    folds: int = 5
    seed: int = 0
    missing_values: tuple[str, ...] = DEFAULT_MISSING
    # History only: at most this many counts that need a new counter in every live state
    # (hits of a rule without a repeat tracker, events of an action); -1: no limit.
    max_counters: int = 4


@dataclass(slots=True)
class TrainResult:
    doc: dict[str, Any]  # the model file's content
    model: Model  # the same, loaded as the live path loads it
    leaky: list[tuple[str, float]]  # columns refused by the leakage guard, with their AUC
    kept_leaky: list[tuple[str, float]]  # ... and those kept anyway with --keep
    dropped: list[tuple[str, str]]  # other columns not used, with the reason
    holdout_rows: list[int] = field(default_factory=list)  # indices of the held-out rows
    holdout_probabilities: list[float] = field(default_factory=list)  # batch, from the matrix

    @property
    def quality(self) -> dict[str, Any]:
        return self.doc["quality"]


# --------------------------------------------------------------------------- training


def train_table(path: str | Path, options: TrainOptions) -> TrainResult:
    """Train on a CRM export: one row per lead, the label column says who converted."""
    table = read_table(path)
    for name, what in ((options.label, "label"), (options.id, "id")):
        if name is not None and name not in table.columns:
            raise TrainError(
                f"{table.path}: no {what} column {name!r}; columns are: "
                + ", ".join(repr(c) for c in table.columns[:40])
            )
    unknown = [c for c in (*options.exclude, *options.keep) if c not in table.columns]
    if unknown:
        raise TrainError(f"{table.path}: no column {unknown[0]!r} (named in --exclude/--keep)")
    missing = frozenset(m.strip().lower() for m in options.missing_values)
    labels: list[int] = []
    for i, row in enumerate(table.rows):
        y = parse_label(row.get(options.label))
        if y is None:
            raise TrainError(
                f"{table.path}: row {i + 2}: label {options.label!r} is "
                f"{row.get(options.label)!r}; expected 1/0, true/false or yes/no"
            )
        labels.append(y)
    skip = [options.label, *options.exclude]
    if options.id is not None:
        skip.append(options.id)
    columns, dropped = infer_columns(table, skip, missing)
    rows = [[row.get(c.name) for c in columns] for row in table.rows]
    source = {"table": Path(table.path).name, "label": options.label, "id": options.id}
    return fit(columns, rows, labels, options, source, dropped)


def train_events(
    rules: Rules,
    paths: Sequence[str],
    outcomes: Conversions,
    window: float,
    options: TrainOptions,
    as_of: float | None = None,
    now: float = 0.0,
) -> TrainResult:
    """Train from event history with the population and label of `leadscore calibrate`.

    Contacts in play at ``as_of`` (events by then, no conversion by then) are replayed through
    the engine with no look-ahead; the label is a conversion in ``(as_of, as_of + window]``.
    Features are what the live flow can give the model later: the traits the rules keep
    (those their fit rules read), every group's score at ``as_of``, every action rule's hits
    and every action's event count. The live state keeps a counter only for the counts the
    model reads, so counts that are rarely non-zero (fewer than ``MIN_LEVEL_ROWS`` contacts)
    or that repeat another column exactly (a rule matching every event of its action) are
    dropped: they would cost state and teach nothing. Of the counts that need a new counter,
    the ``max_counters`` that rank converters best alone (on the training rows only) are kept.
    """
    from leadscore.outcomes import OutcomeError, population

    try:
        pop = population(rules, paths, outcomes, window, as_of, now, count_all=True)
    except OutcomeError as err:
        raise TrainError(str(err)) from None
    traits = list(dict.fromkeys(r.trait for r in rules.fit))
    groups = list(rules.groups)
    # Rules with a repeat tracker first: their counts cost the live state nothing more.
    rule_ids = [r.id for r in sorted(rules.actions, key=lambda r: not r.tracked)]
    actions = sorted(rules.known_actions - outcomes.actions)
    counters = [*rule_ids, *(action_counter_key(a) for a in actions)]
    rows: list[list[Any]] = []
    labels: list[int] = []
    for member in pop.members:
        state = member.state
        scores = member.view["scores"]
        tracked, tracks = state.tracked, state.tracks
        counts = [tracks[tracked.index(k) * 3] if k in tracked else 0.0 for k in counters]
        rows.append(
            [state.traits.get(t) for t in traits] + [scores.get(g, 0.0) for g in groups] + counts
        )
        labels.append(int(member.label))
    missing = frozenset(m.strip().lower() for m in options.missing_values)
    columns: list[Column] = []
    for j, trait in enumerate(traits):
        present = [v for row in rows if (v := row[j]) is not None]
        numeric = present and all(number_value(v, missing) is not None for v in present)
        columns.append(
            Column(f"trait {trait}", "number" if numeric else "category", "trait", trait)
        )
    columns += [Column(f"score {g}", "number", "score", g) for g in groups]
    columns += [Column(f"hits {r}", "number", "rule_hits", r) for r in rule_ids]
    columns += [Column(f"count {a}", "number", "action_count", a) for a in actions]
    first_count = len(traits) + len(groups)
    keep: list[int] = []
    dropped: list[tuple[str, str]] = []
    seen: dict[tuple[str, ...], str] = {}
    for j, col in enumerate(columns):
        values = tuple(repr(row[j]) for row in rows)
        present = [v for row in rows if (v := row[j]) is not None]
        unique = len(set(map(repr, present)))
        if len(set(values)) == 1:
            # e.g. a group no rule of this history reached: it teaches nothing.
            dropped.append((col.name, "one value only"))
        elif col.kind == "category" and unique > max(50, ID_LIKE_SHARE * len(present)):
            # An e-mail or phone trait: nothing to learn, and every new value misses the
            # live evaluation's memo (as `train --table` drops such columns).
            why = f"{unique} distinct values in {len(present)} contacts having it: an identifier"
            dropped.append((col.name, why))
        elif j >= first_count and sum(row[j] != 0.0 for row in rows) < MIN_LEVEL_ROWS:
            dropped.append((col.name, f"non-zero for fewer than {MIN_LEVEL_ROWS} contacts"))
        elif j >= first_count and values in seen:
            dropped.append((col.name, f"the same counts as {seen[values]!r}"))
        else:
            seen.setdefault(values, col.name)
            keep.append(j)
    tracked = {r.id for r in rules.actions if r.tracked}
    costly = [j for j in keep if j >= first_count and columns[j].key not in tracked]
    positives = sum(labels)
    enough = min(positives, len(labels) - positives) >= options.min_class  # else fit says so
    if 0 <= options.max_counters < len(costly) and enough:
        np, _, metrics, selection = _sklearn()
        y = np.asarray(labels, dtype=np.int64)
        train_idx, _ = _split(np, selection, y, options)
        aucs = {
            j: _alone_auc(
                np, metrics, [rows[i][j] for i in train_idx], y[train_idx], columns[j], frozenset()
            )
            for j in costly
        }
        best = set(sorted(costly, key=lambda j: -aucs[j])[: options.max_counters])
        for j in costly:
            if j not in best:
                reason = f"over --max-counters {options.max_counters} (AUC alone {aucs[j]:.3f})"
                dropped.append((columns[j].name, reason))
        keep = [j for j in keep if j not in costly or j in best]
    columns = [columns[j] for j in keep]
    rows = [[row[j] for j in keep] for row in rows]
    if not columns:
        raise TrainError("the rules give the model nothing to learn from (no varying feature)")
    source = {
        "rules": str(rules.source),
        "events": [str(p) for p in paths],
        "conversion": sorted(outcomes.actions),
        "outcomes": outcomes.source,
        "as_of": format_ts(pop.as_of),
        "window": _duration(window),
        "excluded_already_converted": pop.excluded,
    }
    return fit(columns, rows, labels, options, source, dropped)


def fit(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Any]],
    labels: Sequence[int],
    options: TrainOptions,
    source: dict[str, Any],
    dropped: list[tuple[str, str]] | None = None,
) -> TrainResult:
    """Guard, hold out, fit, calibrate, measure: the one training procedure of every source."""
    _sklearn()  # a clear error when the train extra is missing
    from threadpoolctl import threadpool_limits

    # One BLAS thread: the matrices are small, and on a shared 2-core machine OpenBLAS's
    # spinning threads made each gradient ~50x slower than one thread does.
    with threadpool_limits(1):
        return _fit(columns, rows, labels, options, source, dropped)


def _fit(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Any]],
    labels: Sequence[int],
    options: TrainOptions,
    source: dict[str, Any],
    dropped: list[tuple[str, str]] | None,
) -> TrainResult:
    np, linear_model, metrics, selection = _sklearn()
    dropped = list(dropped or [])
    missing = frozenset(m.strip().lower() for m in options.missing_values)
    y = np.asarray(labels, dtype=np.int64)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives < options.min_class or negatives < options.min_class:
        raise TrainError(
            f"not enough history to learn from: {positives} converters and {negatives} "
            f"non-converters; at least {options.min_class} of each are needed (a lower "
            "--min-class trains anyway, on a model too noisy to trust)"
        )

    train_idx, test_idx = _split(np, selection, y, options)

    # Leakage guard: each column alone, on the training rows only.
    leaky: list[tuple[str, float]] = []
    kept_leaky: list[tuple[str, float]] = []
    used: list[int] = []
    for j, col in enumerate(columns):
        auc = _alone_auc(np, metrics, [rows[i][j] for i in train_idx], y[train_idx], col, missing)
        if auc >= options.leak_auc:
            (kept_leaky if col.name in options.keep else leaky).append((col.name, round(auc, 4)))
            if col.name not in options.keep:
                continue
        used.append(j)
    if not used:
        raise TrainError("no column is left to learn from after the exclusions and the guard")
    columns = [columns[j] for j in used]
    rows = [[row[j] for j in used] for row in rows]

    encoders = [
        _Encoder.fitted(np, col, [rows[i][k] for i in train_idx], missing)
        for k, col in enumerate(columns)
    ]
    x = _design(np, encoders, rows, missing)
    x_train, y_train = x[train_idx], y[train_idx]

    folds = selection.StratifiedKFold(options.folds, shuffle=True, random_state=options.seed)
    best_c, best_loss = C_GRID[0], math.inf
    for c in C_GRID:
        clf = linear_model.LogisticRegression(C=c, max_iter=5000)
        scores = selection.cross_val_predict(
            clf, x_train, y_train, cv=folds, method="predict_proba"
        )[:, 1]
        loss = metrics.log_loss(y_train, scores)
        if loss < best_loss:
            best_c, best_loss = c, loss
    clf = linear_model.LogisticRegression(C=best_c, max_iter=5000)
    # Platt scaling on out-of-fold scores: a, b such that a * raw + b is the calibrated logit.
    raw_oof = selection.cross_val_predict(
        clf, x_train, y_train, cv=folds, method="decision_function"
    )
    platt = linear_model.LogisticRegression(C=1e6, max_iter=5000)
    platt.fit(raw_oof.reshape(-1, 1), y_train)
    a, b = float(platt.coef_[0][0]), float(platt.intercept_[0])
    cv_auc = float(metrics.roc_auc_score(y_train, raw_oof))
    clf.fit(x_train, y_train)

    weights = clf.coef_[0]
    features: list[Feature] = []
    offset = 0
    for enc in encoders:
        width = enc.width
        features.append(enc.feature([float(w) for w in weights[offset : offset + width]]))
        offset += width
    intercept = float(clf.intercept_[0])

    test_raw = x[test_idx] @ weights + intercept
    probabilities = 1.0 / (1.0 + np.exp(-(a * test_raw + b)))
    quality = {
        "holdout": _quality(np, metrics, y[test_idx], probabilities),
        "cross_validated_auc": round(cv_auc, 4),
        "regularization_c": best_c,
    }
    importance = _importance(np, encoders, x_train, weights, a)
    doc = model_document(
        features,
        intercept,
        {"method": "platt", "a": a, "b": b},
        sorted(missing),
        {
            "label": source,
            "training": {
                "rows": len(y),
                "converters": positives,
                "non_converters": negatives,
                "train_rows": len(train_idx),
                "holdout_rows": len(test_idx),
                "holdout_share": options.holdout,
                "seed": options.seed,
                "window": source.get("window"),
                "refused_as_leaky": [{"column": c, "auc": v} for c, v in leaky],
                "kept_despite_leak_guard": [{"column": c, "auc": v} for c, v in kept_leaky],
                "dropped": [{"column": c, "reason": r} for c, r in dropped],
                "importance": importance,
            },
            "quality": quality,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    model = parse_model(orjson.dumps(doc), "<trained model>")
    return TrainResult(
        doc,
        model,
        leaky,
        kept_leaky,
        dropped,
        [int(i) for i in test_idx],
        [float(p) for p in probabilities],
    )


def _split(np: Any, selection: Any, y: Any, options: TrainOptions) -> tuple[Any, Any]:
    """The held-out split (stratified, seeded): training rows and held-out rows, sorted."""
    train_idx, test_idx = selection.train_test_split(
        np.arange(len(y)), test_size=options.holdout, stratify=y, random_state=options.seed
    )
    train_idx.sort()
    test_idx.sort()
    return train_idx, test_idx


def _duration(seconds: float) -> str:
    """Seconds in the rules file's notation: 1814400 -> 21d."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _sklearn() -> tuple[Any, Any, Any, Any]:
    try:
        import numpy
        import threadpoolctl  # noqa: F401  (comes with scikit-learn)
        from sklearn import linear_model, metrics, model_selection
    except ImportError:
        raise TrainError(
            "training needs scikit-learn: pip install 'leadscore[train]' "
            "(scoring with a trained model does not)"
        ) from None
    return numpy, linear_model, metrics, model_selection


# --------------------------------------------------------------------------- encoding


class _Encoder:
    """One column's design-matrix block, fitted on the training rows only."""

    def __init__(self, col: Column) -> None:
        self.col = col
        self.levels: list[str] = []
        self.index: dict[str, int] = {}
        self.transform = "none"
        self.low = self.high = self.mean = 0.0
        self.scale = 1.0
        self.edges: list[float] = []

    @classmethod
    def fitted(cls, np: Any, col: Column, values: list[Any], missing: frozenset[str]) -> _Encoder:
        enc = cls(col)
        if col.kind == "category":
            counts = Counter(k for v in values if (k := category_key(v, missing)) is not None)
            enc.levels = sorted(k for k, n in counts.items() if n >= MIN_LEVEL_ROWS)
            enc.index = {k: i for i, k in enumerate(enc.levels)}
            return enc
        xs = [x for v in values if (x := number_value(v, missing)) is not None]
        if not xs:
            return enc
        arr = np.asarray(xs, dtype=float)
        if arr.min() >= 0 and np.percentile(arr, 99) > 10 * max(np.median(arr), 1.0):
            enc.transform = "log1p"
        t = np.asarray([transform(enc.transform, x) for x in xs])
        enc.low, enc.high = (float(v) for v in np.percentile(t, [0.5, 99.5]))
        t = np.clip(t, enc.low, enc.high)
        enc.mean = float(t.mean())
        enc.scale = float(t.std()) or 1.0
        qs = np.unique(np.quantile(t, np.linspace(0, 1, MAX_BINS + 1)[1:-1]))
        enc.edges = [float(q) for q in qs]
        return enc

    @property
    def width(self) -> int:
        if self.col.kind == "category":
            return len(self.levels) + 2  # levels, other, missing
        return 1 + len(self.edges) + 1 + 1  # standardized value, bins, missing

    def encode(self, value: Any, out: Any, offset: int, missing: frozenset[str]) -> None:
        """Set this column's block of one design-matrix row (all zeros on entry)."""
        if self.col.kind == "category":
            key = category_key(value, missing)
            if key is None:
                out[offset + len(self.levels) + 1] = 1.0
            else:
                out[offset + self.index.get(key, len(self.levels))] = 1.0
            return
        x = number_value(value, missing)
        if x is None:
            out[offset + self.width - 1] = 1.0
            return
        t = transform(self.transform, x)
        t = self.low if t < self.low else self.high if t > self.high else t
        out[offset] = (t - self.mean) / self.scale
        out[offset + 1 + bisect_right(self.edges, t)] = 1.0

    def feature(self, w: list[float]) -> Feature:
        col = self.col
        if col.kind == "category":
            n = len(self.levels)
            return Feature(
                col.name,
                col.source,
                col.key,
                "category",
                w[n + 1],
                dict(zip(self.levels, w[:n], strict=True)),
                w[n],
            )
        return Feature(
            col.name,
            col.source,
            col.key,
            "number",
            w[-1],
            {},
            transform=self.transform,
            low=self.low,
            high=self.high,
            mean=self.mean,
            scale=self.scale,
            weight=w[0],
            edges=tuple(self.edges),
            bins=tuple(w[1:-1]),
        )


def _design(
    np: Any, encoders: list[_Encoder], rows: Sequence[Sequence[Any]], missing: frozenset[str]
) -> Any:
    width = sum(e.width for e in encoders)
    x = np.zeros((len(rows), width))
    for r, row in enumerate(rows):
        out = x[r]
        offset = 0
        for enc, value in zip(encoders, row, strict=True):
            enc.encode(value, out, offset, missing)
            offset += enc.width
    return x


def _alone_auc(
    np: Any, metrics: Any, values: list[Any], y: Any, col: Column, missing: frozenset[str]
) -> float:
    """How well this column alone ranks converters: AUC of its per-level conversion rate.

    Numbers are cut into deciles first and missing is a level of its own, so a column that
    leaks through being filled in only for converters is caught too.
    """
    if col.kind == "number":
        xs = [number_value(v, missing) for v in values]
        present = np.asarray([x for x in xs if x is not None], dtype=float)
        edges: list[float] = []
        if len(present):
            edges = np.unique(np.quantile(present, np.linspace(0, 1, 11)[1:-1])).tolist()
        keys = ["missing" if x is None else f"b{bisect_right(edges, x)}" for x in xs]
    else:
        counts = Counter(category_key(v, missing) for v in values)
        keys = []
        for v in values:
            k = category_key(v, missing)
            keys.append("missing" if k is None else k if counts[k] >= MIN_LEVEL_ROWS else "other")
    totals: Counter[str] = Counter(keys)
    wins: Counter[str] = Counter(k for k, label in zip(keys, y, strict=True) if label)
    rate = [wins[k] / totals[k] for k in keys]
    if len(set(y.tolist())) < 2:
        return 0.5
    auc = float(metrics.roc_auc_score(y, rate))
    return max(auc, 1.0 - auc)


# --------------------------------------------------------------------------- quality


def _quality(np: Any, metrics: Any, y: Any, p: Any) -> dict[str, Any]:
    """AUC, Brier, log loss, lift in the top decile and a calibration table by decile."""
    order = np.argsort(-p, kind="stable")
    n = len(y)
    base = float(y.mean())
    top = order[: max(1, n // 10)]
    deciles = []
    for d, chunk in enumerate(np.array_split(order, 10)):
        if not len(chunk):
            continue
        deciles.append(
            {
                "decile": d + 1,
                "rows": len(chunk),
                "predicted": round(float(p[chunk].mean()), 4),
                "observed": round(float(y[chunk].mean()), 4),
                "lift": round(float(y[chunk].mean()) / base, 3) if base else None,
            }
        )
    return {
        "rows": n,
        "base_rate": round(base, 4),
        "auc": round(float(metrics.roc_auc_score(y, p)), 4),
        "brier": round(float(metrics.brier_score_loss(y, p)), 4),
        "log_loss": round(float(metrics.log_loss(y, p)), 4),
        "lift_top_decile": round(float(y[top].mean()) / base, 3) if base else None,
        "calibration": deciles,
    }


def _importance(
    np: Any, encoders: list[_Encoder], x: Any, weights: Any, a: float
) -> list[dict[str, Any]]:
    """Each feature's spread of calibrated contributions over the training rows, largest first."""
    out = []
    offset = 0
    for enc in encoders:
        block = x[:, offset : offset + enc.width] @ weights[offset : offset + enc.width] * a
        offset += enc.width
        out.append({"feature": enc.col.name, "spread": round(float(block.std()), 4)})
    out.sort(key=lambda f: -f["spread"])
    return out
