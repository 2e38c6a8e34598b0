"""`leadscore calibrate` and `leadscore backtest` end to end, in a subprocess.

The JSON is checked against the library's figures and an independent band count; the HTML
report is opened in headless Chromium, with no network, and must render its three charts
without a console message.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from outcome_helpers import independent_bands

from leadscore.generate import write_events
from leadscore.rules import load_rules

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "rules.yaml"
_SCRIPT = Path(sys.executable).parent / "leadscore"
LEADSCORE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "leadscore.cli"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DAY = 86400.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEADSCORE, *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cal") / "events.jsonl"
    write_events(path, contacts=400, events=12000, seed=9, conversions=0.1)
    return path


def test_calibrate_prints_bands_and_writes_json_and_html(history: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "cal.json", tmp_path / "cal.html"
    done = cli(
        "calibrate", "-r", str(EXAMPLE), "-e", str(history), "--conversion", "purchase",
        "--window", "14d", "--json", str(out), "--html", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Conversion by total score" in done.stdout
    assert "recommended threshold: total >=" in done.stdout
    doc = orjson.loads(out.read_bytes())
    for key in ("as_of", "window", "score", "population", "converted", "base_rate", "auc"):
        assert key in doc
    assert set(doc["recommended"]) == {"threshold", "precision", "recall", "lift", "leads"}
    assert (doc["window"], doc["score"]) == ("2w", "total")  # 14d, spelt shortest
    assert sum(b["contacts"] for b in doc["bands"]) == doc["population"]
    assert sum(b["converted"] for b in doc["bands"]) == doc["converted"] > 0
    from datetime import datetime

    as_of = datetime.fromisoformat(doc["as_of"]).timestamp()
    edges = [b["lo"] for b in doc["bands"]] + [doc["bands"][-1]["hi"]]
    expected = independent_bands(load_rules(EXAMPLE), [history], as_of, 14 * DAY, edges)
    assert [(b["contacts"], b["converted"]) for b in doc["bands"]] == expected
    thresholds = [p["threshold"] for p in doc["curve"]]
    assert thresholds == sorted(set(thresholds), reverse=True)
    assert doc["recommended"]["threshold"] in thresholds
    page = report.read_text()
    assert "<script src" not in page  # plotly is inlined: nothing to fetch
    assert f"Of {doc['population']:,} contacts in play" in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--conversion", "deal.won"], "conversion action 'deal.won' never occurs"),
        (["--conversion", "purchase", "--as-of", "2030-01-01"], "is outside the data"),
        (["--conversion", "purchase", "--window", "soon"], "--window"),
        (["--conversion", "purchase", "--score", "karma"], "unknown --score 'karma'"),
        (["--conversion", "purchase", "--bands", "5,1"], "--bands needs"),
        ([], "no outcomes: name the converting action with --conversion"),
    ],
)
def test_calibrate_bad_input_is_one_line(history: Path, args: list[str], message: str) -> None:
    done = cli("calibrate", "-r", str(EXAMPLE), "-e", str(history), *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_calibrate_no_converters_is_one_line(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text(
        '{"contact":"a","action":"page.hit","ts":"2026-06-01T00:00:00Z","props":{"url":"/x"}}\n'
        '{"contact":"b","action":"page.hit","ts":"2026-06-02T00:00:00Z","props":{"url":"/x"}}\n'
        '{"contact":"a","action":"purchase","ts":"2026-06-01T01:00:00Z"}\n'
        '{"contact":"c","action":"page.hit","ts":"2026-06-20T00:00:00Z","props":{"url":"/x"}}\n'
    )
    args = ["-r", str(EXAMPLE), "-e", str(events), "--conversion", "purchase"]
    done = cli("calibrate", *args)  # the default as_of, 30 days before the end, is too early
    assert done.returncode == 1
    assert "the default --as-of" in done.stderr and "shorten --window" in done.stderr
    done = cli("calibrate", *args, "--window", "3d")
    assert done.returncode == 1
    assert "none of the 1 contacts in play" in done.stderr
    assert "pick an earlier --as-of or a longer --window" in done.stderr


def test_backtest_compares_two_rules_files(history: Path, tmp_path: Path) -> None:
    lower = tmp_path / "lower.yaml"
    lower.write_text(EXAMPLE.read_text().replace("at_least: 50", "at_least: 35", 1))
    out, report = tmp_path / "bt.json", tmp_path / "bt.html"
    done = cli(
        "backtest", "-r", str(lower), "--baseline", str(EXAMPLE), "-e", str(history),
        "--conversion", "purchase", "--window", "14d", "--json", str(out), "--html", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Trigger firings" in done.stdout and "nothing delivered" in done.stdout
    doc = orjson.loads(out.read_bytes())
    assert {"baseline", "candidate", "changed"} <= set(doc)
    for side in ("baseline", "candidate"):
        assert {"triggers", "contacts", "score_quantiles", "auc"} <= set(doc[side])
    assert doc["candidate"]["triggers"]["mql"] > doc["baseline"]["triggers"]["mql"]
    assert doc["changed"] and all("why" in c for c in doc["changed"])
    assert doc["candidate"]["at_least"]["mql"]["threshold"] == 35

    alone = cli("backtest", "-r", str(EXAMPLE), "-e", str(history), "--json", "-")
    assert alone.returncode == 0, alone.stderr
    assert set(orjson.loads(alone.stdout)) == {"candidate"}


def _chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", *extra, url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)
def test_report_renders_in_headless_chromium(history: Path, tmp_path: Path) -> None:
    report = tmp_path / "cal.html"
    done = cli(
        "calibrate", "-r", str(EXAMPLE), "-e", str(history), "--conversion", "purchase",
        "--window", "14d", "--html", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    dom = _chromium(report.as_uri(), tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # No console output at all: plotly logs nothing when it renders, an error would show here.
    assert "CONSOLE" not in dom.stderr, [x for x in dom.stderr.splitlines() if "CONSOLE" in x]
    for chart in ("bands", "curve", "distribution"):
        start = dom.stdout.index(f'id="{chart}"')
        assert 'class="main-svg"' in dom.stdout[start : start + 20000], chart  # drawn
    shot = tmp_path / "shot.png"
    pic = _chromium(report.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1200,2200")
    assert pic.returncode == 0 and shot.stat().st_size > 50_000  # charts, not a blank page


def test_generate_conversions_option(tmp_path: Path) -> None:
    out = tmp_path / "g.jsonl"
    done = cli("generate", "-n", "300", "-m", "8000", "--conversions", "0.3", "-o", str(out))
    assert done.returncode == 0, done.stderr
    deals = [line for line in out.read_bytes().splitlines() if b'"source":"sales"' in line]
    assert deals and all(b'"action":"purchase"' in line for line in deals)
    bad = cli("generate", "-n", "3", "-m", "3", "--conversions", "2")
    assert bad.returncode != 0 and "--conversions" in bad.stderr


def test_calibrate_with_outcomes_csv_and_policies(history: Path, tmp_path: Path) -> None:
    """A CRM export instead of conversion events; --capacity and --min-precision choose."""
    buys = [
        orjson.loads(line)
        for line in history.read_bytes().splitlines()
        if b'"action":"purchase"' in line
    ]
    csv = tmp_path / "won.csv"
    csv.write_text("contact,converted_at\n" + "".join(f"{b['contact']},{b['ts']}\n" for b in buys))
    base = ["calibrate", "-r", str(EXAMPLE), "-e", str(history), "--window", "14d", "--json", "-"]
    by_action = orjson.loads(cli(*base, "--conversion", "purchase").stdout)
    by_csv = cli(*base, "--outcomes", str(csv))
    assert by_csv.returncode == 0, by_csv.stderr
    doc = orjson.loads(by_csv.stdout)
    # Same conversions, same population and labels: only the purchase events' own points
    # differ, and those come after as_of for every converter, so nothing differs at all.
    assert (doc["population"], doc["converted"], doc["bands"]) == (
        by_action["population"],
        by_action["converted"],
        by_action["bands"],
    )
    capped = orjson.loads(cli(*base, "--conversion", "purchase", "--capacity", "25").stdout)
    assert capped["policy"] == "capacity 25" and capped["recommended"]["leads"] <= 25
    strict = orjson.loads(cli(*base, "--conversion", "purchase", "--min-precision", "0.3").stdout)
    assert strict["policy"] == "min-precision 0.3" and strict["recommended"]["precision"] >= 0.3
