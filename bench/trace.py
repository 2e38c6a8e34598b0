"""Where a live entry's latency goes: timestamps of the Redis flow's read, apply and commit.

``LEADSCORE_TRACE=/path/trace.json python -m bench.runner '<redis spec>'`` (or the latency
benchmark, whose flow process inherits the variable) wraps, before the flow is built, the
source's reads, the partition logics' callbacks and the store's checkpoints with timers, and
writes what it saw at exit. Every input entry's id carries the Redis time of its XADD (ms),
so each entry's path is: XADD -> read (XREADGROUP returned it) -> on_batch (Bytewax handed it
to the logic) -> apply -> committed (its checkpoint's round trip returned). ``python -m
bench.trace FILE`` prints the stages' percentiles. Off unless the variable is set: nothing
in the flow itself knows about it.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

T: dict[str, Any] = {
    "xrg": [],  # [t0, t1, block, streams, entries]
    "read": {},  # entry id -> [t_read, probe?]
    "batch": {},  # entry id -> t on_batch
    "apply": {},  # entry id -> t apply
    "commit": {},  # entry id -> [t0, t1] of its checkpoint's round trip
    "ckpt": [],  # [t0, t1, partitions, triggers]
    "notify": [],  # [t, p, due or None]
    "on_notify": [],  # [t, p]
    "run": [],  # [t0, t1, queued partitions, thread CPU s, queued values]
    "polls": [],  # [t0, t1, partition, what it had: none|buffer|empty, items]
}


def install(path: str) -> None:
    """Wrap the flow's read, callbacks and checkpoints; write ``path`` at exit."""
    from flows import redis_flow, redis_io
    from state.redis_store import RedisStore

    now = time.time

    emit = redis_io._StreamPartition._emit

    def _emit(self: Any, entries: list[Any]) -> Any:
        t = now()
        reads = T["read"]
        for entry_id, fields in entries:
            eid = f"{self._p}/{entry_id.decode()}"  # ids repeat across streams
            if eid not in reads:
                reads[eid] = [t, b"probe-" in (fields.get(b"e") or b"")]
        return emit(self, entries)

    redis_io._StreamPartition._emit = _emit

    next_batch = redis_io._StreamPartition.next_batch

    def _next_batch(self: Any) -> Any:
        t0 = now()
        buffered = self._buffer
        out = next_batch(self)
        kind = "none" if buffered is None else "buffer" if buffered else "empty"
        T["polls"].append([t0, now(), self._p, kind, len(out)])
        return out

    redis_io._StreamPartition.next_batch = _next_batch

    read_new = redis_io._Worker.read_new

    def _read_new(self: Any, caller: Any) -> Any:
        t0 = now()
        out = read_new(self, caller)
        T["xrg"].append([t0, now(), None, 0, len(out)])
        return out

    redis_io._Worker.read_new = _read_new

    on_batch = redis_flow.PartitionLogic.on_batch

    def _on_batch(self: Any, values: list[Any]) -> Any:
        t = now()
        batch = T["batch"]
        for p, eid, _ in values:
            if eid:
                batch.setdefault(f"{p}/{eid}", t)
        return on_batch(self, values)

    redis_flow.PartitionLogic.on_batch = _on_batch

    apply = redis_flow.PartitionLogic.apply

    def _apply(self: Any, entries: list[Any], t_now: float) -> Any:
        t = now()
        applied = T["apply"]
        for eid, _ in entries:
            if eid:
                applied.setdefault(f"{self.p}/{eid}", t)
        return apply(self, entries, t_now)

    redis_flow.PartitionLogic.apply = _apply

    notify_at = redis_flow.PartitionLogic.notify_at

    def _notify_at(self: Any) -> Any:
        due = notify_at(self)
        T["notify"].append([now(), self.p, due.timestamp() if due is not None else None])
        return due

    redis_flow.PartitionLogic.notify_at = _notify_at

    on_notify = redis_flow.PartitionLogic.on_notify

    def _on_notify(self: Any) -> Any:
        T["on_notify"].append([now(), self.p])
        return on_notify(self)

    redis_flow.PartitionLogic.on_notify = _on_notify

    run = redis_flow.WorkerLogics.run

    def _run(self: Any) -> Any:
        t0, c0 = now(), time.thread_time()
        queued = len(self.queued)
        events = sum(len(v) for v in self.queued.values())
        out = run(self)
        if queued:
            T["run"].append([t0, now(), queued, time.thread_time() - c0, events])
        return out

    redis_flow.WorkerLogics.run = _run

    many = RedisStore.checkpoint_many

    def _many(self: Any, batches: list[Any], **kwargs: Any) -> Any:
        t0 = now()  # with ``sent``: the batches went out before, this reads their replies
        out = many(self, batches, **kwargs)
        t1 = now()
        commit = T["commit"]
        for b in batches:
            for eid in b.ack_ids:
                commit[f"{b.p}/{eid}"] = [t0, t1]
        T["ckpt"].append([t0, t1, len(batches), sum(len(b.triggers) for b in batches)])
        return out

    RedisStore.checkpoint_many = _many

    def span(owner: Any, name: str, key: str) -> None:
        """Time every call of ``owner.name`` into ``T[key]`` as ``[t0, t1]``."""
        fn = getattr(owner, name)
        spans = T.setdefault(key, [])

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = now()
            try:
                return fn(*args, **kwargs)
            finally:
                spans.append([t0, now()])

        setattr(owner, name, timed)

    # What else a worker's loop does besides reading, applying and checkpointing.
    span(redis_flow, "settle_heap", "x_settle_heap")
    span(redis_flow.WorkerLogics, "maintain", "x_maintain")
    span(RedisStore, "load_states_many", "x_mget")
    span(redis_flow.PartitionLogic, "begin_flush", "x_begin_flush")
    span(redis_flow.PartitionLogic, "end_flush", "x_end_flush")
    span(RedisStore, "load_aliases", "x_load_aliases")  # a round trip each, like the MGET
    span(RedisStore, "send_checkpoint", "x_send_checkpoint")

    def dump() -> None:
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(T))
        os.replace(tmp, path)

    # A flow killed rather than stopped writes nothing at exit, so LEADSCORE_TRACE_EVERY=S
    # dumps every S seconds too. Off by default: a dump serializes everything so far holding
    # the GIL, which stalled the flow's thread 7-35 ms every 2 s in a 10 s run at 40k
    # events/s (those stalls were the traced tail; bench/README.md, "live6").
    every = float(os.environ.get("LEADSCORE_TRACE_EVERY") or 0)

    def keep_dumping() -> None:
        while True:
            time.sleep(every)
            dump()

    if every > 0:
        threading.Thread(target=keep_dumping, daemon=True).start()
    atexit.register(dump)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # bench.runner's flow: SIGTERM ends it

        def on_term(signum: int, frame: Any) -> None:
            dump()
            os._exit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)


