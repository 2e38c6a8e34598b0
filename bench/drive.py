"""A flow's shard logic driven by hand, without Bytewax: what callgrind counts deterministically.

On a shared 2-core box wall-clock and CPU-time A/Bs of a few percent drown in other people's
load; instruction counts do not. Run each commit's copy (``git archive``) under callgrind and
compare the totals (imports and setup cost the same on both sides: subtract a 1-line run)::

    python -m bench.drive files EVENTS.jsonl 30000
    python -m bench.drive load  EVENTS.jsonl 60000 WORKDIR   # prints URL PID of a redis-server
    python -m bench.drive redis URL                          # the pre-loaded streams, once
    python -m bench.drive apply ROUNDS                       # Engine.apply, the hot-path mix
    python -m bench.drive parse EVENTS.jsonl 30000 ROUNDS    # typed.parse_events alone

``apply`` replays the hot-path benchmark's mix (``bench/conftest.py``: 20k events, 2k
contacts, seed 7) through ``Engine.apply`` from fresh states ROUNDS times, as
``test_apply`` does; ``apply 0`` is the setup alone, so (instructions of ``apply 4`` minus
``apply 0``) / 80,000 is the instructions per apply. It also prints the fastest round's CPU
time per event (``time.process_time``), the hot-path benchmark's figure without
pytest-benchmark.

``parse`` decodes and checks the first N lines (without their line ends) with
:func:`leadscore.typed.parse_events` in chunks of 1000, as the file flow's ``Parser`` does,
ROUNDS times: ``parse ... 0`` is the setup alone, so (instructions of ``parse ... R`` minus
``parse ... 0``) / (N * R) is the instructions per line of the decode and the contract's
checks, events built, nothing else.

``files`` feeds the file flow's 64 :class:`~flows.shards.ShardLogic` in chunks of 1000 parsed
lines, then ends them (final views, summary). ``redis`` feeds each of 16
:class:`~flows.redis_flow.PartitionLogic` its stream's entries 256 at a time (READ_COUNT),
as the source would, with checkpoints to the real redis-server. The server must be fresh: a
second run would resume from the first one's checkpoints.
"""

from __future__ import annotations

import itertools
import sys
import threading
from pathlib import Path
from zlib import crc32

from bench.common import rules_path


def files(path: str, n: int) -> int:
    from flows.shards import ShardLogic
    from leadscore.engine import Engine
    from leadscore.events import NO_TS, Event
    from leadscore.rules import load_rules
    from leadscore.typed import parse_events

    rules = load_rules(rules_path())
    engine = Engine(rules)
    shards = 64
    logics = [ShardLogic(engine, 1, False) for _ in range(shards)]
    with open(path, "rb") as fh:
        lines = [line.rstrip(b"\n") for line in itertools.islice(fh, n)]
    total = 0
    known = rules.known_actions
    for i in range(0, len(lines), 1000):
        per: dict[int, list[Event]] = {}
        for event in parse_events(lines[i : i + 1000], NO_TS):
            if type(event) is Event and event.action in known:
                per.setdefault(crc32(event.contact.encode()) % shards, []).append(event)
        for s, events in per.items():
            out, _ = logics[s].on_batch([events])
            total += sum(len(chunk) for _, chunk in out)
    for logic in logics:
        out, _ = logic.on_eof()
        total += sum(len(chunk) for _, chunk in out)
    return total


def load(path: str, n: int, workdir: str) -> str:
    from bench.common import load_redis_server
    from state.redis_store import RedisStore

    server = load_redis_server().RedisServer(Path(workdir)).start()
    with RedisStore(server.url, partitions=16) as store:
        store.ensure(16)
        with open(path, "rb") as fh:
            store.send_events((line.rstrip(b"\n") for line in itertools.islice(fh, n)), batch=100)
    assert server.proc is not None
    return f"{server.url} {server.proc.pid}"


def redis_flow(url: str) -> int:
    import redis

    from flows.config import FlowConfig
    from flows.redis_flow import READ_COUNT, PartitionLogic, WorkerLogics
    from flows.redis_io import IDLE
    from leadscore.engine import Engine
    from leadscore.rules import load_rules
    from state.redis_store import RedisStore

    parts = 16
    config = FlowConfig(
        rules=str(rules_path()),
        source="redis",
        redis_url=url,
        partitions=parts,
        tail=False,
        stop=threading.Event(),
    )
    engine = Engine(load_rules(config.rules))
    store = RedisStore(url, partitions=parts)
    worker = WorkerLogics(store)
    logics = [PartitionLogic(engine, config, worker) for _ in range(parts)]
    client = redis.Redis.from_url(url)
    streams = [
        [(eid.decode(), fields[b"e"]) for eid, fields in client.xrange(store.keys.input(p))]
        for p in range(parts)
    ]
    for i in range(0, max(map(len, streams)), READ_COUNT):
        for p, logic in enumerate(logics):
            chunk = streams[p][i : i + READ_COUNT]
            if not chunk and i:
                continue
            values = [(p, None, b"")] if i == 0 else []
            values += [(p, eid, payload) for eid, payload in chunk]
            if len(chunk) < READ_COUNT:
                values.append((p, IDLE, b""))
            logic.on_batch(values)
        for logic in logics:
            logic.notify_at()
    for logic in logics:
        logic.on_eof()
    return sum(int(client.xlen(store.keys.triggers(p))) for p in range(parts))


def apply(rounds: int) -> str:
    import time

    from bench.common import parsed_events
    from bench.conftest import HOTPATH_CONTACTS, HOTPATH_EVENTS, HOTPATH_SEED
    from leadscore.engine import Engine
    from leadscore.generate import generate_events
    from leadscore.rules import load_rules

    rules = load_rules(rules_path())
    engine = Engine(rules)
    lines = generate_events(HOTPATH_CONTACTS, HOTPATH_EVENTS, HOTPATH_SEED)
    events = parsed_events(iter(lines), rules)
    run, new_state = engine.apply, engine.new_state
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        states: dict[str, object] = {}
        for e in events:
            state = states.get(e.contact)
            if state is None:
                state = states[e.contact] = new_state()
            run(state, e)
        best = min(best, time.process_time() - start)
    return f"{len(events)} events, best of {rounds}: {best / len(events) * 1e6:.3f} µs CPU/event"


def parse(path: str, n: int, rounds: int) -> int:
    from leadscore.events import NO_TS, Event
    from leadscore.typed import parse_events

    with open(path, "rb") as fh:
        lines = [line.rstrip(b"\n") for line in itertools.islice(fh, n)]
    events = 0
    for _ in range(rounds):
        for i in range(0, len(lines), 1000):
            events += sum(type(e) is Event for e in parse_events(lines[i : i + 1000], NO_TS))
    return events


def main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "files":
        print(files(args[0], int(args[1])))
    elif mode == "load":
        print(load(args[0], int(args[1]), args[2]))
    elif mode == "redis":
        print(redis_flow(args[0]))
    elif mode == "parse":
        print(parse(args[0], int(args[1]), int(args[2])))
    elif mode == "apply":
        print(apply(int(args[0])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
