"""Calibrate and backtest on the benchmark input: throughput against `run`, and peak memory.

``python -m bench.replays`` replays the cached input (default 1,000,000 events for 100,000
contacts, seed 7, the throughput benchmark's) in a fresh process per measurement, in
interleaved rounds, and reports each design's events per second as a ratio to ``run`` (the
Bytewax file flow, design c1 of ``bench.throughput``) measured in the same round:

- ``run``: ``flows.scoring`` on the file, one worker (what ``leadscore run`` does);
- ``calibrate``: ``calibrate_files`` with the default ``as_of`` (two passes: one to find the
  last event time, one to score), ``--conversion purchase``, 30-day window;
- ``calibrate-as-of``: the same with ``as_of`` given (one pass);
- ``backtest``: one rules file, no outcomes;
- ``backtest-2``: a candidate (``mql`` at 40) against the example rules, one process each;
- ``backtest-2-outcomes``: the same with ``--conversion purchase`` (adds the scan pass).

Events per second counts the input lines once per measurement, whatever the passes or sides.
Peak memory is the largest resident set of the measuring process or of any worker it spawned
(``ru_maxrss``). Results go to ``bench/results/replays.json``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import RESULTS, count_lines, events_file, machine_info, rules_path

DESIGNS = ("run", "calibrate", "calibrate-as-of", "backtest", "backtest-2", "backtest-2-outcomes")
DAY = 86400.0


def _maxrss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One design, in this (fresh) process."""
    design = spec["design"]
    rules, events, candidate = spec["rules"], [spec["events"]], spec["candidate"]
    extra: dict[str, Any] = {}
    if design == "run":
        from bytewax.testing import run_main

        from flows.scoring import FlowConfig, build_flow

        flow = build_flow(FlowConfig(rules=rules, events=events, out=spec["out"]))
        t0 = time.perf_counter()
        run_main(flow)
    elif design.startswith("calibrate"):
        from leadscore.calibrate import calibrate_files
        from leadscore.outcomes import conversions
        from leadscore.rules import load_rules

        compiled = load_rules(rules)
        t0 = time.perf_counter()
        as_of = spec.get("as_of") if design == "calibrate-as-of" else None
        result = calibrate_files(
            compiled, events, conversions(["purchase"]), 30 * DAY, as_of, now=spec["now"]
        )
        extra = {
            "population": result.calibration.population,
            "converted": result.calibration.converted,
            "auc": round(result.calibration.auc, 4),
            "as_of": result.population.as_of,
        }
    else:
        from leadscore.backtest import backtest
        from leadscore.outcomes import conversions

        t0 = time.perf_counter()
        if design == "backtest":
            out = backtest(rules, events, now=spec["now"], processes=1)
        else:
            won = conversions(["purchase"]) if design.endswith("outcomes") else None
            out = backtest(
                candidate, events, rules, won, window=30 * DAY, now=spec["now"], processes=2
            )
            extra = {"changed": len(out["changed"])}
        extra["contacts"] = out["candidate"]["contacts"]
    seconds = time.perf_counter() - t0
    own, children = _maxrss_mb()
    return {"seconds": seconds, "maxrss_mb": max(own, children), "own_mb": own, **extra}


def _fresh(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.replays", "--one", orjson.dumps(spec).decode()],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{spec['design']} failed: {done.stderr[-3000:]}")
    return orjson.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        sys.stdout.write(orjson.dumps(measure(orjson.loads(args.one))).decode() + "\n")
        return
    designs = [d for d in args.designs.split(",") if d]
    path = events_file(args.events, args.contacts, args.seed)
    lines = count_lines([path])
    rules = rules_path()
    tmp = Path(tempfile.mkdtemp(prefix="bench-replays-"))
    candidate = tmp / "candidate.yaml"
    text = rules.read_text()
    candidate.write_text(text.replace("at_least: 50", "at_least: 40", 1))
    spec: dict[str, Any] = {
        "rules": str(rules),
        "candidate": str(candidate),
        "events": str(path),
        "out": str(tmp / "out"),
        "now": 1_800_000_000.0,
    }
    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(args.rounds):
        got: dict[str, dict[str, Any]] = {}
        for design in designs:
            if design == "calibrate-as-of" and "calibrate" in got:
                spec["as_of"] = got["calibrate"]["as_of"]
            got[design] = res = _fresh({**spec, "design": design})
            res["events_per_s"] = lines / res["seconds"]
            print(
                f"round {r + 1} {design:>20}: {res['events_per_s']:>9,.0f} events/s "
                f"{res['seconds']:6.1f}s peak {res['maxrss_mb']:,.0f} MB",
                flush=True,
            )
        rounds.append(got)
    summary: dict[str, Any] = {}
    for design in designs:
        rates = [r[design]["events_per_s"] for r in rounds]
        ratios = [
            r[design]["events_per_s"] / r["run"]["events_per_s"] for r in rounds if "run" in r
        ]
        summary[design] = {
            "events_per_s": statistics.median(rates),
            "vs_run": round(statistics.median(ratios), 3) if ratios else None,
            "peak_mb": max(r[design]["maxrss_mb"] for r in rounds),
        }
        print(
            f"{design:>20}: median {summary[design]['events_per_s']:>9,.0f} events/s, "
            f"{summary[design]['vs_run']}x run, peak {summary[design]['peak_mb']:,.0f} MB"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "machine": machine_info(),
        "input": {"events": lines, "contacts": args.contacts, "seed": args.seed},
        "rounds": rounds,
        "summary": summary,
    }
    (RESULTS / "replays.json").write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
