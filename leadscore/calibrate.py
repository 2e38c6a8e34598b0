"""`leadscore calibrate` as a library call: replay, calibrate, and the JSON document.

:func:`calibrate_files` ties :mod:`leadscore.outcomes` (who was in play at ``as_of`` and who
converted after) to :mod:`leadscore.calibration` (bands, thresholds, AUC). The command only
parses options and renders what this returns, so tests call it without a subprocess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from leadscore.calibration import Calibration, calibrate, describe
from leadscore.durations import format_duration
from leadscore.events import format_ts, parse_ts
from leadscore.outcomes import Conversions, OutcomeError, Population, check_score, population
from leadscore.rules import Rules


@dataclass(slots=True)
class CalibrationRun:
    population: Population
    calibration: Calibration
    score: str
    scores: list[float]
    labels: list[bool]

    def words(self) -> list[str]:
        return describe(self.calibration, self.score, format_duration(self.population.window))

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document: the issue's keys first, then the counts behind them."""
        pop = self.population
        cal = self.calibration.to_dict()
        rec = cal["recommended"]
        return {
            "as_of": format_ts(pop.as_of),
            "window": format_duration(pop.window),
            "score": self.score,
            "population": cal["population"],
            "converted": cal["converted"],
            "base_rate": cal["base_rate"],
            "auc": cal["auc"],
            "bands": cal["bands"],
            "recommended": {
                "threshold": rec["threshold"],
                "precision": rec["precision"],
                "recall": rec["recall"],
                "lift": rec["lift"],
                "leads": rec["leads"],
            },
            "curve": cal["curve"],
            "policy": cal["policy"],
            "window_seconds": pop.window,
            "excluded": pop.excluded,
            "intake": pop.intake.to_dict(),
        }


def parse_as_of(text: str) -> float:
    """``--as-of``: RFC 3339 (``2026-12-01``, ``2026-12-01T12:00:00Z``) or epoch s/ms."""
    t = text.strip()
    if len(t) == 10 and t[4] == "-" and t[7] == "-":  # a bare date: its 00:00 UTC (parse_ts
        t += "T00:00:00Z"  # refuses text without a time zone)
    ts = parse_ts(float(t) if t.replace(".", "", 1).isdigit() else t, 0.0)
    if type(ts) is not float:
        raise OutcomeError(
            f"--as-of takes an RFC 3339 time (2026-12-01T00:00:00Z) or epoch seconds, got {text!r}"
        )
    return ts


def calibrate_files(
    rules: Rules,
    paths: Sequence[str],
    outcomes: Conversions,
    window: float,
    as_of: float | None = None,
    score: str = "total",
    edges: Sequence[float] | None = None,
    min_precision: float | None = None,
    capacity: int | None = None,
    now: float = 0.0,
) -> CalibrationRun:
    """Replay ``paths`` to ``as_of``, then calibrate ``score`` against conversions after it."""
    check_score(rules, score)
    pop = population(rules, paths, outcomes, window, as_of, now)
    scores = pop.scores(score)
    labels = pop.labels()
    cal = calibrate(scores, labels, edges, min_precision, capacity)
    return CalibrationRun(pop, cal, score, scores, labels)
