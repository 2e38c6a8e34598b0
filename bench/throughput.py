"""End-to-end benchmark: leadscore against baselines measured in the same run.

``python -m bench.throughput [--events 1000000 --contacts 100000 --seed 7] [--json out.json]
[--quick] [--repeat N] [--only throughput,memory,latency,scaling]``

Every figure is a ratio against a baseline from the same run, because the machine is shared
and noisy. Runs are interleaved round by round (a, b, c1, ... then again) so a slow minute
hurts every design alike, and each runs in a fresh process (``bench.runner``). The table
shows the median of the rounds and the best one; ratios use medians.

Designs, all on the same generated events (cached under ``bench/results/cache``):

- a   naive Bytewax: ``key_on(contact)`` + ``stateful_map``, same engine and records
- b   limit: plain Python, ``orjson.loads`` and a dict update per event, no Bytewax
- e   leadscore's work without Bytewax (parse, engine, records, read models): a ceiling for c1
- c1  leadscore on files (``build_flow``), 1 worker
- c2t 2 workers as threads of one process (they share the GIL)
- c2p 2 processes x 1 worker (``-i/-a`` on loopback)
- d1  leadscore on Redis: streams pre-loaded (100 events per entry), checkpoints out, 1 worker
- d2t / d2p  likewise with 2 workers (threads / processes)
- d1s d1 with 5 events per stream entry, what a live producer sends at moderate rates

File runs read the input split in two by contact (one Bytewax input partition per file), so
two workers can share the parsing; the split is the same for 1 and 2 workers.

``--null-engine`` runs the throughput section with an ``Engine.apply`` that does nothing (see
``bench.runner.null_engine``). a, c and d do the same engine work per event and b none, so
the engine's time can only pull c1/a and d1/a (above 1) toward 1 and c1/b down: the
null-engine ratios are the most any engine speed-up could reach. Its report goes to
``throughput-null-engine.json``.
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from rich.console import Console
from rich.table import Table

from bench.common import (
    RESULTS,
    ROOT,
    count_lines,
    events_file,
    iter_lines,
    load_redis_server,
    machine_info,
    rules_path,
    split_file,
)
from bench.latency import measure_latency
from bench.memory import redis_memory
from state.redis_store import RedisStore

PARTITIONS = 16
SEND_BATCH = 100
console = Console(width=150)  # wide enough for the tables when piped to a file


@dataclass(frozen=True)
class Design:
    key: str
    label: str
    mode: str  # runner mode
    workers: int = 1  # threads per process
    procs: int = 1
    batch: int = SEND_BATCH  # Redis: events per input stream entry


DESIGNS = (
    Design("a", "naive Bytewax, key_on(contact) + stateful_map", "naive"),
    Design("b", "limit: orjson + dict update, no Bytewax", "limit"),
    Design("e", "engine + records, no Bytewax", "engine"),
    Design("c1", "leadscore files, 1 worker", "files"),
    Design("c2t", "leadscore files, 2 workers (threads)", "files", workers=2),
    Design("c2p", "leadscore files, 2 processes x 1 worker", "files", procs=2),
    Design("d1", "leadscore Redis, 1 worker", "redis"),
    Design("d2t", "leadscore Redis, 2 workers (threads)", "redis", workers=2),
    Design("d2p", "leadscore Redis, 2 processes x 1 worker", "redis", procs=2),
    # What a live producer at a moderate rate sends: a few events per entry.
    Design("d1s", "leadscore Redis, 1 worker, 5 events per entry", "redis", batch=5),
)

# (numerator, denominator, target ratio or None, what the target says)
RATIOS = (
    ("c1", "a", 3.0, "c1 >= 3x a"),
    ("c1", "b", 0.35, "c1 >= 35% of b"),
    ("d1", "a", 2.0, "d1 >= 2x a"),
    ("c2t", "c1", 1.0, "2 workers not below 1 (aim 1.5x)"),
    ("c2p", "c1", 1.0, "2 workers not below 1 (aim 1.5x)"),
    ("d2t", "d1", 1.0, "2 workers not below 1"),
    ("d2p", "d1", 1.0, "2 workers not below 1"),
    ("d1s", "d1", None, "5 vs 100 events per stream entry"),
    ("c1", "e", None, "share of the no-Bytewax ceiling"),
    ("e", "b", None, "engine work vs parse + dict"),
)


@dataclass
class Context:
    rules: str
    single: Path
    split: list[Path]
    events: int
    tmp: Path
    redis_url: str | None = None
    after_d1: Callable[[], None] | None = None
    null_engine: bool = False
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


# --------------------------------------------------------------------------- one run


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.runner", orjson.dumps(spec).decode()],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _collect(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[dict[str, Any]]:
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:  # a hang, or Ctrl-C: leave no flow process behind
            for p in procs:
                p.kill()
                p.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark run failed:\n{err.decode()[-3000:]}")
        results.append(orjson.loads(out.splitlines()[-1]))
    return results


def prepare_redis(ctx: Context, batch: int = SEND_BATCH) -> dict[str, Any]:
    """Empty Redis, then pre-load the input streams (not timed as part of the flow)."""
    assert ctx.redis_url is not None
    client = redis.Redis.from_url(ctx.redis_url)
    client.flushall()
    client.close()
    with RedisStore(ctx.redis_url, partitions=PARTITIONS) as store:
        store.ensure(PARTITIONS)
        t0 = time.perf_counter()
        sent = store.send_events(iter_lines(ctx.single), batch=batch)
        seconds = time.perf_counter() - t0
    return {"events": sent.events, "entries": sent.entries, "events_per_s": sent.events / seconds}


def check_redis(ctx: Context) -> dict[str, Any]:
    """After a Redis run: everything acknowledged, and how many states and triggers exist."""
    assert ctx.redis_url is not None
    with RedisStore(ctx.redis_url) as store:
        pending = sum(store.pending(p) for p in range(PARTITIONS))
        keys = store.keys
        client = store.r
        triggers = sum(int(client.xlen(keys.triggers(p))) for p in range(PARTITIONS))
        unread = sum(
            int(g.get("lag") or 0)
            for p in range(PARTITIONS)
            for g in client.xinfo_groups(keys.input(p))  # type: ignore[union-attr]
        )
    return {"pending_after": pending, "unread_after": unread, "triggers": triggers}


def run_design(design: Design, ctx: Context, timeout: float) -> dict[str, Any]:
    """One timed run of ``design``; throughput is input lines over wall-clock seconds."""
    out = Path(tempfile.mkdtemp(prefix=f"{design.key}-", dir=ctx.tmp))
    spec: dict[str, Any] = {
        "mode": design.mode,
        "rules": ctx.rules,
        "out": str(out),
        "workers": design.workers,
    }
    if ctx.null_engine:
        spec["null_engine"] = True
    extra: dict[str, Any] = {}
    if design.mode in ("limit", "engine"):
        spec["events"] = [str(ctx.single)]
    elif design.mode in ("naive", "files"):
        spec["events"] = [str(p) for p in ctx.split]
    else:
        spec.update(redis_url=ctx.redis_url, partitions=PARTITIONS, tail=False, out=None)
        extra["load"] = prepare_redis(ctx, design.batch)
    try:
        if design.procs > 1:
            addresses = [f"127.0.0.1:{_free_port()}" for _ in range(design.procs)]
            procs = [
                _launch({**spec, "addresses": addresses, "proc_id": i}) for i in range(design.procs)
            ]
        else:
            procs = [_launch(spec)]
        parts = _collect(procs, timeout)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    seconds = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    result = {
        "seconds": round(seconds, 3),
        "events_per_s": round(ctx.events / seconds),
        "cpu_seconds": round(sum(p["cpu_seconds"] for p in parts), 3),
        "maxrss_mb": round(max(p["maxrss_mb"] for p in parts), 1),
        **extra,
    }
    if design.mode == "redis":
        result.update(check_redis(ctx))
        if design.key == "d1" and ctx.after_d1 is not None:
            ctx.after_d1()
            ctx.after_d1 = None
    return result


# --------------------------------------------------------------------------- sections


def section_throughput(
    ctx: Context, designs: list[Design], repeat: int, timeout: float
) -> dict[str, Any]:
    for round_no in range(repeat):
        for design in designs:
            with console.status(f"round {round_no + 1}/{repeat}: {design.key} {design.label}"):
                try:
                    result = run_design(design, ctx, timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    # A hung or crashed design is a finding, not a reason to lose the others.
                    result = {"error": f"{type(err).__name__}: {str(err)[-1500:]}"}
            ctx.samples.setdefault(design.key, []).append(result)
            if "error" in result:
                console.log(f"{design.key:<4} FAILED: {result['error'][:300]}")
            else:
                console.log(f"{design.key:<4} {result['events_per_s']:>10,} events/s")
    runs: dict[str, Any] = {}
    for design in designs:
        all_samples = ctx.samples[design.key]
        samples = [s for s in all_samples if "error" not in s]
        if not samples:
            runs[design.key] = {
                "label": design.label,
                "workers": design.workers * design.procs,
                "error": all_samples[-1]["error"],
                "samples": all_samples,
            }
            continue
        rates = [s["events_per_s"] for s in samples]
        cpu = statistics.median(s["cpu_seconds"] for s in samples)
        runs[design.key] = {
            "label": design.label,
            "workers": design.workers * design.procs,
            "events_per_s": round(statistics.median(rates)),
            "best_events_per_s": max(rates),
            "cpu_seconds": cpu,
            # Less sensitive than wall time to other processes on a shared machine.
            "events_per_cpu_s": round(ctx.events / cpu) if cpu else None,
            "maxrss_mb": max(s["maxrss_mb"] for s in samples),
            "failed_rounds": len(all_samples) - len(samples),
            "samples": all_samples,
        }
    # What the dataflow adds per event on top of the same work done in a plain loop (e).
    ok = {key for key, run in runs.items() if "events_per_s" in run}
    if "e" in ok:
        base = 1e6 / runs["e"]["events_per_s"]
        for key in ("a", "c1", "d1"):
            if key in ok:
                runs[key]["us_per_event_over_e"] = round(1e6 / runs[key]["events_per_s"] - base, 2)
    ratios: dict[str, Any] = {}
    for num, den, target, text in RATIOS:
        if num in ok and den in ok:
            value = runs[num]["events_per_s"] / runs[den]["events_per_s"]
            ratios[f"{num}/{den}"] = {
                "value": round(value, 3),
                "target": target,
                "holds": None if target is None else value >= target,
                "what": text,
            }
    return {"events": ctx.events, "runs": runs, "ratios": ratios}


def section_memory(ctx: Context, contacts: int, timeout: float) -> dict[str, Any]:
    spec = {"rules": ctx.rules, "events": str(ctx.single), "contacts": contacts}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.memory", orjson.dumps(spec).decode()],
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory run failed:\n{proc.stderr.decode()[-3000:]}")
    return orjson.loads(proc.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def section_scaling(
    ctx: Context, contact_counts: list[int], events: int, seed: int, timeout: float
) -> list[dict[str, Any]]:
    """Throughput and peak RSS at a fixed event count as the number of contacts grows."""
    rows = []
    by_key = {d.key: d for d in DESIGNS}
    for contacts in contact_counts:
        with console.status(f"scaling: generating {events:,} events for {contacts:,} contacts"):
            path = events_file(events, contacts, seed)
        sub = Context(
            ctx.rules, path, split_file(path, 2), count_lines([path]), ctx.tmp, ctx.redis_url
        )
        row: dict[str, Any] = {"contacts": contacts, "events": sub.events}
        keys = ["b", "c1"] + (["d1"] if ctx.redis_url else [])
        for key in keys:
            with console.status(f"scaling: {contacts:,} contacts, {key}"):
                try:
                    result = run_design(by_key[key], sub, timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    row[key] = {"error": f"{type(err).__name__}: {str(err)[-1500:]}"}
                    console.log(f"scaling {contacts:>9,} contacts {key:<3} FAILED")
                    continue
            row[key] = {
                "events_per_s": result["events_per_s"],
                "maxrss_mb": result["maxrss_mb"],
            }
            console.log(f"scaling {contacts:>9,} contacts {key:<3} {result['events_per_s']:>10,}/s")
        for key in ("c1", "d1"):
            if "events_per_s" in row.get(key, {}) and "events_per_s" in row["b"]:
                row[f"{key}/b"] = round(row[key]["events_per_s"] / row["b"]["events_per_s"], 3)
        rows.append(row)
    return rows


def _guard(fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one section; a failure is reported in its place instead of losing the report."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as err:
        console.print(f"[bold red]{fn.__name__} failed[/]: {err}")
        return {"error": f"{type(err).__name__}: {str(err)[-1500:]}"}


# --------------------------------------------------------------------------- report


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    frozen = os.environ.get("LEADSCORE_BENCH_COMMIT")  # set by bench/snapshot.sh
    if frozen:
        return {"commit": frozen, "engine_tree_dirty": False, "snapshot": True}
    dirty = git("status", "--porcelain", "--", "leadscore", "flows", "state")
    return {"commit": git("rev-parse", "--short", "HEAD"), "engine_tree_dirty": bool(dirty)}


def print_report(report: dict[str, Any]) -> None:
    tp = report.get("throughput")
    if tp:
        base_a = tp["runs"].get("a", {}).get("events_per_s")
        base_b = tp["runs"].get("b", {}).get("events_per_s")
        failed = {k: r["error"] for k, r in tp["runs"].items() if "error" in r}
        title = f"Throughput, {tp['events']:,} events (median of rounds)"
        if report["config"].get("null_engine"):
            title += ", NULL ENGINE: apply does nothing, so ratios are upper bounds"
        table = Table(title=title)
        columns = ("run", "design", "workers", "events/s", "best", "per CPU s", "RSS MB")
        for col in (*columns, "/a", "/b"):
            table.add_column(col, justify="left" if col in ("run", "design") else "right")
        for key, run in tp["runs"].items():
            if key in failed:
                table.add_row(key, run["label"], str(run["workers"]), "FAILED", *["-"] * 5)
                continue
            rate = run["events_per_s"]
            table.add_row(
                key,
                run["label"],
                str(run["workers"]),
                f"{rate:,}",
                f"{run['best_events_per_s']:,}",
                f"{run['events_per_cpu_s']:,}" if run.get("events_per_cpu_s") else "-",
                f"{run['maxrss_mb']:.0f}",
                f"{rate / base_a:.2f}" if base_a else "-",
                f"{rate / base_b:.2f}" if base_b else "-",
            )
        console.print(table)
        for key, error in failed.items():
            console.print(f"[bold red]{key} failed[/]: {error[:500]}")
        ratios = Table(title="Ratios and targets")
        for col in ("ratio", "value", "target", "holds", "what"):
            ratios.add_column(col)
        for name, r in tp["ratios"].items():
            holds = "-" if r["holds"] is None else ("yes" if r["holds"] else "NO")
            target = "-" if r["target"] is None else f">= {r['target']}"
            ratios.add_row(name, f"{r['value']:.2f}", target, holds, r["what"])
        console.print(ratios)
        over = {
            k: r["us_per_event_over_e"] for k, r in tp["runs"].items() if "us_per_event_over_e" in r
        }
        if over:
            console.print(
                "Dataflow cost per event over the same work in a plain loop (e): "
                + ", ".join(f"{k} {v:+.2f} µs" for k, v in over.items())
            )
    mem = report.get("memory")
    if mem and "error" not in mem:
        table = Table(title="Memory per contact")
        table.add_column("where")
        table.add_column("bytes", justify="right")
        table.add_row(
            f"RSS, {mem['contacts']:,} contacts held by a process",
            f"{mem['rss_bytes_per_contact']:,}",
        )
        table.add_row(
            f"RSS, the {mem['engine_states']:,} states of the replay",
            f"{mem['engine_bytes_per_contact']:,}",
        )
        packed = mem["packed_bytes"]
        table.add_row(
            "packed state (msgpack) p50 / p99 / max",
            f"{packed['p50']} / {packed['p99']} / {packed['max']}",
        )
        redis_mem = report.get("redis_memory") or {}
        if redis_mem.get("sampled"):
            table.add_row(
                f"Redis MEMORY USAGE, state + read model (mean of {redis_mem['sampled']:,})",
                f"{redis_mem['bytes_per_contact_mean']:,}",
            )
        console.print(table)
    lat = report.get("latency")
    if lat:
        table = Table(title="Live latency, XADD of an event -> its trigger record in Redis")
        columns = ("of d1", "events/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "probes")
        for col in (*columns, "missing", "trend", "backlog at end"):
            table.add_column(col, justify="right")
        for run in lat["runs"]:
            if "error" in run:
                table.add_row(str(run["fraction_of_d1"]), "FAILED", *["-"] * 8)
                continue
            ms = run["ms"]
            fraction = run["fraction_of_d1"]
            table.add_row(
                "-" if fraction is None else f"{fraction:g}",
                f"{run['rate_achieved'] or 0:,.0f}",
                *(str(ms[k]) for k in ("p50", "p90", "p99", "max")),
                str(run["probes"]),
                str(run["missing"]),
                f"{run['trend']:.1f}x" if run.get("trend") else "-",
                f"{run['pending_at_end'] + run['unread_at_end']:,} entries",
            )
        console.print(table)
    scaling = report.get("scaling")
    if scaling:
        table = Table(title="Scaling at a fixed event count")
        for col in ("contacts", "b events/s", "c1 events/s", "c1/b", "c1 RSS MB", "d1 events/s"):
            table.add_column(col, justify="right")

        def cell(row: dict[str, Any], key: str, field: str, fmt: str) -> str:
            value = row.get(key, {}).get(field)
            if value is None:
                return "FAILED" if "error" in row.get(key, {}) else "-"
            return format(value, fmt)

        for row in scaling:
            table.add_row(
                f"{row['contacts']:,}",
                cell(row, "b", "events_per_s", ","),
                cell(row, "c1", "events_per_s", ","),
                f"{row['c1/b']:.2f}" if "c1/b" in row else "-",
                cell(row, "c1", "maxrss_mb", ".0f"),
                cell(row, "d1", "events_per_s", ","),
            )
        console.print(table)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--events", type=int, default=None, help="default 1,000,000")
    parser.add_argument("--contacts", type=int, default=None, help="default 100,000")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rules", default=None, help="default examples/rules.yaml")
    parser.add_argument("--json", default=None, help="default bench/results/throughput.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (CI smoke)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument(
        "--only",
        default="throughput,memory,latency,scaling",
        help="comma-separated sections to run",
    )
    parser.add_argument("--designs", default=None, help="e.g. a,b,c1 (default: all)")
    parser.add_argument(
        "--null-engine",
        action="store_true",
        help="throughput only, with an Engine.apply that does nothing: the ratios any "
        "engine speed-up could reach at most",
    )
    parser.add_argument("--memory-contacts", type=int, default=None, help="default 1,000,000")
    parser.add_argument("--latency-seconds", type=float, default=None, help="default 20")
    parser.add_argument("--latency-rate", type=float, default=None, help="one fixed rate")
    parser.add_argument(
        "--latency-flush-ms",
        type=int,
        default=None,
        help="the live flow's flush_ms (default: LEADSCORE_FLUSH_MS, else the flow's default)",
    )
    parser.add_argument(
        "--latency-fractions",
        default="0.5,0.25,0.1",
        help="rates as fractions of d1 (quick: the first only)",
    )
    parser.add_argument("--scaling", default=None, help="contact counts, default 10k,100k,1M")
    parser.add_argument(
        "--timeout", type=float, default=None, help="per run, seconds (default 900, quick 30)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the private redis-server and flow processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    quick = args.quick
    events = args.events or (3_000 if quick else 1_000_000)
    contacts = args.contacts or (300 if quick else 100_000)
    repeat = args.repeat or (1 if quick else 3)
    memory_contacts = args.memory_contacts or (5_000 if quick else 1_000_000)
    latency_seconds = args.latency_seconds or (1.5 if quick else 20.0)
    scaling = (
        [int(x) for x in args.scaling.split(",")]
        if args.scaling
        else ([100, 1_000] if quick else [10_000, 100_000, 1_000_000])
    )
    timeout = args.timeout or (30.0 if quick else 900.0)
    sections = set(args.only.split(","))
    if args.null_engine:
        sections &= {"throughput"}  # memory, latency and scaling mean nothing without scoring
    wanted = set(args.designs.split(",")) if args.designs else None
    designs = [d for d in DESIGNS if wanted is None or d.key in wanted]
    # bench/snapshot.sh runs from a temporary copy: relative paths mean the caller's directory.
    out_json = Path(os.environ.get("LEADSCORE_BENCH_CWD", "."), args.json) if args.json else None
    default_json = "throughput-null-engine.json" if args.null_engine else "throughput.json"
    out_json = out_json or RESULTS / default_json

    rules = str(rules_path(args.rules))
    with console.status(f"generating {events:,} events for {contacts:,} contacts (cached)"):
        single = events_file(events, contacts, args.seed)
        split = split_file(single, 2)
    report: dict[str, Any] = {
        "machine": machine_info(),
        "git": _git(),
        "config": {
            "events": events,
            "contacts": contacts,
            "seed": args.seed,
            "rules": os.path.relpath(rules, ROOT),
            "quick": quick,
            "repeat": repeat,
            "partitions": PARTITIONS,
            "send_batch": SEND_BATCH,
            "null_engine": args.null_engine,
        },
    }
    needs_redis = bool(
        sections & {"latency"}
        or ("throughput" in sections and any(d.mode == "redis" for d in designs))
        or "scaling" in sections
    )
    tmp = Path(tempfile.mkdtemp(prefix="leadscore-bench-"))
    server = None
    try:
        ctx = Context(
            rules, single, split, count_lines([single]), tmp, null_engine=args.null_engine
        )
        if needs_redis:
            server = load_redis_server().RedisServer(tmp / "redis").start()
            ctx.redis_url = server.url

            def sample_redis() -> None:
                report["redis_memory"] = redis_memory(server.url)  # type: ignore[union-attr]

            ctx.after_d1 = sample_redis
        started = time.perf_counter()
        if "throughput" in sections:
            report["throughput"] = section_throughput(ctx, designs, repeat, timeout)
        if "memory" in sections:
            with console.status(f"memory: {memory_contacts:,} contacts"):
                report["memory"] = _guard(section_memory, ctx, memory_contacts, timeout)
        if "latency" in sections:
            d1 = report.get("throughput", {}).get("runs", {}).get("d1", {}).get("events_per_s")
            if args.latency_rate:
                rates = [(None, args.latency_rate)]
            else:
                # Half of d1 is what the issue asks for; lower rates show the latency when the
                # live flow is not saturated (live entries are small, see d1s).
                fractions = [float(f) for f in args.latency_fractions.split(",")]
                rates = [(f, (d1 or 10_000.0) * f) for f in (fractions[:1] if quick else fractions)]
            runs = []
            for fraction, rate in rates:
                with console.status(f"latency: {latency_seconds:g} s at {rate:,.0f} events/s"):
                    result = _guard(
                        measure_latency,
                        ctx.redis_url,
                        rules,
                        str(single),
                        rate=rate,
                        duration=latency_seconds,
                        partitions=PARTITIONS,
                        grace=2.0 if quick else 5.0,
                        flush_ms=args.latency_flush_ms,
                    )
                runs.append({"fraction_of_d1": fraction, **result})
            report["latency"] = {"d1_events_per_s": d1, "runs": runs}
        if "scaling" in sections:
            report["scaling"] = section_scaling(ctx, scaling, events, args.seed, timeout)
        report["seconds"] = round(time.perf_counter() - started, 1)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print_report(report)
    console.print(f"written: {out_json}")
    return report


if __name__ == "__main__":
    main()
