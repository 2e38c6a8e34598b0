"""One measured run in a fresh process: ``python -m bench.runner '<json spec>'``.

Every throughput figure comes from its own interpreter so runs cannot inherit each other's
heap, caches or threads, and so multi-process Bytewax runs (``-i/-a``) are just several of
these. The process prints one JSON line: wall-clock start and end (``time.time()``, to merge
processes of one cluster), elapsed seconds, CPU seconds and peak RSS. Imports and flow
building happen before the clock starts; reading the input and writing every output happen
inside it.

Spec keys: ``mode`` (limit | engine | naive | files | redis), ``rules``, ``events`` (paths),
``out`` (directory), ``workers`` (threads in this process), ``proc_id`` and ``addresses``
(for a multi-process cluster), ``redis_url``, ``partitions``, ``shards``, ``tail``,
``flush_ms`` (redis; else ``LEADSCORE_FLUSH_MS``, else the default), ``engine`` (``python`` or
``compiled``: ``LEADSCORE_ENGINE`` for this run).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from flows.config import FlowConfig


def run_limit(paths: list[str]) -> dict[str, Any]:
    """Baseline (b): the most a Python process can do per event, parse and a dict update."""
    loads, error = orjson.loads, orjson.JSONDecodeError
    scores: dict[str, int] = {}
    bad = 0
    for path in paths:
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    obj = loads(line)
                except error:
                    bad += 1
                    continue
                if type(obj) is dict and type(contact := obj.get("contact")) is str:
                    scores[contact] = scores.get(contact, 0) + 1
                else:
                    bad += 1
    return {"contacts": len(scores), "rejected": bad}


def run_engine(rules_path: str, paths: list[str], out: str) -> dict[str, Any]:
    """Leadscore's work without Bytewax: parse, engine, records, read models, dead letters.

    The ceiling for the files flow on one worker; the gap to it is the dataflow's cost. It
    manages the garbage collector as the flows do (``settle_heap``), or the ceiling would sit
    below the flow.
    """
    from flows.heap import release_heap, settle_heap
    from flows.scoring import DeadLetter, effect_record
    from leadscore.engine import ContactState, Duplicate, Engine
    from leadscore.events import Event, Reject, parse_event
    from leadscore.rules import load_rules

    engine = Engine(load_rules(rules_path))
    known = engine.rules.known_actions
    contacts: dict[str, ContactState] = {}
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    kinds = ("triggers", "changes", "dead_letter", "contacts")
    files = {kind: open(target / f"{kind}.jsonl", "wb") for kind in kinds}  # noqa: SIM115
    pending: dict[str, list[bytes]] = {kind: [] for kind in kinds}
    counts = dict.fromkeys(kinds, 0)

    def emit(kind: str, line: bytes) -> None:
        # Written in blocks as they come, like the flow's sinks, so memory stays flat.
        lines = pending[kind]
        lines.append(line)
        if len(lines) >= 4096:
            files[kind].write(b"\n".join(lines) + b"\n")
            counts[kind] += len(lines)
            lines.clear()

    apply, new_state = engine.apply, engine.new_state
    now = time.time()
    for path in paths:
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if not number & 4095:
                    settle_heap()
                raw = raw.rstrip(b"\r\n")
                event = parse_event(raw, now)
                if type(event) is Event and event.action in known:
                    state = contacts.get(event.contact)
                    if state is None:
                        state = contacts[event.contact] = new_state()
                    effects = apply(state, event)
                    if effects and type(effects[0]) is Duplicate:
                        continue
                    for effect in effects:
                        emit(*effect_record(event.contact, effect))
                    continue
                if type(event) is Event:
                    event = Reject("unknown_action", f"action {event.action!r} is not used")
                emit("dead_letter", DeadLetter(f"{path}:{number}", raw, event).record())
    for contact, state in contacts.items():
        emit("contacts", orjson.dumps(engine.view(contact, state)))
    for kind, fh in files.items():
        if pending[kind]:
            fh.write(b"\n".join(pending[kind]) + b"\n")
            counts[kind] += len(pending[kind])
        fh.close()
    release_heap()
    return {"contacts": len(contacts), "triggers": counts["triggers"]}


def build(spec: dict[str, Any]) -> Any:
    """The Bytewax dataflow a spec describes (built before the clock starts)."""
    mode = spec["mode"]
    if mode == "naive":
        from bench.naive import build_naive_flow

        return build_naive_flow(spec["rules"], spec["events"], spec["out"])
    from flows.scoring import FlowConfig, build_flow

    if mode == "files":
        config = FlowConfig(
            rules=spec["rules"],
            events=spec["events"],
            out=spec["out"],
            shards=spec.get("shards", 64),
        )
    elif mode == "redis":
        config = redis_config(spec)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return build_flow(config)


def redis_config(spec: dict[str, Any]) -> FlowConfig:
    """The live flow's FlowConfig of a ``redis`` spec.

    ``flush_ms`` (the checkpoint cadence of a caught-up partition) is the spec's, else
    ``LEADSCORE_FLUSH_MS`` as ``leadscore run`` reads it: until 2026-12-06 both were ignored
    here, so every benchmark flow ran with the default whatever the variable said.
    """
    from flows.config import FlowConfig

    flush = spec.get("flush_ms") or os.environ.get("LEADSCORE_FLUSH_MS")
    return FlowConfig(
        **({"flush_ms": int(flush)} if flush else {}),
        rules=spec["rules"],
        source="redis",
        redis_url=spec["redis_url"],
        partitions=spec.get("partitions", 16),
        tail=spec.get("tail", False),
        out=spec.get("out"),
        # a cluster's process 0 takes the flow lease, the others join it (state/lease.py)
        process_id=spec.get("proc_id", 0),
        processes=len(spec.get("addresses") or [None]),
    )


def null_engine() -> None:
    """``--null-engine``: ``Engine.apply`` scores nothing and emits nothing.

    What is left is what a design pays whatever the engine costs (reading, parsing, the
    dataflow, the sinks), so such a run's ratios bound what any engine speed-up could give.
    A compiled Engine is a C type whose methods cannot be replaced: main() then runs the
    interpreted one (LEADSCORE_ENGINE=python, before anything imports leadscore).
    """
    from leadscore.engine import ContactState, Effect, Engine
    from leadscore.events import Event

    def apply(self: Engine, state: ContactState, event: Event) -> list[Effect]:
        return []

    Engine.apply = apply  # type: ignore[method-assign]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    mode = spec["mode"]
    if spec.get("null_engine"):
        null_engine()  # before the flow is built, so every design calls the stub
    flow = None
    if mode not in ("limit", "engine"):
        flow = build(spec)
    from bytewax.testing import cluster_main, run_main

    extra: dict[str, Any] = {}
    cpu0 = time.process_time()
    start = time.time()
    t0 = time.perf_counter()
    if mode == "limit":
        extra = run_limit(spec["events"])
    elif mode == "engine":
        extra = run_engine(spec["rules"], spec["events"], spec["out"])
    elif spec.get("addresses"):
        cluster_main(
            flow,
            spec["addresses"],
            spec["proc_id"],
            worker_count_per_proc=spec.get("workers", 1),
        )
    elif spec.get("workers", 1) > 1:
        cluster_main(flow, [], 0, worker_count_per_proc=spec["workers"])
    else:
        run_main(flow)
    seconds = time.perf_counter() - t0
    end = time.time()
    cpu = time.process_time() - cpu0
    return {
        "start": start,
        "end": end,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **extra,
    }


def main(argv: list[str]) -> None:
    spec = orjson.loads(argv[0])
    if spec.get("null_engine"):
        os.environ["LEADSCORE_ENGINE"] = "python"  # see null_engine
    if spec.get("engine"):  # which engine leadscore loads: python or compiled (bench.compiled)
        os.environ["LEADSCORE_ENGINE"] = spec["engine"]
    if os.environ.get("LEADSCORE_TRACE"):  # where a live entry's latency goes (bench/trace.py)
        from bench.trace import install

        install(os.environ["LEADSCORE_TRACE"])
    result = run(spec)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