def _pct(values: list[float]) -> str:
    if not values:
        return "-"
    v = sorted(values)
    n = len(v)
    return (
        "  ".join(
            f"{name} {v[min(n - 1, int(n * q))]:7.2f}"
            for name, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        )
        + f"  mean {sum(v) / n:7.2f}  n {n}"
    )


def report(path: str) -> None:
    """Per-stage milliseconds over every entry read (and the probes' alone)."""
    t = orjson.loads(Path(path).read_bytes())
    stages: dict[str, dict[str, list[float]]] = {"all": {}, "probe": {}}
    probes: list[tuple[float, float, dict[str, float]]] = []  # (total, XADD time, steps)
    for eid, (t_read, probe) in t["read"].items():
        added = int(eid.split("/")[1].split("-")[0]) / 1000.0
        b, a, c = t["batch"].get(eid), t["apply"].get(eid), t["commit"].get(eid)
        if b is None or a is None or c is None:
            continue
        steps = {
            "xadd->read": t_read - added,
            "read->on_batch": b - t_read,
            "on_batch->apply": a - b,
            "apply->commit sent": c[0] - a,
            "commit round trip": c[1] - c[0],
            "xadd->committed": c[1] - added,
        }
        for kind in ("all", "probe") if probe else ("all",):
            for name, s in steps.items():
                stages[kind].setdefault(name, []).append(s * 1000.0)
        if probe:
            probes.append((c[1] - added, added, steps))
    for kind, by in stages.items():
        print(f"-- {kind} entries (ms; XADD time from the entry id, 1 ms resolution)")
        for name, values in by.items():
            print(f"{name:20s} {_pct(values)}")
    xrg = t["xrg"]
    if xrg:
        span = xrg[-1][1] - xrg[0][0]
        print(
            f"source reads: {len(xrg)} ({len(xrg) / span:.0f}/s), in them "
            f"{sum(x[1] - x[0] for x in xrg) / span:.0%} of the time; ms: "
            + _pct([(x[1] - x[0]) * 1000 for x in xrg])
        )
    ck = t["ckpt"]
    if ck:
        span = ck[-1][1] - ck[0][0]
        print(
            f"checkpoint round trips: {len(ck)} ({len(ck) / span:.0f}/s), "
            f"{sum(x[2] for x in ck) / len(ck):.1f} partitions each; ms: "
            + _pct([(x[1] - x[0]) * 1000 for x in ck])
        )
    for key in sorted(k for k in t if k.startswith("x_")):
        spans = t[key]
        if spans:
            span_s = spans[-1][1] - spans[0][0] or 1.0
            print(
                f"{key[2:]}: {len(spans)} ({len(spans) / span_s:.0f}/s), "
                f"{sum(x[1] - x[0] for x in spans) / span_s:.1%} of the time; ms: "
                + _pct([(x[1] - x[0]) * 1000 for x in spans])
            )
    runs = t["run"]
    if runs:
        print("worker runs (apply) ms: " + _pct([(x[1] - x[0]) * 1000 for x in runs]))
        # wall time a run did not spend on its thread's CPU: waiting for Redis or descheduled
        off_cpu = [(x[1] - x[0] - x[3]) * 1000 for x in runs]
        print("worker runs, wall - thread CPU ms: " + _pct(off_cpu))
    _slowest(probes, runs)


def _slowest(probes: list[tuple[float, float, dict[str, float]]], runs: list[Any]) -> None:
    """The slowest 1% of the probes (at least 3) with their stages and the worker's runs
    around them: whether the tail is a round in progress, a long round, or a stall."""
    probes = sorted(probes, key=lambda x: x[1])[1:]  # the first is the readiness probe
    if not probes:
        return
    probes.sort(key=lambda x: x[0], reverse=True)
    print("-- slowest probes: stages ms; runs overlapping [start ms after the XADD, wall, CPU]")
    for total, added, steps in probes[: max(3, len(probes) // 100)]:
        parts = ", ".join(f"{k} {v * 1000:.1f}" for k, v in steps.items() if k != "xadd->committed")
        near = [
            f"[{(x[0] - added) * 1000:.1f}, {(x[1] - x[0]) * 1000:.1f}, {x[3] * 1000:.1f}]"
            for x in runs
            if x[1] >= added and x[0] <= added + total
        ]
        print(f"{total * 1000:6.1f}: {parts}; runs {' '.join(near)}")


if __name__ == "__main__":
    report(sys.argv[1])
