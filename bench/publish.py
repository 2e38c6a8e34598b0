"""Rebuild rate and peak memory of ``leadscore publish``, against ``run`` on the same events.

``python -m bench.publish`` sends the cached benchmark input (default 1,000,000 events for
100,000 contacts, seed 7) to a private redis-server (16 partitions), marks it acknowledged
(as a live flow that scored it would have), then measures in fresh processes:

- ``run``: the Bytewax file flow on the same file, one worker (the baseline: what a fresh
  replay costs);
- ``publish``: ``rescore.plan`` + ``rescore.execute`` of a rescoring change (``mql`` at 40),
  every phase: rebuild from the streams, catch-up, hold, switch firings (SCAN of every
  contact, compared with generation 0), switch.

Reported: events per second of each and their ratio (same run), the seconds of each publish
phase, the peak resident set of each process (``ru_maxrss``) and Redis's memory before and
after (the new generation's cost). ``--max-contacts`` bounds the contacts the rebuild keeps in
memory (the publish default, 50,000). Results go to ``bench/results/publish.json``.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    RESULTS,
    count_lines,
    events_file,
    load_redis_server,
    machine_info,
    rules_path,
)

PARTITIONS = 16


def _maxrss_mb() -> float:
    """This process's peak resident set (VmHWM: ru_maxrss survives exec on Linux, so a fresh
    child would report its parent's peak if that was higher)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    if spec["design"] == "run":
        from bytewax.testing import run_main

        from flows.scoring import FlowConfig, build_flow

        flow = build_flow(FlowConfig(rules=spec["rules"], events=[spec["events"]], out=spec["out"]))
        t0 = time.perf_counter()
        run_main(flow)
        return {"seconds": time.perf_counter() - t0, "maxrss_mb": _maxrss_mb()}
    from leadscore import rescore
    from state.redis_store import RedisStore

    phases: dict[str, float] = {}
    last = [time.perf_counter(), "rebuild"]

    def update(progress: rescore.Progress) -> None:
        if progress.phase != last[1]:
            now = time.perf_counter()
            phases[str(last[1])] = phases.get(str(last[1]), 0.0) + now - float(last[0])
            last[0], last[1] = now, progress.phase

    with RedisStore(spec["url"]) as store:
        t0 = time.perf_counter()
        plan = rescore.plan(store.r, store.keys, Path(spec["new"]).read_bytes())
        outcome = rescore.execute(
            store.r,
            store.keys,
            plan,
            progress=rescore.Progress(PARTITIONS, update=update),
            max_contacts=spec["max_contacts"],
        )
        seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "maxrss_mb": _maxrss_mb(),
        "events": outcome.events,
        "fired": outcome.fired,
        "held_seconds": outcome.held_seconds,
        "phases": {k: round(v, 2) for k, v in phases.items()},
    }


def _in_fresh_process(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.publish", "--measure", orjson.dumps(spec).decode()],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode()[-3000:])
    return orjson.loads(done.stdout.splitlines()[-1])


def prepare(url: str, events: Path, rules: Path) -> dict[str, Any]:
    """The input in Redis, acknowledged, with ``rules`` recorded as v1 (generation 0 empty:
    every contact's old state is absent, so the switch fires all its triggers)."""
    from state.redis_store import RedisStore
    from state.versions import check_rules

    with RedisStore(url) as store:
        keys = store.ensure(PARTITIONS)
        check_rules(store.r, keys, rules.read_bytes(), str(rules))
        with events.open("rb") as fh:
            sent = store.send_events(fh)
        for p in range(PARTITIONS):
            store.r.xgroup_setid(keys.input(p), "leadscore", "$")
        info = store.r.info("memory")
    return {"events_sent": sent.events, "redis_used_mb": info["used_memory"] / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-contacts", type=int, default=50_000)
    parser.add_argument("--rules", default=None)
    parser.add_argument("--json", default=str(RESULTS / "publish.json"))
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(orjson.dumps(measure(orjson.loads(args.measure))).decode())
        return
    rules = rules_path(args.rules)
    events = events_file(args.events, args.contacts, args.seed)
    lines = count_lines([events])
    with tempfile.TemporaryDirectory(prefix="leadscore-bench-publish-") as tmp:
        new = Path(tmp) / "new.yaml"
        new.write_text(rules.read_text().replace("at_least: 50", "at_least: 40", 1))
        run = _in_fresh_process(
            {"design": "run", "rules": str(rules), "events": str(events), "out": tmp + "/out"}
        )
        server = load_redis_server().RedisServer(Path(tmp) / "redis").start()
        try:
            sent = prepare(server.url, events, rules)
            pub = _in_fresh_process(
                {
                    "design": "publish",
                    "url": server.url,
                    "new": str(new),
                    "max_contacts": args.max_contacts,
                }
            )
            import redis

            after = redis.Redis.from_url(server.url).info("memory")["used_memory"] / 2**20
        finally:
            server.stop()
    report = {
        "machine": machine_info(),
        "config": {
            "events": lines,
            "contacts": args.contacts,
            "seed": args.seed,
            "partitions": PARTITIONS,
            "max_contacts": args.max_contacts,
        },
        "run": {**run, "events_per_s": lines / run["seconds"]},
        "publish": {**pub, "events_per_s": pub["events"] / pub["seconds"]},
        "redis_used_mb": {"before": sent["redis_used_mb"], "after": after},
    }
    report["ratio_publish_to_run"] = report["publish"]["events_per_s"] / lines * run["seconds"]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
