"""Bytes per contact: in a flow's memory (RSS) and in Redis (``MEMORY USAGE``).

In memory: a fresh process replays the benchmark input through the engine (every state the
engine produced, held in a dict by contact as a shard does), then grows the dict to
``contacts`` states by re-hydrating copies of those packed states under new contact ids. A
msgpack decode would give every copy its own key strings where the engine shares the rule
and group ids; the copies re-use them (``sys.intern``), so they cost what engine states cost.
RSS is read from ``/proc/self/statm`` after a full collection, before and after.

Run alone: ``python -m bench.memory '{"rules": ..., "events": ..., "contacts": 1000000}'``.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import iter_lines, parsed_events
from leadscore.engine import ContactState, Engine
from leadscore.rules import load_rules
from state.codec import decode, encode

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident bytes of this process, after a full collection."""
    gc.collect()
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def _interned(state: ContactState) -> ContactState:
    """A decoded state whose dict keys and labels are shared strings, as the engine makes them.

    (``decode`` already shares the tracked rule ids and the empty groups, traits and
    triggers.)"""
    intern = sys.intern
    if state.groups:
        state.groups = {intern(k): v for k, v in state.groups.items()}
    if state.triggers:
        state.triggers = {intern(k): v for k, v in state.triggers.items()}
    if state.traits:
        state.traits = {intern(k): v for k, v in state.traits.items()}
    state.segments = tuple(map(intern, state.segments))
    state.tags = tuple(map(intern, state.tags))
    state.fit = tuple(map(intern, state.fit))
    return state


def field_bytes(states: list[ContactState]) -> dict[str, float]:
    """Mean ``sys.getsizeof`` bytes per contact of each ContactState field, containers walked.

    Dict keys and tuple items that are strings are shared rule ids and labels (not counted);
    string values are counted. Shared empty containers are counted for every contact. Tells
    which field to slim when memory matters.
    """
    totals: dict[str, int] = {}

    def size(obj: object, key: bool = False) -> int:
        if key and type(obj) is str:
            return 0
        n = sys.getsizeof(obj)
        if type(obj) is dict:
            n += sum(size(k, True) + size(v) for k, v in obj.items())  # type: ignore[attr-defined]
        elif type(obj) is tuple:  # rule ids and labels (shared) and arrays
            n += sum(size(v, True) for v in obj)  # type: ignore[attr-defined]
        elif type(obj) is list:
            n += sum(size(v) for v in obj)  # type: ignore[attr-defined]
        return n

    for state in states:
        totals["(object)"] = totals.get("(object)", 0) + sys.getsizeof(state)
        for name in ContactState.__slots__:
            totals[name] = totals.get(name, 0) + size(getattr(state, name))
    ordered = sorted(totals.items(), key=lambda kv: -kv[1])
    return {name: round(total / len(states), 1) for name, total in ordered}


def measure_memory(rules_path: str, events_path: str, contacts: int) -> dict[str, Any]:
    engine = Engine(load_rules(rules_path))
    events = parsed_events(iter_lines(Path(events_path)), engine.rules)
    # Warm up allocator pools and the engine's code paths on throwaway states first.
    scratch: dict[str, ContactState] = {}
    for e in events[:2000]:
        engine.apply(scratch.setdefault(e.contact, engine.new_state()), e)
    del scratch

    before = rss()
    t0 = time.perf_counter()
    states: dict[str, ContactState] = {}
    apply, new_state = engine.apply, engine.new_state
    for e in events:
        state = states.get(e.contact)
        if state is None:
            state = states[e.contact] = new_state()
        apply(state, e)
    replay_s = time.perf_counter() - t0
    after_replay = rss()
    produced = len(states)
    sizes = sorted(len(encode(s)) for s in states.values())
    fields = field_bytes(list(states.values()))

    blobs = [encode(s) for s in states.values()]
    names = list(states)
    base = rss()
    copies: dict[str, ContactState] = {}
    i = 0
    while len(copies) < contacts:
        k, j = divmod(i, len(blobs))
        copies[f"{names[j]}~{k}"] = _interned(decode(blobs[j]))
        i += 1
    grown = rss()
    n = len(sizes)
    return {
        "engine_states": produced,
        "engine_bytes_per_contact": round((after_replay - before) / produced, 1),
        "engine_replay_events_per_s": round(len(events) / replay_s),
        "contacts": contacts,
        "rss_bytes_per_contact": round((grown - base) / contacts, 1),
        "rss_growth_mb": round((grown - base) / 2**20, 1),
        "object_bytes_by_field": fields,
        "packed_bytes": {
            "mean": round(sum(sizes) / n, 1),
            "p50": sizes[n // 2],
            "p90": sizes[min(n - 1, n * 9 // 10)],
            "p99": sizes[min(n - 1, n * 99 // 100)],
            "max": sizes[-1],
        },
    }


def redis_memory(url: str, prefix: str = "ls", sample: int = 2000) -> dict[str, Any]:
    """``MEMORY USAGE`` of a sample of contacts' state and read-model keys (scanned)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        state_keys: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*:s:*", count=10_000):
            state_keys.append(key)
            if len(state_keys) >= sample:
                break
        if not state_keys:
            return {"sampled": 0}
        pipe = client.pipeline(transaction=False)
        for key in state_keys:
            pipe.memory_usage(key, samples=0)
            pipe.memory_usage(key.replace(b":s:", b":c:", 1), samples=0)
            pipe.strlen(key)
        values = pipe.execute()
        state = [v or 0 for v in values[0::3]]
        model = [v or 0 for v in values[1::3]]
        packed = [v or 0 for v in values[2::3]]
        per_contact = sorted(s + m for s, m in zip(state, model, strict=True))
        n = len(per_contact)
        info = client.info("memory")
        return {
            "sampled": n,
            "state_key_bytes_mean": round(sum(state) / n, 1),
            "read_model_key_bytes_mean": round(sum(model) / n, 1),
            "packed_state_bytes_mean": round(sum(packed) / n, 1),
            "bytes_per_contact_mean": round(sum(per_contact) / n, 1),
            "bytes_per_contact_p50": per_contact[n // 2],
            "bytes_per_contact_p99": per_contact[min(n - 1, n * 99 // 100)],
            "used_memory_mb": round(int(info["used_memory"]) / 2**20, 1),
            "keys": int(client.dbsize()),
        }
    finally:
        client.close()


if __name__ == "__main__":
    spec = orjson.loads(sys.argv[1])
    result = measure_memory(spec["rules"], spec["events"], int(spec["contacts"]))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
