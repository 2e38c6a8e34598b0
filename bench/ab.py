"""Two commits, one run: ``python -m bench.ab --base main --designs c1,d1 --rounds 3``.

Each commit is frozen with ``git archive`` (as ``snapshot.sh`` does) and every round runs each
design on the base, then on the head (the order alternates between rounds, so neither side
always runs on a warmer or a quieter box), each in a fresh process with its own commit's
code. Reported per design: the median of events per wall-clock second and per CPU second on
each side, and their ratios head/base. Redis designs get a private redis-server, emptied and
pre-loaded before every run (not timed), and checked to end with nothing pending.

``--compiled head`` (or ``base,head``) builds that side's frozen tree with ``setup.py
build_ext --inplace`` (not timed; a plain build, not ``make``'s profile-guided one, so a
compiled side is measured a little slow) and runs it with ``LEADSCORE_ENGINE=compiled``, so a build
that falls back to Python fails instead of passing for a compiled one; the other side runs
with ``LEADSCORE_ENGINE=python``. ``python -m bench.ab --base 5dce17e --designs d1
--compiled head --rounds 4`` is issue 19's d1 figure: the compiled head against the
interpreted main it started from.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    RESULTS,
    ROOT,
    count_lines,
    events_file,
    load_redis_server,
    rules_path,
    split_file,
)
from bench.throughput import PARTITIONS, Context, check_redis, prepare_redis

MODES = {"c1": "files", "d1": "redis", "e": "engine", "a": "naive"}


def freeze(ref: str, into: Path) -> str:
    """``ref``'s tree in ``into``; returns its short commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return commit


def build(tree: Path) -> None:
    """Compile ``tree``'s hot path in place (Cython; plainly, without ``make``'s profile)."""
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace", "-j", "2"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), "LEADSCORE_ENGINE": "compiled"},
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building {tree} failed:\n{done.stderr.decode()[-3000:]}")


def one_run(
    tree: Path, design: str, ctx: Context, timeout: float, engine: str = "python"
) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"{design}-", dir=ctx.tmp))
    mode = MODES[design]
    spec: dict[str, Any] = {"mode": mode, "rules": ctx.rules, "out": str(out), "workers": 1}
    if mode == "engine":
        spec["events"] = [str(ctx.single)]
    elif mode in ("naive", "files"):
        spec["events"] = [str(p) for p in ctx.split]
    else:
        spec.update(redis_url=ctx.redis_url, partitions=PARTITIONS, tail=False, out=None)
        prepare_redis(ctx)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.runner", orjson.dumps(spec).decode()],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree), "LEADSCORE_ENGINE": engine},
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{design} on {tree} failed:\n{proc.stderr.decode()[-3000:]}")
    part = orjson.loads(proc.stdout.splitlines()[-1])
    result = {
        "events_per_s": ctx.events / part["seconds"],
        "events_per_cpu_s": ctx.events / part["cpu_seconds"],
        "maxrss_mb": part["maxrss_mb"],
    }
    if mode == "redis":
        checked = check_redis(ctx)
        if checked["pending_after"] or checked["unread_after"]:
            raise RuntimeError(f"{design} on {tree} left input unacknowledged: {checked}")
        result["triggers"] = checked["triggers"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--base", default="main", help="the commit to compare against")
    parser.add_argument("--head", default="HEAD")
    parser.add_argument("--designs", default="c1,d1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--compiled",
        nargs="?",
        const="head",
        default="",
        help="sides to build and run compiled: head (the default with the flag), base or "
        "base,head; the others run LEADSCORE_ENGINE=python",
    )
    args = parser.parse_args(argv)
    compiled = {side for side in args.compiled.split(",") if side}
    if not compiled <= {"base", "head"}:
        parser.error(f"--compiled takes base, head or base,head, not {args.compiled!r}")
    engines = {side: "compiled" if side in compiled else "python" for side in ("base", "head")}
    # SIGTERM unwinds like Ctrl-C, so the private redis-server and the snapshots are removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    designs = args.designs.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="leadscore-ab-"))
    server = None
    try:
        trees = {side: tmp / side for side in ("base", "head")}
        commits = {
            side: freeze(ref, trees[side])
            for side, ref in (("base", args.base), ("head", args.head))
        }
        for side in sorted(compiled):
            print(f"building {side} ({commits[side]}) compiled", flush=True)
            build(trees[side])
        single = events_file(args.events, args.contacts, args.seed)
        ctx = Context(str(rules_path()), single, split_file(single, 2), count_lines([single]), tmp)
        if any(MODES[d] == "redis" for d in designs):
            server = load_redis_server().RedisServer(tmp / "redis").start()
            ctx.redis_url = server.url
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in range(args.rounds):
            sides = ("base", "head") if r % 2 == 0 else ("head", "base")
            for design in designs:
                for side in sides:
                    got = one_run(trees[side], design, ctx, args.timeout, engines[side])
                    got["load"] = os.getloadavg()[0]
                    runs.setdefault((design, side), []).append(got)
                    print(
                        f"round {r + 1} {design} {side} ({commits[side]}): "
                        f"{got['events_per_s']:,.0f} events/s, "
                        f"{got['events_per_cpu_s']:,.0f} per CPU s, {engines[side]}, "
                        f"load {got['load']:.1f}",
                        flush=True,
                    )
        report: dict[str, Any] = {
            "commits": commits,
            "engines": engines,
            "rounds": args.rounds,
            "designs": {},
        }
        for design in designs:
            row: dict[str, Any] = {}
            for side in ("base", "head"):
                got = runs[(design, side)]
                row[side] = {
                    key: statistics.median(g[key] for g in got)
                    for key in ("events_per_s", "events_per_cpu_s", "maxrss_mb")
                }
                row[side]["rounds"] = got
            for key in ("events_per_s", "events_per_cpu_s"):
                row[f"ratio_{key}"] = row["head"][key] / row["base"][key]
            report["designs"][design] = row
            print(
                f"{design}: base {row['base']['events_per_s']:,.0f} -> head "
                f"{row['head']['events_per_s']:,.0f} events/s ({row['ratio_events_per_s']:.2f}x); "
                f"per CPU s {row['base']['events_per_cpu_s']:,.0f} -> "
                f"{row['head']['events_per_cpu_s']:,.0f} ({row['ratio_events_per_cpu_s']:.2f}x)"
            )
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "ab.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
