"""Calibration on real behaviour: the RetailRocket sample, where a transaction is a purchase.

The CSV lives outside the repo (../shared/data/retailrocket/events_sample.csv, or the folder
named by LEADSCORE_SHARED_DATA); without it these tests skip. Its rows become events with
examples/retailrocket.py and are scored with examples/retailrocket.yaml.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import orjson
import pytest
from conftest import SHARED_DATA
from outcome_helpers import independent_bands, independent_rows

from leadscore.calibration import auc, calibrate
from leadscore.outcomes import conversions, population, score_of
from leadscore.rules import load_rules

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("LEADSCORE_SHARED_DATA", SHARED_DATA)) / "retailrocket"
CSV = DATA / "events_sample.csv"
DAY = 86400.0

pytestmark = pytest.mark.skipif(
    not CSV.is_file(), reason=f"RetailRocket sample not present at {CSV} (see shared/data)"
)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location(
        "retailrocket", ROOT / "examples" / "retailrocket.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("rr") / "events.jsonl"
    with CSV.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in module.convert(rows)))
    assert sum(1 for r in rows if r["event"] == "transaction") > 0
    return out


def test_bands_match_an_independent_replay(events: Path) -> None:
    rules = load_rules(ROOT / "examples" / "retailrocket.yaml")
    window = 30 * DAY
    pop = population(rules, [str(events)], conversions(["purchase"]), window)
    assert pop.intake.rejected == {}
    assert pop.intake.duplicates == 3  # the three rows repeated word for word
    scores = [score_of(m.view, "total") for m in pop.members]
    cal = calibrate(scores, pop.labels())
    edges = [b.lo for b in cal.bands] + [cal.bands[-1].hi]
    assert [(b.contacts, b.converted) for b in cal.bands] == independent_bands(
        rules, [events], pop.as_of, window, edges
    )
    rows = independent_rows(rules, [events], pop.as_of, window)
    assert [(m.contact, score_of(m.view, "total"), m.label) for m in pop.members] == rows
    assert cal.auc == auc([s for _, s, _ in rows], [y for _, _, y in rows])
