"""Live latency: XADD of an event -> its trigger record in the triggers stream.

The live Redis flow runs in its own process while a producer process feeds background events
at a fixed rate (half the measured maximum, so the flow is busy but keeps up). Every
``probe_ms`` a probe is sent: a fresh contact's short history that ends with an event firing
an ``at_least`` trigger, found by replaying the benchmark input through the engine. The probe
is one stream entry; its clock starts just before the XADD and stops when a reader thread sees
the trigger record whose cause names the probe's last event id.

The history is shifted so its last event is "now" and re-checked through the engine before
sending (rules with ``active`` dates depend on absolute time), so every probe is known to
fire. Probes whose trigger never shows within the grace period are counted as missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.common import PARSE_NOW, ROOT, iter_lines
from flows.config import FlowConfig
from leadscore.engine import Engine, TriggerFired
from leadscore.events import Event, parse_event
from leadscore.rules import Rules, load_rules
from state.redis_store import RedisStore

PROBE_PREFIX = "probe-"


@dataclass
class Probe:
    """A firing history: (seconds before the last event, action, props, traits) per event."""

    steps: list[tuple[float, str, dict[str, Any], dict[str, Any] | None]]
    trigger: str


def find_probe(rules: Rules, lines: Iterator[bytes], max_history: int = 8) -> Probe:
    """The shortest history in ``lines`` whose last event fires an ``at_least`` trigger."""
    engine = Engine(rules)
    at_least = {t.id for t in rules.triggers if not t.below}
    known = rules.known_actions
    histories: dict[str, list[Event]] = {}
    states: dict[str, Any] = {}
    best: Probe | None = None
    for raw in lines:
        event = parse_event(raw, PARSE_NOW)
        if type(event) is not Event or event.action not in known:
            continue
        history = histories.setdefault(event.contact, [])
        if len(history) >= max_history:
            continue  # too long to be the shortest, or already fired
        state = states.get(event.contact)
        if state is None:
            state = states[event.contact] = engine.new_state()
        history.append(event)
        fired = [
            e.trigger
            for e in engine.apply(state, event)
            if type(e) is TriggerFired and e.trigger in at_least
        ]
        if fired:
            last = event.ts
            steps = [(last - e.ts, e.action, e.props, e.traits) for e in history]
            if best is None or len(steps) < len(best.steps):
                best = Probe(steps, fired[0])
            history.extend([event] * max_history)  # done with this contact
            if len(steps) <= 2:
                break
    if best is None:
        raise RuntimeError("no contact in the input fires an at_least trigger: cannot probe")
    return best


def probe_lines(probe: Probe, contact: str, now: float) -> tuple[list[bytes], str]:
    """The probe's events for ``contact`` with its last event at ``now``; and that event's id."""
    out = []
    last_id = ""
    for i, (before, action, props, traits) in enumerate(probe.steps):
        last_id = f"{PROBE_PREFIX}{contact}" if i == len(probe.steps) - 1 else f"{contact}-h{i}"
        obj: dict[str, Any] = {
            "contact": contact,
            "action": action,
            "ts": round((now - before) * 1000),
            "id": last_id,
            "props": props,
        }
        if traits is not None:
            obj["traits"] = traits
        out.append(orjson.dumps(obj))
    return out, last_id


def fires(engine: Engine, lines: list[bytes]) -> bool:
    """Whether the shifted history still fires on a fresh contact (absolute dates matter)."""
    state = engine.new_state()
    last: list[Any] = []
    for raw in lines:
        event = parse_event(raw, PARSE_NOW)
        assert type(event) is Event
        last = engine.apply(state, event)
    return any(type(e) is TriggerFired for e in last)


# --------------------------------------------------------------------------- producer


def produce(url: str, path: str, rate: float, duration: float, tick: float = 0.01) -> dict:
    """Send ``path``'s lines (cycled, contacts renamed per cycle) at ``rate`` events/s.

    One ``send_events`` per ``tick`` with every event due by then, like a collector that
    flushes on time: entries hold ``rate * tick / partitions`` events on average (~6 at 9.6k
    events/s). Until 2026-11-22 it sent as soon as one event was due, i.e. every few hundred
    microseconds with ~1.2 events per entry, which cost this process ~65% of a core at
    9.6k events/s and handed the flow 5x as many entries as the docs said.
    """
    store = RedisStore(url)
    lines = [line for line in iter_lines(Path(path))]
    sent = entries = 0
    cycle = 0
    i = 0
    start = time.perf_counter()
    deadline = start + duration
    next_send = start
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        if now < next_send:
            time.sleep(min(next_send, deadline) - now)
            continue
        next_send += tick
        due = int((now - start) * rate) - sent
        if due > 0:
            chunk = []
            for _ in range(due):
                if i == len(lines):
                    i, cycle = 0, cycle + 1
                line = lines[i]
                i += 1
                if cycle:
                    line = line.replace(b'"contact":"', b'"contact":"r%d-' % cycle, 1)
                chunk.append(line)
            entries += store.send_events(chunk, batch=100).entries
            sent += len(chunk)
    elapsed = time.perf_counter() - start
    store.close()
    return {
        "sent": sent,
        "seconds": elapsed,
        "events_per_s": sent / elapsed,
        "events_per_entry": round(sent / entries, 2) if entries else None,
    }


# --------------------------------------------------------------------------- measurement


class TriggerReader(threading.Thread):
    """Tails every partition's triggers stream; notes when each probe's trigger shows up."""

    def __init__(self, url: str, streams: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.cursors: dict[str, str] = dict.fromkeys(streams, "0-0")
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            resp = self.client.xread(self.cursors, count=1000, block=200)  # type: ignore[arg-type]
            now = time.perf_counter()
            for stream, entries in resp or []:
                name = stream.decode()
                for entry_id, fields in entries:
                    self.cursors[name] = entry_id.decode()
                    cause = orjson.loads(fields[b"t"]).get("cause", "")
                    origin = cause.split(":", 1)[0].rsplit(" ", 1)[-1]
                    if origin.startswith(PROBE_PREFIX) and origin not in self.seen:
                        self.seen[origin] = now
        self.client.close()


def measure_latency(
    url: str,
    rules_path: str,
    events_path: str,
    *,
    rate: float,
    duration: float,
    partitions: int = 16,
    probe_ms: float = 20.0,
    warmup: float = 1.0,
    grace: float = 5.0,
    flush_ms: int | None = None,
) -> dict[str, Any]:
    """Start the live flow, load it at ``rate`` and time probes for ``duration`` seconds.

    ``flush_ms``: the flow's checkpoint cadence (None: ``LEADSCORE_FLUSH_MS`` if set, else
    the default), which bounds how long a caught-up partition's applied entries wait."""
    rules = load_rules(rules_path)
    engine = Engine(rules)
    probe = find_probe(rules, iter_lines(Path(events_path)))
    client = redis.Redis.from_url(url)
    client.flushall()
    store = RedisStore(url, partitions=partitions)
    keys = store.ensure(partitions)
    spec = {
        "mode": "redis",
        "rules": rules_path,
        "redis_url": url,
        "partitions": partitions,
        "tail": True,
    }
    if flush_ms is not None:
        spec["flush_ms"] = flush_ms
    flow = subprocess.Popen(
        [sys.executable, "-m", "bench.runner", orjson.dumps(spec).decode()],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    reader = TriggerReader(url, [keys.triggers(p) for p in range(partitions)])
    reader.start()
    sent: dict[str, float] = {}
    skipped = 0
    producer: subprocess.Popen[bytes] | None = None
    try:

        def checkpoints() -> int:
            return sum(store.last_checkpoint(p) for p in range(partitions))

        def send_probe(n: int) -> bool:
            contact = f"lat-{n}"
            lines, last_id = probe_lines(probe, contact, time.time())
            if not fires(engine, lines):
                return False
            stream = keys.input(zlib.crc32(contact.encode()) % partitions)
            payload = b"\n".join(lines)
            t = time.perf_counter()
            client.xadd(stream, {"e": payload})
            sent[last_id] = t
            return True

        # Ready once a first probe comes back (Bytewax and the consumer groups are up).
        n = 0
        while not send_probe(n):
            n += 1
        ready_by = time.perf_counter() + 60
        while f"{PROBE_PREFIX}lat-{n}" not in reader.seen:
            if flow.poll() is not None:
                raise RuntimeError(f"live flow exited: {flow.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if time.perf_counter() > ready_by:
                raise RuntimeError("live flow never produced the first probe's trigger")
            time.sleep(0.01)
        sent.clear()
        redis_pid = int(client.info("server")["process_id"])  # type: ignore[index]
        sched_before = {"flow": _schedstat(flow.pid), "redis": _schedstat(redis_pid)}
        cpu_before, ckpt_before = _cpu_seconds(flow.pid), checkpoints()
        producer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.latency",
                url,
                events_path,
                str(rate),
                str(duration + warmup),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        time.sleep(warmup)
        start = time.perf_counter()
        while time.perf_counter() - start < duration:
            n += 1
            if not send_probe(n):
                skipped += 1
            time.sleep(probe_ms / 1000.0)
        out, _ = producer.communicate(timeout=duration + 60)
        produced = orjson.loads(out.splitlines()[-1]) if out else {}
        settle = time.perf_counter() + grace
        while time.perf_counter() < settle and not all(k in reader.seen for k in sent):
            time.sleep(0.05)
        # The flow's CPU and checkpoints over the measured run: steadier than latency on a
        # shared machine when comparing two versions at a rate they both keep up with.
        cpu = _cpu_seconds(flow.pid) - cpu_before
        ckpts = checkpoints() - ckpt_before
        sched = {
            who: _sched_delta(before, _schedstat(flow.pid if who == "flow" else redis_pid))
            for who, before in sched_before.items()
        }
        backlog = sum(store.pending(p) for p in range(partitions))
        unread = sum(
            int(g.get("lag") or 0)
            for p in range(partitions)
            for g in client.xinfo_groups(keys.input(p))  # type: ignore[union-attr]
        )
    finally:
        reader.stop.set()
        if producer is not None and producer.poll() is None:
            producer.kill()
        flow.terminate()
        try:
            flow.wait(timeout=10)
        except subprocess.TimeoutExpired:
            flow.kill()
            flow.wait()
        reader.join(timeout=5)
        store.close()
        client.close()
    first = min(sent.values(), default=0.0)
    # (seconds since the first probe, latency in ms): shows whether the tail is periodic.
    timeline = [
        [round(t - first, 3), round((reader.seen[k] - t) * 1000.0, 1)]
        for k, t in sorted(sent.items(), key=lambda kv: kv[1])
        if k in reader.seen
    ]
    latencies = sorted(ms for _, ms in timeline)
    # Last quarter's median over the first quarter's: well above 1 means a growing backlog,
    # i.e. the flow did not keep up with this rate and the figures measure queueing.
    quarter = len(timeline) // 4
    trend = None
    if quarter:
        head = sorted(ms for _, ms in timeline[:quarter])[quarter // 2]
        tail = sorted(ms for _, ms in timeline[-quarter:])[quarter // 2]
        trend = round(tail / head, 2) if head > 0 else None
    return {
        "rate_target": rate,
        "flush_ms": spec.get("flush_ms")
        or int(os.environ.get("LEADSCORE_FLUSH_MS") or 0)
        or FlowConfig.__dataclass_fields__["flush_ms"].default,
        "rate_achieved": produced.get("events_per_s"),
        "events_per_entry": produced.get("events_per_entry"),
        "duration_s": duration,
        "probe_history_events": len(probe.steps),
        "probe_trigger": probe.trigger,
        "probes": len(sent),
        "probes_skipped": skipped,
        "missing": len(sent) - len(latencies),
        "pending_at_end": backlog,
        "flow_cpu_s": round(cpu, 2),
        "flow_cpu_us_per_event": round(cpu * 1e6 / produced["sent"], 1)
        if produced.get("sent")
        else None,
        "checkpoints": ckpts,
        "sched": sched,
        "unread_at_end": unread,
        "ms": _summary(latencies),
        "trend": trend,
        "kept_up": unread == 0 and (trend is None or trend < 2.0),
        "timeline": timeline,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _schedstat(pid: int) -> tuple[int, int, int]:
    """Summed over a process's threads (``/proc/PID/task/*/schedstat``): ns on a CPU, ns
    runnable but waiting for one (a busy CPU, or an idle vCPU waking up), and time slices
    (~ wake-ups). Zeros where the kernel has no schedstat."""
    run = wait = slices = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            a, b, c = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        run, wait, slices = run + int(a), wait + int(b), slices + int(c)
    return run, wait, slices


def _sched_delta(before: tuple[int, int, int], after: tuple[int, int, int]) -> dict[str, float]:
    """What a process's schedstat says of the measured run: the CPU it used, how long its
    threads waited to run once runnable, and that wait per time slice (a wake-up's cost)."""
    run, wait, slices = (a - b for a, b in zip(after, before, strict=True))
    return {
        "cpu_s": round(run / 1e9, 3),
        "runnable_wait_s": round(wait / 1e9, 3),
        "slices": slices,
        "wait_us_per_slice": round(wait / 1e3 / slices, 1) if slices else 0.0,
    }


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    n = len(values)
    return {
        "p50": round(values[n // 2], 2),
        "p90": round(values[min(n - 1, n * 9 // 10)], 2),
        "p99": round(values[min(n - 1, n * 99 // 100)], 2),
        "max": round(values[-1], 2),
        "mean": round(sum(values) / n, 2),
    }


if __name__ == "__main__":
    # The producer process: python -m bench.latency URL EVENTS RATE DURATION
    url, path, rate, duration = sys.argv[1:5]
    result = produce(url, path, float(rate), float(duration))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
