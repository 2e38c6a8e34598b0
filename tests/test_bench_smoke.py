"""The benchmark harness runs end to end in quick mode, so it cannot rot between releases.

Only the shape of the report is checked: timings on CI machines mean nothing, and the real
figures live in bench/README.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGNS = {"a", "b", "e", "c1", "c2t", "c2p", "d1", "d2t", "d2p", "d1s"}


@pytest.mark.timeout(180)
def test_quick_harness_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # Own session: on a timeout the harness AND the flow processes it started are killed.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.throughput", "--quick", "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=170)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    report = orjson.loads(out.read_bytes())

    for section in ("memory", "redis_memory"):
        assert "error" not in report[section], report[section]
    assert report["config"]["quick"] is True
    assert report["machine"]["nproc"] >= 1

    runs = report["throughput"]["runs"]
    assert set(runs) == DESIGNS
    for key, run in runs.items():
        assert "error" not in run, (key, run.get("error"))
        assert run["events_per_s"] > 0
        assert run["samples"]
    # every Redis run drained its input and acknowledged it in its checkpoints
    for key in ("d1", "d2t", "d2p", "d1s"):
        sample = runs[key]["samples"][0]
        assert sample["pending_after"] == 0
        assert sample["unread_after"] == 0
    ratios = report["throughput"]["ratios"]
    assert {"c1/a", "c1/b", "d1/a", "c2t/c1", "c2p/c1", "d2t/d1", "d2p/d1"} <= set(ratios)

    memory = report["memory"]
    assert memory["rss_bytes_per_contact"] > 0
    assert memory["packed_bytes"]["p50"] > 0
    assert report["redis_memory"]["sampled"] > 0

    (latency,) = report["latency"]["runs"]
    assert "error" not in latency, latency["error"]
    assert latency["fraction_of_d1"] == 0.5
    assert latency["probes"] > 0
    assert latency["ms"]["p50"] is not None

    scaling = report["scaling"]
    assert [row["contacts"] for row in scaling] == [100, 1_000]
    for row in scaling:
        for key in ("b", "c1", "d1"):
            assert "error" not in row[key], (row["contacts"], key, row[key]["error"][-500:])
            assert row[key]["events_per_s"] > 0


def test_null_engine_runs_score_nothing_and_still_read_every_event(tmp_path: Path) -> None:
    """--null-engine's bound is only a bound if the stub is what the timed run calls."""
    from leadscore.generate import generate_events

    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(generate_events(300, 3000, seed=7)) + b"\n")

    def run(null: bool) -> tuple[dict[str, Any], list[bytes]]:
        out = tmp_path / f"out-{null}"
        spec = {
            "mode": "engine",
            "rules": str(ROOT / "examples" / "rules.yaml"),
            "events": [str(events)],
            "out": str(out),
            "null_engine": null,
        }
        done = subprocess.run(
            [sys.executable, "-m", "bench.runner", orjson.dumps(spec).decode()],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=120,
        )
        changes = (out / "changes.jsonl").read_bytes().splitlines()
        return orjson.loads(done.stdout.splitlines()[-1]), changes

    scored, scored_changes = run(null=False)
    stubbed, stubbed_changes = run(null=True)
    assert scored["triggers"] > 0 and len(scored_changes) > 1000
    assert stubbed["triggers"] == 0 and stubbed_changes == []
    assert stubbed["contacts"] == scored["contacts"] > 200  # the same events read and parsed


@pytest.mark.timeout(180)
def test_delivery_bench_runs_end_to_end_in_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "delivery.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.delivery", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = orjson.loads(out.read_bytes())
    latency, throughput = report["latency"], report["throughput"]
    assert latency["arrived"] == latency["firings"] > 0
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert throughput["arrived"] == throughput["firings"]
    assert throughput["deliveries_per_s"] > 0 and throughput["cpu_us_per_delivery"] > 0


def test_read_api_bench_measures_the_read_against_its_baselines(tmp_path: Path) -> None:
    """bench/read_api.py --quick: real service and Redis; every figure is there (no timing
    is asserted, only that the read answered as of the read and was measured)."""
    from bench import read_api

    out = tmp_path / "read_api.json"
    assert read_api.main(["--quick", "--json", str(out)]) == 0
    figures = orjson.loads(out.read_bytes())
    assert figures["function"]["documents"] > 50 and figures["function"]["view_at_us"] > 0
    for name in ("read", "stored", "baseline"):
        assert figures["http"][name]["n"] == 400 and figures["http"][name]["p50_ms"] > 0
