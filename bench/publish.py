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
after (the new generation's cost), and the decay timers of the largest partition (the
rebuild holds one partition's timers in memory). ``--no-run`` skips the baseline (large
inputs). ``--max-contacts`` bounds the contacts the rebuild keeps in memory (the publish
default, 50,000). Results go to ``bench/results/publish.json``.

``--history``: the rebuild from an ``--archive`` directory instead (``publish --history
DIR``). The same input goes through a live flow (``leadscore run --source ... --drain
--archive DIR --retain 0``: real checkpoint members, streams trimmed to nothing), then the
publish replays it all from the archive; the stream publish runs too, on the same input, and
the report compares their rebuild phases and gives the archive's size and its index's share.
Results go to ``bench/results/publish-history.json``.
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

    history = None
    if spec.get("history"):
        from leadscore.history import ArchiveHistory

        history = ArchiveHistory(spec["history"])
    with RedisStore(spec["url"]) as store:
        t0 = time.perf_counter()
        plan = rescore.plan(store.r, store.keys, Path(spec["new"]).read_bytes())
        outcome = rescore.execute(
            store.r,
            store.keys,
            plan,
            progress=rescore.Progress(PARTITIONS, update=update),
            max_contacts=spec["max_contacts"],
            history=history,
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


def prepare(url: str, events: Path, rules: Path, *, merges: bool = False) -> dict[str, Any]:
    """The input in Redis, acknowledged, with ``rules`` recorded as v1 (generation 0 empty:
    every contact's old state is absent, so the switch fires all its triggers). ``merges``:
    each stream starts with a hand-over message (a ``$take`` of an id that never existed), so
    the whole rebuild replays every partition together (leadscore/rebuild_merges.py): its
    worst case."""
    from flows.handover import take_line
    from state.keys import partition_of
    from state.redis_store import RedisStore
    from state.versions import check_rules

    with RedisStore(url) as store:
        keys = store.ensure(PARTITIONS)
        check_rules(store.r, keys, rules.read_bytes(), str(rules))
        if merges:
            ids = (f"anon-{i}" for i in range(10_000))
            first = {}
            for visitor in ids:
                first.setdefault(partition_of(visitor, PARTITIONS), visitor)
                if len(first) == PARTITIONS:
                    break
            for p, visitor in first.items():
                store.r.xadd(keys.input(p), {"m": take_line(visitor, "known-0", 1.0)})
        with events.open("rb") as fh:
            sent = store.send_events(fh)
        for p in range(PARTITIONS):
            store.r.xgroup_setid(keys.input(p), "leadscore", "$")
        info = store.r.info("memory")
    return {"events_sent": sent.events, "redis_used_mb": info["used_memory"] / 2**20}


def archive_through_a_live_flow(url: str, events: Path, rules: Path, archive: Path) -> float:
    """``events`` sent and scored by a live flow that archives them and keeps no retention;
    returns the flow's seconds."""
    from state.redis_store import RedisStore

    with RedisStore(url) as store:
        store.ensure(PARTITIONS)
        with events.open("rb") as fh:
            store.send_events(fh)
    t0 = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable, "-m", "leadscore.cli", "run", "--rules", str(rules), "--source", url,
            "--drain", "--partitions", str(PARTITIONS), "--archive", str(archive),
            "--retain", "0",
        ],
        capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode()[-3000:])
    return time.perf_counter() - t0


def archive_size(archive: Path) -> dict[str, Any]:
    """Bytes, gzip members and index bytes (the members' header extra fields) of ``archive``."""
    from flows.archive import archive_files, read_members

    files = archive_files(archive)
    members = index = 0
    for path in files:
        for member in read_members(path):
            members += 1
            index += member._body[0] - member.offset - 12  # header + extra length
    total = sum(Path(f).stat().st_size for f in files)
    return {"bytes": total, "members": members, "index_bytes": index, "index_share": index / total}


