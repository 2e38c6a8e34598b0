"""`leadscore train`, `import`, and the likelihood in `run`, `explain` and `show`, through the
real command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from predict_helpers import make_table

pytest.importorskip("sklearn")

LEADSCORE = [sys.executable, "-m", "leadscore.cli"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*LEADSCORE, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A table, the model `train` wrote for it, and its report, in one folder."""
    folder = tmp_path_factory.mktemp("train")
    table = make_table(folder / "leads.csv")
    done = cli(
        "train", "--table", str(table), "--label", "Won", "--id", "Lead Id",
        "--out", str(folder / "model.json"), "--html", str(folder / "report.html"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (folder / "train.out").write_text(done.stdout)
    return folder


def test_train_names_the_leaky_column_reports_quality_and_writes_the_model(trained: Path) -> None:
    out = (trained / "train.out").read_text()
    assert "refused 'Status'" in out and "--keep it if it is known before" in out
    assert "AUC 0." in out and "Brier" in out and "top-decile lift" in out
    doc = orjson.loads((trained / "model.json").read_bytes())
    assert doc["format"] == "leadscore-model" and doc["version"] == 1
    assert f"AUC {doc['quality']['holdout']['auc']}" in out
    html = (trained / "report.html").read_text()
    assert "<svg" in html and "Status (AUC" in html and "<script" not in html


def test_import_then_run_puts_the_likelihood_on_every_contact(
    trained: Path, tmp_path: Path
) -> None:
    events = tmp_path / "leads.jsonl"
    done = cli(
        "import", "--table", str(trained / "leads.csv"), "--id", "Lead Id", "--exclude", "Won",
        "--at", "2026-06-01T00:00:00Z", "--out", str(events),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1,200 identify events" in done.stderr
    lines = [orjson.loads(x) for x in events.read_bytes().splitlines()]
    assert len(lines) == 1200 and {e["action"] for e in lines} == {"identify"}
    assert all("Won" not in e["traits"] and "Lead Id" not in e["traits"] for e in lines)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(f"""\
        version: 1
        groups: {{fit: {{}}}}
        predict: {{model: {trained / "model.json"}, as: likelihood}}
        triggers:
          - {{id: likely, score: likelihood, at_least: 80, actions: [{{add_tag: likely}}]}}
        """)
    )
    assert cli("check", str(rules)).returncode == 0
    out = tmp_path / "out"
    done = cli("run", "--rules", str(rules), "--events", str(events), "--out", str(out))
    assert done.returncode == 0, done.stderr
    contacts = [orjson.loads(x) for x in (out / "contacts.jsonl").read_bytes().splitlines()]
    assert len(contacts) == 1200
    assert all(0 <= c["likelihood"] <= 100 for c in contacts)
    likely = {c["contact"] for c in contacts if c["likelihood"] >= 80}
    fired = [orjson.loads(x) for x in (out / "triggers.jsonl").read_bytes().splitlines()]
    assert likely and {t["contact"] for t in fired} == likely
    contact = sorted(likely)[0]
    done = cli("explain", "--rules", str(rules), "--events", str(events), "--contact", contact)
    assert done.returncode == 0, done.stderr
    assert "likelihood" in done.stdout and "top factors" in done.stdout
    data = cli(
        "explain", "--rules", str(rules), "--events", str(events), "--contact", contact, "--json"
    )
    factors = orjson.loads(data.stdout)["likelihood_factors"]
    assert (
        factors["likelihood"] == next(c for c in contacts if c["contact"] == contact)["likelihood"]
    )
    assert factors["raising"]


def test_train_and_import_errors_say_what_to_do(trained: Path, tmp_path: Path) -> None:
    done = cli("train", "--table", str(trained / "leads.csv"), "--out", str(tmp_path / "m.json"))
    assert done.returncode == 1 and "--table needs --label" in done.stderr
    done = cli("train", "--table", str(tmp_path / "nope.csv"), "--label", "Won", "--out", "m.json")
    assert done.returncode == 1 and "table not found" in done.stderr
    done = cli(
        "train", "--table", str(trained / "leads.csv"), "--label", "Won", "--min-class", "5000",
        "--out", str(tmp_path / "m.json"),
    )  # fmt: skip
    assert done.returncode == 1 and "at least 5000 of each" in done.stderr
    assert "Traceback" not in done.stderr
    done = cli(
        "train", "--table", str(trained / "leads.csv"), "--label", "Won", "--max-counters", "-2",
        "--out", str(tmp_path / "m.json"),
    )  # fmt: skip
    assert done.returncode == 1 and "--max-counters must be -1 (no limit) or more" in done.stderr
    done = cli("import", "--table", str(trained / "leads.csv"), "--id", "Nope")
    assert done.returncode == 1 and "no column 'Nope'" in done.stderr
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\npredict: {model: missing.json}\n")
    done = cli("check", str(rules))
    assert done.returncode == 1 and "missing.json: model file not found" in done.stderr
