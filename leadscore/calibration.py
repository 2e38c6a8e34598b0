"""How well a score predicts conversion: bands, thresholds, lift and AUC (pure functions).

Input is two parallel lists, the population's scores and whether each contact converted in
the window (see :mod:`leadscore.outcomes`). Everything here is exact arithmetic over counts,
so the tests can check it against an independent computation.

- Bands: deciles of the score by default (edges at the 0th, 10th, ... 90th percentile value,
  merged where ties make them equal), or the user's edges. ``lo`` inclusive, ``hi``
  exclusive, the last band inclusive of its top; user edges are widened to cover every score.
- Curve: for every distinct score ``t`` (a candidate threshold), the leads sent by
  "score >= t", how many of them convert, precision, recall, lift over the base rate, F1.
- Recommended threshold: the best F1 (ties: the higher threshold, fewer leads); or the lowest
  threshold whose precision is at least ``min_precision``; or the lowest threshold that sends
  at most ``capacity`` leads (sales can take only so many in a window).
- AUC: the chance a random converter outscores a random non-converter (ties count half).
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


class CalibrationError(ValueError):
    """A request the data cannot answer: one line saying what to change."""


@dataclass(slots=True)
class Band:
    lo: float
    hi: float
    contacts: int
    converted: int
    rate: float  # converted / contacts (0 for an empty band)


@dataclass(slots=True)
class Point:
    """The figures of one candidate threshold: leads with score >= threshold."""

    threshold: float
    leads: int
    converted: int
    precision: float
    recall: float
    lift: float
    f1: float


@dataclass(slots=True)
class Calibration:
    population: int
    converted: int
    base_rate: float
    auc: float
    bands: list[Band]
    curve: list[Point]  # thresholds in descending order
    recommended: Point
    policy: str  # "max-f1", "min-precision 0.3" or "capacity 500"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommended
        return {
            "population": self.population,
            "converted": self.converted,
            "base_rate": _r(self.base_rate),
            "auc": _r(self.auc),
            "policy": self.policy,
            "bands": [
                {**asdict(b), "lo": _r(b.lo), "hi": _r(b.hi), "rate": _r(b.rate)}
                for b in self.bands
            ],
            "recommended": {
                "threshold": rec.threshold,
                "precision": _r(rec.precision),
                "recall": _r(rec.recall),
                "lift": _r(rec.lift),
                "leads": rec.leads,
                "converted": rec.converted,
                "f1": _r(rec.f1),
            },
            "curve": [_point_dict(p) for p in self.curve],
        }


def fmt(x: float) -> str:
    """A score as people read it: up to two decimals, no trailing zeros."""
    text = f"{x:,.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _r(x: float) -> float:
    return round(x, 6)


def _point_dict(p: Point) -> dict[str, Any]:
    return {
        "threshold": p.threshold,
        "leads": p.leads,
        "converted": p.converted,
        "precision": _r(p.precision),
        "recall": _r(p.recall),
        "lift": _r(p.lift),
        "f1": _r(p.f1),
    }


# --------------------------------------------------------------------------- pieces


def decile_edges(scores: Sequence[float], n: int = 10) -> list[float]:
    """Band edges at the 0th, 1/n, ... (n-1)/n quantile values, then the top; ties merged."""
    if not scores:
        return []
    ordered = sorted(scores)
    size = len(ordered)
    edges = sorted({ordered[(k * size) // n] for k in range(n)} | {ordered[-1]})
    return edges


def bands(scores: Sequence[float], labels: Sequence[bool], edges: Sequence[float]) -> list[Band]:
    """Count contacts and converters per band; edges are widened to cover every score.

    Band ``i`` holds ``edges[i] <= score < edges[i + 1]``; the last one also holds its top.
    Edges that collapse to one value (all scores equal) give a single band ``[v, v]``.
    """
    if not scores:
        return []
    cut = sorted(set(edges))
    lo, hi = min(scores), max(scores)
    if not cut or lo < cut[0]:
        cut.insert(0, lo)
    if hi > cut[-1]:
        cut.append(hi)
    if len(cut) == 1:
        cut.append(cut[0])
    k = len(cut) - 1
    contacts = [0] * k
    converted = [0] * k
    for s, y in zip(scores, labels, strict=True):
        i = min(bisect_right(cut, s) - 1, k - 1)
        contacts[i] += 1
        converted[i] += y
    return [
        Band(
            cut[i],
            cut[i + 1],
            contacts[i],
            converted[i],
            converted[i] / contacts[i] if contacts[i] else 0.0,
        )
        for i in range(k)
    ]


def curve(scores: Sequence[float], labels: Sequence[bool]) -> list[Point]:
    """Precision, recall, lift and F1 of "score >= t" for every distinct score, highest first."""
    n = len(scores)
    positives = sum(labels)
    if not n:
        return []
    base = positives / n
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: -p[0])
    out: list[Point] = []
    leads = tp = 0
    i = 0
    while i < n:
        t = pairs[i][0]
        while i < n and pairs[i][0] == t:
            leads += 1
            tp += pairs[i][1]
            i += 1
        precision = tp / leads
        recall = tp / positives if positives else 0.0
        lift = precision / base if base else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(Point(t, leads, tp, precision, recall, lift, f1))
    return out


def at_threshold(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> Point:
    """The figures of "score >= threshold" for any threshold (not only a score in the data)."""
    n = len(scores)
    positives = sum(labels)
    leads = tp = 0
    for s, y in zip(scores, labels, strict=True):
        if s >= threshold:
            leads += 1
            tp += y
    precision = tp / leads if leads else 0.0
    recall = tp / positives if positives else 0.0
    base = positives / n if n else 0.0
    lift = precision / base if base else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Point(threshold, leads, tp, precision, recall, lift, f1)


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U); tied scores share their rank."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return float("nan")
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: p[0])
    rank_sum = 0.0
    i = 0
    n = len(pairs)
    while i < n:
        j = i
        while j < n and pairs[j][0] == pairs[i][0]:
            j += 1
        mid = (i + 1 + j) / 2  # the average of ranks i+1 .. j
        rank_sum += mid * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def recommend(
    points: Sequence[Point], min_precision: float | None = None, capacity: int | None = None
) -> tuple[Point, str]:
    """The recommended threshold and the policy that chose it (see the module docstring)."""
    if not points:
        raise CalibrationError("no contacts to calibrate on")
    if min_precision is not None and capacity is not None:
        raise CalibrationError("give --min-precision or --capacity, not both")
    if min_precision is not None:
        ok = [p for p in points if p.precision >= min_precision]
        if not ok:
            best = max(points, key=lambda p: (p.precision, p.threshold))
            raise CalibrationError(
                f"no threshold reaches precision {min_precision:g} (the best is "
                f"{best.precision:.3f} at {fmt(best.threshold)}); lower --min-precision"
            )
        return min(ok, key=lambda p: p.threshold), f"min-precision {min_precision:g}"
    if capacity is not None:
        if capacity < 1:
            raise CalibrationError(f"--capacity must be at least 1, got {capacity}")
        ok = [p for p in points if p.leads <= capacity]
        if not ok:
            top = points[0]
            raise CalibrationError(
                f"even the top score {fmt(top.threshold)} sends {top.leads:,} leads, more than "
                f"--capacity {capacity:,}; raise --capacity"
            )
        return min(ok, key=lambda p: p.threshold), f"capacity {capacity}"
    best = max(points, key=lambda p: (p.f1, p.threshold))
    return best, "max-f1"


def calibrate(
    scores: Sequence[float],
    labels: Sequence[bool],
    edges: Sequence[float] | None = None,
    min_precision: float | None = None,
    capacity: int | None = None,
) -> Calibration:
    """Bands, curve, AUC and the recommended threshold for one score of one population."""
    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    n = len(scores)
    positives = sum(labels)
    points = curve(scores, labels)
    chosen, policy = recommend(points, min_precision, capacity)
    return Calibration(
        population=n,
        converted=positives,
        base_rate=positives / n if n else 0.0,
        auc=auc(scores, labels),
        bands=bands(scores, labels, decile_edges(scores) if edges is None else edges),
        curve=points,
        recommended=chosen,
        policy=policy,
    )


def parse_bands(text: str) -> list[float]:
    """``--bands 0,10,20`` -> [0.0, 10.0, 20.0]; at least two increasing numbers."""
    try:
        edges = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CalibrationError(
            f"--bands expects numbers separated by commas, e.g. 0,10,20,50, got {text!r}"
        ) from None
    if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise CalibrationError(
            f"--bands needs at least two increasing edges, e.g. 0,10,20,50, got {text!r}"
        )
    return edges


def describe(cal: Calibration, score: str = "total", window: str = "the window") -> list[str]:
    """The calibration in words, for people who will not read the chart."""
    rec = cal.recommended
    t = fmt(rec.threshold)
    lines = [
        f"Of {cal.population:,} contacts in play, {cal.converted:,} converted within {window} "
        f"(a base rate of {cal.base_rate:.1%}).",
        f"Leads with a {score} score of {t} or more convert at {rec.precision:.1%}, "
        f"{rec.lift:.1f}x the average; a threshold of {t} sends {rec.leads:,} leads and "
        f"catches {rec.recall:.0%} of buyers ({_policy_words(cal.policy)}).",
    ]
    if cal.bands:
        top, bottom = cal.bands[-1], cal.bands[0]
        lines.append(
            f"The top band ({fmt(top.lo)} to {fmt(top.hi)}) converts at {top.rate:.1%}, the "
            f"bottom band ({fmt(bottom.lo)} to {fmt(bottom.hi)}) at {bottom.rate:.1%}."
        )
    if cal.auc == cal.auc:  # not NaN
        quality = (
            "no better than chance"
            if cal.auc < 0.55
            else "weak"
            if cal.auc < 0.65
            else "useful"
            if cal.auc < 0.8
            else "strong"
        )
        lines.append(
            f"AUC {cal.auc:.3f}: a random buyer outscores a random non-buyer "
            f"{cal.auc:.0%} of the time ({quality})."
        )
    return lines


def _policy_words(policy: str) -> str:
    if policy == "max-f1":
        return "the best balance of precision and recall, F1"
    if policy.startswith("min-precision"):
        return f"the lowest threshold with precision at least {policy.split()[1]}"
    return f"the lowest threshold within a capacity of {policy.split()[1]} leads"