def main_history(args: argparse.Namespace, rules: Path, events: Path, lines: int) -> None:
    with tempfile.TemporaryDirectory(prefix="leadscore-bench-publish-") as tmp:
        new = Path(tmp) / "new.yaml"
        new.write_text(rules.read_text().replace("at_least: 50", "at_least: 40", 1))
        spec = {"design": "publish", "new": str(new), "max_contacts": args.max_contacts}
        server = load_redis_server().RedisServer(Path(tmp) / "redis").start()
        try:
            prepare(server.url, events, rules)
            streams = _in_fresh_process({**spec, "url": server.url})
            import redis

            redis.Redis.from_url(server.url).flushall()
            archive = Path(tmp) / "archive"
            flow_s = archive_through_a_live_flow(server.url, events, rules, archive)
            archived = _in_fresh_process({**spec, "url": server.url, "history": str(archive)})
            size = archive_size(archive)
        finally:
            server.stop()
    rebuild = {
        name: lines / got["phases"]["rebuild"]
        for name, got in (("streams", streams), ("archive", archived))
    }
    report = {
        "machine": machine_info(),
        "config": {"events": lines, "contacts": args.contacts, "seed": args.seed,
                   "partitions": PARTITIONS, "max_contacts": args.max_contacts},
        "live_flow_seconds": flow_s,
        "archive": size,
        "publish_streams": streams,
        "publish_archive": archived,
        "rebuild_events_per_s": rebuild,
        "ratio_archive_to_streams": rebuild["archive"] / rebuild["streams"],
    }  # fmt: skip
    out = Path(args.json.replace("publish.json", "publish-history.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-contacts", type=int, default=50_000)
    parser.add_argument("--rules", default=None)
    parser.add_argument(
        "--merges", action="store_true", help="also publish a history with hand-over messages"
    )
    parser.add_argument("--json", default=str(RESULTS / "publish.json"))
    parser.add_argument("--history", action="store_true", help="rebuild from an archive")
    parser.add_argument(
        "--no-run", action="store_true", help="Measure publish only (no `run` baseline)."
    )
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(orjson.dumps(measure(orjson.loads(args.measure))).decode())
        return
    rules = rules_path(args.rules)
    events = events_file(args.events, args.contacts, args.seed)
    lines = count_lines([events])
    if args.history:
        main_history(args, rules, events, lines)
        return
    with tempfile.TemporaryDirectory(prefix="leadscore-bench-publish-") as tmp:
        new = Path(tmp) / "new.yaml"
        new.write_text(rules.read_text().replace("at_least: 50", "at_least: 40", 1))
        run = (
            None
            if args.no_run
            else _in_fresh_process(
                {"design": "run", "rules": str(rules), "events": str(events), "out": tmp + "/out"}
            )
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

            client = redis.Redis.from_url(server.url)
            after = client.info("memory")["used_memory"] / 2**20
            # the decay timers a rebuilt partition held in memory at most (with its states)
            timers = max(client.zcard(f"ls:{{{p}}}:g1:timers") for p in range(PARTITIONS))
        finally:
            server.stop()
        merged: dict[str, Any] | None = None
        if args.merges:
            server = load_redis_server().RedisServer(Path(tmp) / "redis-merges").start()
            try:
                prepare(server.url, events, rules, merges=True)
                spec = {"design": "publish", "url": server.url, "new": str(new)}
                merged = _in_fresh_process({**spec, "max_contacts": args.max_contacts})
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
        "publish": {**pub, "events_per_s": pub["events"] / pub["seconds"]},
        "timers_largest_partition": timers,
        "redis_used_mb": {"before": sent["redis_used_mb"], "after": after},
    }
    if run is not None:
        report["run"] = {**run, "events_per_s": lines / run["seconds"]}
        report["ratio_publish_to_run"] = report["publish"]["events_per_s"] / lines * run["seconds"]
    if merged is not None:
        report["publish_with_merges"] = {
            **merged,
            "events_per_s": merged["events"] / merged["seconds"],
            "ratio_to_publish": pub["seconds"] / merged["seconds"],
        }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
