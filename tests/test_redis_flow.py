"""Proof that the live Redis flow is exactly-once: real redis-server, real Bytewax runs.

The yardstick everywhere is an uninterrupted run of the same events into a fresh database:
after kill -9 of the flow (several times, at random moments), kill -9 of Redis itself (AOF,
appendfsync always), SIGTERM, or on Redis Cluster, the final contact states (the msgpack blobs,
decoded), the read models, and the multisets of trigger firings, point changes and dead letters
must be identical to it. A trigger emitted twice, a change lost or an event applied twice would
show up as a difference.

Events come from `leadscore.generate` (busy contacts and a long tail, sessions, funnels, a few
malformed lines, slightly out-of-order timestamps) with examples/rules.yaml. They are dated
2025, so every decay crossing is in the past and fires in every run: the states compared are
fully settled.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
import redis
from bytewax.testing import cluster_main
from prometheus_client import REGISTRY
from redis.cluster import RedisCluster
from redis_server import RedisServer

from flows import redis_flow
from flows.redis_flow import MAINTAIN_PER_ROUND, PartitionLogic, WorkerLogics
from flows.redis_io import IDLE
from flows.scoring import FlowConfig, build_flow
from leadscore.engine import Engine
from leadscore.events import Event, parse_event
from leadscore.generate import generate_events
from leadscore.readmodel import view_at
from leadscore.rules import load_rules
from state.codec import decode
from state.keys import GROUP, Keys, partition_of
from state.redis_store import CHECKPOINT_LUA, RedisStore, SentCheckpoints

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "rules.yaml"
P = 16
START = datetime(2025, 1, 6, tzinfo=UTC).timestamp()
FLOW_CMD = [sys.executable, "-m", "bytewax.run", "flows.scoring:flow"]


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def events_100k() -> list[bytes]:
    """100k realistic events for 5000 contacts, ~100 malformed, dated early 2025."""
    return list(generate_events(5000, 100_000, seed=11, start=START, days=56))


def with_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def send(url: str, lines: list[bytes], *, batch: int = 20, cluster: bool = False) -> int:
    """Pre-load the input streams; returns the number of stream entries written."""
    with RedisStore(url, cluster=cluster) as store:
        store.ensure(P)
        return store.send_events(lines, batch=batch).entries


def run_in_process(url: str, *, workers: int = 1, cluster: bool = False, **options: Any) -> None:
    """One drain run (tail=False) in this process, as the uninterrupted reference."""
    config = FlowConfig(
        rules=str(RULES),
        source="redis",
        redis_url=url,
        partitions=P,
        tail=False,
        cluster=cluster,
        stop=threading.Event(),
        **options,
    )
    cluster_main(build_flow(config), [], 0, worker_count_per_proc=workers)


# --------------------------------------------------------------------------- results


def canonical(record: Any) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


@dataclass
class Snapshot:
    """Everything a run leaves in Redis, in comparable form."""

    states: dict[str, Any]  # contact -> decoded msgpack array
    views: dict[str, Any]  # contact -> read model
    triggers: Counter[tuple[str, str, str]]  # (contact, trigger, at)
    trigger_records: Counter[bytes]
    changes: Counter[bytes]
    dead: Counter[bytes]
    checkpoints: int

    @classmethod
    def read(cls, url: str, *, cluster: bool = False, prefix: str = "ls") -> Snapshot:
        store = RedisStore(url, cluster=cluster, prefix=prefix)
        keys = store.keys
        client = redis.Redis.from_url(url) if not cluster else RedisCluster.from_url(url)
        states: dict[str, Any] = {}
        views: dict[str, Any] = {}
        for p in range(keys.partitions):
            head = f"{prefix}:{{{p}}}:"
            for kind, target in (("s", states), ("c", views)):
                names = list(client.scan_iter(match=f"{head}{kind}:*", count=10_000))
                if not names:
                    continue
                # one slot per partition: MGET is legal on Cluster too
                for name, value in zip(names, client.mget(names), strict=True):
                    contact = name.decode()[len(head) + 2 :]
                    if kind == "s":
                        decode(value)  # the codec reads it back
                        target[contact] = msgpack.unpackb(value, strict_map_key=False)
                    else:
                        target[contact] = orjson.loads(value)  # plain JSON, no msgpack
        trigger_records = Counter(canonical(t) for t in store.read_triggers())
        triggers = Counter(
            (t["contact"], t["trigger"], t["at"]) for _, _, t in store.iter_records("triggers")
        )
        changes = Counter(canonical(c) for _, _, c in store.iter_records("changes"))
        # a dead letter's position names its stream entry, which differs between loads
        dead = Counter(canonical({**d, "position": None}) for d in store.read_dead())
        checkpoints = sum(store.last_checkpoint(p) for p in range(keys.partitions))
        store.close()
        client.close()
        return cls(states, views, triggers, trigger_records, changes, dead, checkpoints)


def assert_same_results(got: Snapshot, expected: Snapshot) -> None:
    """Equal states, read models and record multisets; a readable diff when not."""
    assert expected.states, "the reference run scored nothing"
    for name in ("states", "views"):
        a, b = getattr(got, name), getattr(expected, name)
        differ = sorted(c for c in a.keys() | b.keys() if a.get(c) != b.get(c))
        assert not differ, (
            f"{len(differ)} of {len(b)} {name} differ, e.g. {differ[0]}:\n"
            f"  got      {a.get(differ[0])}\n  expected {b.get(differ[0])}"
        )
    for name in ("triggers", "trigger_records", "changes", "dead"):
        a, b = getattr(got, name), getattr(expected, name)
        assert a == b, (
            f"{name}: extra {list((a - b).items())[:3]}, missing {list((b - a).items())[:3]}"
        )
    assert all(n == 1 for n in got.triggers.values()), "a trigger firing recorded twice"


# --------------------------------------------------------------------------- progress


@dataclass
class Progress:
    total: int  # entries in the input streams
    read: int  # entries delivered to the flow
    pending: int  # delivered, not checkpointed

    @property
    def acked(self) -> int:
        return self.read - self.pending


def progress(url: str, cluster: bool = False) -> Progress:
    keys = Keys("ls", P)
    client = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    try:
        total = read = pending = 0
        for p in range(P):
            group = client.xinfo_groups(keys.input(p))[0]
            length = client.xlen(keys.input(p))
            total += length
            if group["entries-read"] is not None:
                read += group["entries-read"]
            else:
                # Redis 7 may forget the counter (None) when it reloads its AOF; then count
                # what lies beyond the group's last delivered entry instead.
                after = "(" + group["last-delivered-id"].decode()
                read += length - len(client.xrange(keys.input(p), min=after))
            pending += group["pending"]
        return Progress(total, read, pending)
    finally:
        client.close()


class FlowProcess:
    """The flow as a real OS process (`python -m bytewax.run flows.scoring:flow`)."""

    def __init__(self, log: Path, url: str, *, workers: int = 1, tail: bool = True, **env: str):
        self.log = log
        variables = dict(os.environ)
        variables.update(
            LEADSCORE_RULES=str(RULES),
            LEADSCORE_SOURCE="redis",
            LEADSCORE_REDIS_URL=url,
            LEADSCORE_PARTITIONS=str(P),
            LEADSCORE_TAIL="1" if tail else "0",
            PYTHONUNBUFFERED="1",
        )
        variables.update(env)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*FLOW_CMD, "-w", str(workers)],
                cwd=ROOT,
                env=variables,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, done: Callable[[], bool], what: str, timeout: float = 120) -> None:
        """Poll ``done`` until true; fail with the flow's output if it exits or hangs."""
        deadline = time.monotonic() + timeout
        while not done():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the flow exited ({self.proc.returncode}) before {what}:\n"
                    + self.output()[-3000:]
                )
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"timed out waiting for {what}:\n" + self.output()[-3000:])
            time.sleep(0.01)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def finish(self, sig: signal.Signals | None = None, timeout: float = 120) -> int:
        """Send ``sig`` (if any) and wait for the exit code."""
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("the flow did not exit:\n" + self.output()[-3000:])


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_kill_9_at_random_moments_changes_nothing(
    redis_url: str, events_100k: list[bytes], tmp_path: Path
) -> None:
    """SIGKILL the flow (2 workers) 4 times while it scores 100k events; restart each time;
    the end result equals one uninterrupted run (1 worker, other flush sizes)."""
    reference_url = with_db(redis_url, 1)
    send(reference_url, events_100k, batch=100)
    run_in_process(reference_url, workers=1)
    expected = Snapshot.read(reference_url)

    entries = send(redis_url, events_100k, batch=20)  # smaller entries: more, finer commits
    rng = random.Random(20261122)
    targets = sorted(rng.uniform(0.05, 0.8) for _ in range(3))
    log = tmp_path / "flow.log"
    kills: list[dict[str, Any]] = []
    client = redis.Redis.from_url(redis_url)
    live = [Keys("ls", P).live(p) for p in range(P)]
    for n, target in enumerate([0.0, *targets]):
        if target == 0.0:
            # The first kill lands before anything was committed: entries read, none acked.
            # Every partition is held as by a publish's switch (its checkpoints refused and
            # retried), so no commit can beat the kill however late this test gets the CPU
            # (on a loaded box the whole run once finished between the read and the kill).
            client.mset(dict.fromkeys(live, ">1:2"))
        flow = FlowProcess(log, redis_url, workers=2, LEADSCORE_FLUSH_EVENTS="500")
        before = progress(redis_url).acked
        if target == 0.0:
            flow.wait_until(lambda: progress(redis_url).read > 0, "the first read")
            time.sleep(0.2)  # time to apply and try to commit: refused (held), nothing written
            flow.kill()
            client.delete(*live)  # the publish gave up: generation 0 again
            now = progress(redis_url)
            assert now.acked == 0 and now.pending > 0
            kills.append({"at": 0.0, "acked": 0, "lost_in_flight": now.pending})
            continue
        flow.wait_until(lambda t=target: progress(redis_url).acked >= t * entries, "progress")
        time.sleep(rng.uniform(0.0, 0.05))
        flow.kill()
        now = progress(redis_url)
        assert now.acked < entries, f"kill {n} came too late: the run had finished"
        kills.append(
            {
                "at": round(now.acked / entries, 3),
                "acked": now.acked - before,
                "lost_in_flight": now.pending,
            }
        )
    client.close()
    final = FlowProcess(log, redis_url, workers=2, tail=False)
    assert final.finish() == 0, final.output()[-3000:]

    done = progress(redis_url)
    assert done.pending == 0 and done.read == done.total == entries
    got = Snapshot.read(redis_url)
    assert_same_results(got, expected)
    replayed = sum(k["lost_in_flight"] for k in kills)
    print(
        f"\nkills: {kills}; {replayed} entries read but never committed were replayed; "
        f"{got.checkpoints} checkpoints; {sum(got.triggers.values())} triggers, "
        f"{sum(got.changes.values())} changes, {len(got.states)} contacts, all equal"
    )
    assert len(kills) == 4


def test_redis_killed_mid_run_with_aof_always_loses_nothing(
    redis_url: str, aof_server: RedisServer, events_100k: list[bytes], tmp_path: Path
) -> None:
    """kill -9 of redis-server itself mid-run (appendonly yes, appendfsync always): the flow
    rides it out and finishes with the reference results."""
    lines = events_100k[:30_000]
    send(redis_url, lines, batch=100)
    run_in_process(redis_url, workers=2)
    expected = Snapshot.read(redis_url)

    entries = send(aof_server.url, lines, batch=10)
    flow = FlowProcess(
        tmp_path / "flow.log", aof_server.url, tail=False, LEADSCORE_FLUSH_EVENTS="300"
    )
    flow.wait_until(lambda: progress(aof_server.url).acked >= 0.3 * entries, "progress")
    assert aof_server.proc is not None
    aof_server.proc.kill()  # SIGKILL: no shutdown save, only what the AOF fsynced survives
    aof_server.proc.wait()
    aof_server.proc = None
    flow.wait_until(lambda: "failed (" in flow.output(), "the flow noticing Redis is gone")
    aof_server.start()
    assert flow.finish() == 0, flow.output()[-3000:]

    assert "RedisLostCheckpoints" not in flow.output()
    done = progress(aof_server.url)
    assert done.pending == 0 and done.read == done.total == entries
    assert_same_results(Snapshot.read(aof_server.url), expected)


def test_sigterm_stops_a_live_run_cleanly_with_everything_read_checkpointed(
    redis_url: str, events_100k: list[bytes], tmp_path: Path
) -> None:
    lines = events_100k[:30_000]
    reference_url = with_db(redis_url, 1)
    send(reference_url, lines)
    run_in_process(reference_url, workers=2)
    expected = Snapshot.read(reference_url)

    entries = send(redis_url, lines, batch=10)
    flow = FlowProcess(tmp_path / "flow.log", redis_url, LEADSCORE_FLUSH_EVENTS="300")
    flow.wait_until(lambda: progress(redis_url).acked >= 0.2 * entries, "progress")
    assert flow.finish(signal.SIGTERM) == 0, flow.output()[-3000:]
    assert "SIGTERM: stopping" in flow.output()
    stopped = progress(redis_url)
    assert stopped.pending == 0  # everything it had read was checkpointed before exiting
    assert stopped.acked > 0

    # What it acknowledged is in Redis: finishing the rest gives the reference results.
    final = FlowProcess(tmp_path / "flow.log", redis_url, tail=False)
    assert final.finish() == 0
    assert_same_results(Snapshot.read(redis_url), expected)
    print(f"\nSIGTERM after {stopped.acked}/{entries} entries acked, {stopped.read} read")


def _contacts_in_partitions(prefix: str, n: int) -> dict[int, str]:
    """``n`` contacts ``{prefix}{i}@acme.com`` in ``n`` different partitions, by partition."""
    contacts: dict[int, str] = {}
    i = 0
    while len(contacts) < n:
        contacts.setdefault(partition_of(f"{prefix}{i}@acme.com", P), f"{prefix}{i}@acme.com")
        i += 1
    return contacts


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_an_event_sent_twice_is_scored_once_and_counted(redis_url: str) -> None:
    def line(n: int, url: str, ts: str) -> bytes:
        return orjson.dumps(
            {
                "contact": "dup@acme.com",
                "action": "page.hit",
                "id": f"evt-{n}",
                "ts": ts,
                "props": {"url": url},
            }
        )

    first = line(1, "https://acme.com/pricing", "2025-03-01T10:00:00Z")
    second = line(2, "https://acme.com/blog/a", "2025-03-01T10:05:00Z")
    once_url = with_db(redis_url, 1)
    send(once_url, [first, second])
    run_in_process(once_url)
    once = Snapshot.read(once_url)

    duplicates = _metric("leadscore_flow_duplicates_total")
    send(redis_url, [first], batch=1)
    send(redis_url, [first, second], batch=1)  # at-least-once producer: `first` again
    run_in_process(redis_url)
    assert _metric("leadscore_flow_duplicates_total") == duplicates + 1
    twice = Snapshot.read(redis_url)
    assert_same_results(twice, once)
    points = [orjson.loads(c) for c in twice.changes if b'"points"' in c]
    assert [p["event_id"] for p in points].count("evt-1") == 1

    # Still a duplicate after a restart: the recent ids are part of the committed state.
    send(redis_url, [first], batch=1)
    run_in_process(redis_url)
    assert _metric("leadscore_flow_duplicates_total") == duplicates + 2
    assert_same_results(Snapshot.read(redis_url), once)


@pytest.mark.cluster
def test_cluster_gives_the_same_results_as_one_node(
    redis_url: str, redis_cluster: str, events_100k: list[bytes]
) -> None:
    lines = events_100k[:10_000]
    send(redis_url, lines)
    run_in_process(redis_url)
    expected = Snapshot.read(redis_url)

    admin = RedisCluster.from_url(redis_cluster)
    admin.flushall()  # other tests' prefixes: ours must start empty
    send(redis_cluster, lines, cluster=True)
    run_in_process(redis_cluster, workers=2, cluster=True)
    got = Snapshot.read(redis_cluster, cluster=True)
    assert_same_results(got, expected)
    nodes = {admin.get_node_from_key(Keys("ls", P).input(p)).name for p in range(P)}
    assert len(nodes) == 3  # the partitions really are spread over the three masters
    assert progress(redis_cluster, cluster=True).pending == 0
    admin.close()


READER = textwrap.dedent(
    """
    import json, os, sys, redis
    r = redis.Redis.from_url(sys.argv[1])
    key, stop = sys.argv[2], sys.argv[3]
    seen, reads, missing, errors, last, done = [], 0, 0, [], "", False
    while not done:
        # one read more once told to stop: the last write is then seen however starved this
        # reader was while the flow wrote (the test stops it after that write)
        done = os.path.exists(stop)
        raw = r.get(key)
        reads += 1
        if raw is None:
            missing += 1
            continue
        try:
            view = json.loads(raw)
            view.pop("decay")  # what view_at needs; the rest is the view at updated_at
        except ValueError as err:
            errors.append(f"not JSON: {err}: {raw[:200]!r}")
            continue
        if view["updated_at"] < last:
            errors.append(f"updated_at went back: {last} -> {view['updated_at']}")
        last = view["updated_at"]
        if not seen or view != seen[-1]:
            seen.append(view)
    print(json.dumps({"reads": reads, "missing": missing, "errors": errors, "seen": seen}))
    """
)


def test_a_reader_sees_whole_read_models_with_monotonic_updated_at(
    redis_url: str, tmp_path: Path
) -> None:
    """Personalization reads the read model (plain GET, JSON) while the flow rewrites it: every
    value read is complete, is the view after some prefix of the contact's events, and time
    never goes back."""
    contact = "reader@acme.com"
    base = time.time() - 86_400  # recent: no decay crossing falls inside the test
    pages = ["/pricing", "/blog/a", "/docs/api", "/blog/b", "/case-studies/x", "/pricing"]
    lines = [
        orjson.dumps(
            {
                "contact": contact,
                "action": action,
                "id": f"r-{i}",
                "ts": base + 60 * i,
                "props": {"url": f"https://acme.com{pages[i % len(pages)]}"},
                **({"traits": {"title": "VP Sales"}} if i == 5 else {}),
            }
        )
        for i, action in enumerate(["page.hit", "email.open", "page.hit", "form.submit"] * 10)
    ]
    engine = Engine(load_rules(RULES))
    state = engine.new_state()
    views = []
    for raw in lines:
        event = parse_event(raw, time.time())
        assert type(event) is Event
        engine.apply(state, event)
        views.append(engine.view(contact, state))

    send(redis_url, [])  # meta and groups, so the key layout is known
    key = Keys("ls", P).read_model(partition_of(contact, P), contact)
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, redis_url, key, str(stop)], stdout=subprocess.PIPE
    )
    flow = FlowProcess(tmp_path / "flow.log", redis_url, LEADSCORE_FLUSH_MS="1")
    client = redis.Redis.from_url(redis_url)
    for i in range(0, len(lines), 4):
        send(redis_url, lines[i : i + 4], batch=1)
        flow.wait_until(lambda: progress(redis_url).acked == progress(redis_url).total, "acks")
        doc = orjson.loads(client.get(key))
        assert view_at(doc, 0.0) == views[i + 3]  # committed with its acks
        assert {k: v for k, v in doc.items() if k != "decay"} == views[i + 3]
    stop.touch()
    out, _ = reader.communicate(timeout=60)
    assert flow.finish(signal.SIGTERM) == 0
    report = orjson.loads(out)
    assert report["errors"] == []
    assert report["seen"] and all(view in views for view in report["seen"])
    assert report["seen"][-1] == views[-1]
    assert [views.index(v) for v in report["seen"]] == sorted(
        views.index(v) for v in report["seen"]
    )
    print(f"\nreader: {report['reads']} GETs, {len(report['seen'])} distinct read models")


def test_timers_committed_before_a_restart_fire_without_new_events(
    redis_url: str, tmp_path: Path
) -> None:
    """A contact whose decay crossing was due after the last checkpoint of a crashed process
    still cools down in the next run, though neither it nor its partition ever sends again."""
    contact = "cooling@acme.com"
    t0 = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
    lines = [  # 15 clicks: 60 points, mql; the score halves every 14 days: cooled ~3 weeks on
        orjson.dumps({"contact": contact, "action": "email.click", "id": f"k-{i}", "ts": t0 + i})
        for i in range(15)
    ]
    reference_url = with_db(redis_url, 1)
    send(reference_url, lines)
    run_in_process(reference_url)
    expected = Snapshot.read(reference_url)
    assert sorted(t for _, t, _ in expected.triggers) == ["cooled", "mql"]

    # A first process applies the events and commits (event time: the crossing is not due
    # yet), then dies before catching up, i.e. before timers follow the wall clock.
    send(redis_url, lines)
    store = RedisStore(redis_url)
    p = partition_of(contact, P)
    config = FlowConfig(rules=str(RULES), source="redis", redis_url=redis_url, partitions=P)
    logic = PartitionLogic(Engine(load_rules(RULES)), config)
    reply = store.r.xreadgroup(GROUP, Keys.consumer(p), {store.keys.input(p): ">"})
    logic.on_batch([(p, eid.decode(), fields[b"e"]) for eid, fields in reply[0][1]])
    logic.flush()
    ((timed, due),) = store.load_timers(p)
    assert timed == contact and t0 + 14 < due < time.time()
    assert [t["trigger"] for t in store.read_triggers()] == ["mql"]
    assert store.pending(p) == 0

    # The next process gets no input at all for that partition: it fires the timer anyway.
    # (The hand-driven logic recorded no rules: the flow adopts its own as v1.)
    flow = FlowProcess(tmp_path / "flow.log", redis_url, LEADSCORE_PUBLISH="1")
    flow.wait_until(lambda: len(store.read_triggers()) == 2, "the cooled trigger")
    assert flow.finish(signal.SIGTERM) == 0
    assert_same_results(Snapshot.read(redis_url), expected)
    assert store.load_timers(p) == []


def test_a_caught_up_partition_checkpoints_without_waiting_for_flush_ms(redis_url: str) -> None:
    """flush_ms is ten minutes here: only the IDLE marker can make these checkpoints.

    Called as Bytewax calls it: ``on_batch`` queues, the ``notify_at`` after it applies."""
    store = RedisStore(redis_url)
    store.ensure(P)
    contact = "quick@acme.com"
    p = partition_of(contact, P)
    config = FlowConfig(
        rules=str(RULES), source="redis", redis_url=redis_url, partitions=P, flush_ms=600_000
    )
    logic = PartitionLogic(Engine(load_rules(RULES)), config)

    def read_and_apply(n: int) -> None:
        line = {"contact": contact, "action": "email.click", "id": f"q-{n}", "ts": START + n}
        store.send_events([orjson.dumps(line)])
        reply = store.r.xreadgroup(GROUP, Keys.consumer(p), {store.keys.input(p): ">"})
        assert logic.on_batch([(p, eid.decode(), f[b"e"]) for eid, f in reply[0][1]])[0] == []
        logic.notify_at()

    read_and_apply(0)
    assert store.last_checkpoint(p) == 0 and store.pending(p) == 1  # more may follow: batch
    logic.on_batch([(p, IDLE, b"")])  # the source read everything: nothing to batch with
    assert store.last_checkpoint(p) == 0  # queued: applied at the notify_at that follows
    logic.notify_at()
    assert store.last_checkpoint(p) == 1 and store.pending(p) == 0
    assert store.load_states(p, [contact])

    # Catching up again within flush_ms of that checkpoint (traffic faster than flush_ms):
    # it batches as under load, so checkpoints stay at most one per flush_ms.
    read_and_apply(1)
    logic.on_batch([(p, IDLE, b"")])
    logic.notify_at()
    assert store.last_checkpoint(p) == 1 and store.pending(p) == 1
    logic.on_eof()
    assert store.last_checkpoint(p) == 2 and store.pending(p) == 0


def test_the_partitions_of_a_worker_share_their_state_loads_and_checkpoints(
    redis_url: str, socket_writes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytewax calls ``on_batch`` for each partition with input, then ``notify_at`` for each:
    the first ``notify_at`` applies what all of them queued, with ONE MGET for all their
    contacts not in memory, ONE HMGET of the aliases for those Redis has no state of, and
    one round trip for all their checkpoints (a script each, written as soon as it is
    built, the replies read once after the last)."""
    reads: list[int] = []
    sent_replies = RedisStore._sent_replies

    def counted(self: RedisStore, sent: SentCheckpoints) -> list[Any]:
        reads.append(sent.written)
        return sent_replies(self, sent)

    monkeypatch.setattr(RedisStore, "_sent_replies", counted)
    store = RedisStore(redis_url)
    store.ensure(P)
    contacts = [f"w{i}@acme.com" for i in range(40)]
    store.send_events(
        orjson.dumps({"contact": c, "action": "email.click", "id": f"{c}-1", "ts": START})
        for c in contacts
    )
    parts = sorted({partition_of(c, P) for c in contacts})
    assert len(parts) > 5
    config = FlowConfig(
        rules=str(RULES), source="redis", redis_url=redis_url, partitions=P, flush_ms=600_000
    )
    engine = Engine(load_rules(RULES))
    worker = WorkerLogics(RedisStore(redis_url, partitions=P))
    logics = {p: PartitionLogic(engine, config, worker) for p in parts}
    store.r.config_resetstat()
    for p, logic in logics.items():
        reply = store.r.xreadgroup(GROUP, Keys.consumer(p), {store.keys.input(p): ">"})
        values = [(p, eid.decode(), f[b"e"]) for eid, f in reply[0][1]]
        logic.on_batch([*values, (p, IDLE, b"")])  # caught up: due at once
    assert all(store.last_checkpoint(p) == 0 for p in parts)  # queued, nothing applied yet
    store.r.script_load(CHECKPOINT_LUA)  # cached, as in any run after the first checkpoint
    socket_writes.clear()  # the setup's own writes
    logics[parts[0]].notify_at()
    assert socket_writes == []  # no round trip of its own: every script was sent ahead
    assert reads == [len(parts)]  # and every reply read in one go
    stats = {
        k.removeprefix("cmdstat_"): v["calls"] for k, v in store.r.info("commandstats").items()
    }
    assert stats["mget"] == 1 and stats["evalsha"] == len(parts)
    assert stats["hmget"] == 1  # was one per partition (bench/README.md, "lat4")
    assert all(store.last_checkpoint(p) == 1 and store.pending(p) == 0 for p in parts)
    for p in parts:
        mine = [c for c in contacts if partition_of(c, P) == p]
        assert sorted(store.load_states(p, mine)) == sorted(mine)
    assert all(logic.notify_at() is None for logic in logics.values())  # nothing left to do


def test_the_partitions_trims_due_together_spread_over_the_rounds(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every partition's trim comes due in the same round (they start together): a round
    trims at most MAINTAIN_PER_ROUND of them, the next rounds the rest, each what it had
    acknowledged (bench/README.md, "live5")."""
    monkeypatch.setattr(redis_flow, "TRIM_EVERY", 3600.0)  # each partition's turn comes once
    trimmed: list[int] = []
    trim_input = RedisStore.trim_input

    def counted(self: RedisStore, p: int, minid: str) -> int:
        trimmed.append(p)
        return trim_input(self, p, minid)

    monkeypatch.setattr(RedisStore, "trim_input", counted)
    store = RedisStore(redis_url)
    store.ensure(P)
    contacts = _contacts_in_partitions("t", 6)
    config = FlowConfig(
        rules=str(RULES),
        source="redis",
        redis_url=redis_url,
        partitions=P,
        flush_ms=1,  # every round commits
        retain_seconds=0.0,
    )
    engine = Engine(load_rules(RULES))
    worker = WorkerLogics(RedisStore(redis_url, partitions=P))
    logics = {p: PartitionLogic(engine, config, worker) for p in contacts}

    def round_of(n: int) -> int:
        """One round with an event for every partition: the partitions it trimmed."""
        store.send_events(
            orjson.dumps({"contact": c, "action": "email.click", "id": f"{c}-{n}", "ts": START})
            for c in contacts.values()
        )
        for p, logic in logics.items():
            reply = store.r.xreadgroup(GROUP, Keys.consumer(p), {store.keys.input(p): ">"})
            values = [(p, eid.decode(), f[b"e"]) for eid, f in reply[0][1]]
            logic.on_batch([*values, (p, IDLE, b"")])  # caught up: due at once
        trimmed.clear()
        next(iter(logics.values())).notify_at()
        assert all(store.last_checkpoint(p) == n and store.pending(p) == 0 for p in contacts)
        return len(trimmed)

    assert MAINTAIN_PER_ROUND == 2
    trims = [round_of(n) for n in (1, 2, 3, 4)]
    assert trims == [2, 2, 2, 0]  # was all six in the first round, then none
    # Trimmed in round n, once, to what it had acknowledged then: 4 - n entries are left.
    lengths = sorted(store.r.xlen(store.keys.input(p)) for p in contacts)
    assert lengths == [1, 1, 2, 2, 3, 3]


def test_a_partition_due_once_applied_is_committed_while_the_next_is_applied(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's sweep applies its partitions one after another: a partition due once its
    entries are applied has its checkpoint written at once, so Redis commits it while the next
    partition is applied (its reply is read after the last), not after all of them."""
    store = RedisStore(redis_url)
    store.ensure(P)
    contacts = _contacts_in_partitions("e", 3)
    store.send_events(
        orjson.dumps({"contact": c, "action": "email.click", "id": f"{c}-1", "ts": START})
        for c in contacts.values()
    )
    config = FlowConfig(
        rules=str(RULES), source="redis", redis_url=redis_url, partitions=P, flush_ms=600_000
    )
    engine = Engine(load_rules(RULES))
    # Each checkpoint written as soon as it is built: these are far below SEND_AHEAD_BYTES,
    # which a live round's checkpoints fill (RedisStore.send_checkpoint; bench/README.md, "live5").
    worker = WorkerLogics(RedisStore(redis_url, partitions=P, send_ahead_bytes=0))
    logics = {p: PartitionLogic(engine, config, worker) for p in contacts}
    seen: dict[int, list[int]] = {}  # partition -> the checkpoints Redis held when applied
    apply = PartitionLogic.apply

    def watched(self: PartitionLogic, entries: list[Any], now: float) -> None:
        before = [q for q in contacts if q in seen]  # applied before this one
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
            store.last_checkpoint(q) == 1 for q in before
        ):
            time.sleep(0.005)
        seen[self.p] = [store.last_checkpoint(q) for q in before]
        apply(self, entries, now)

    monkeypatch.setattr(PartitionLogic, "apply", watched)
    store.r.script_load(CHECKPOINT_LUA)  # cached, as in any run after the first checkpoint
    for p, logic in logics.items():
        reply = store.r.xreadgroup(GROUP, Keys.consumer(p), {store.keys.input(p): ">"})
        values = [(p, eid.decode(), f[b"e"]) for eid, f in reply[0][1]]
        logic.on_batch([*values, (p, IDLE, b"")])  # caught up: due at once
    next(iter(logics.values())).notify_at()
    assert sorted(len(held) for held in seen.values()) == [0, 1, 2]
    assert all(held == [1] * len(held) for held in seen.values())  # committed before the next
    assert all(store.last_checkpoint(p) == 1 and store.pending(p) == 0 for p in contacts)


def test_a_run_leaves_the_garbage_collector_as_it_found_it(redis_url: str) -> None:
    """The live flow freezes its heap and turns automatic full collections off while it runs
    (flows.heap); a process that goes on after the run gets both back."""
    thresholds = gc.get_threshold()
    send(redis_url, list(generate_events(200, 3000, seed=5, start=START, days=3)))
    run_in_process(redis_url)
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0


def test_a_due_partition_takes_siblings_due_within_half_a_flush_along(redis_url: str) -> None:
    """Deadlines are staggered (flush_ms after each partition's own last checkpoint): a
    sibling whose deadline is less than flush_ms / 2 away commits in the same round trip."""
    store = RedisStore(redis_url)
    store.ensure(P)
    config = FlowConfig(
        rules=str(RULES), source="redis", redis_url=redis_url, partitions=P, flush_ms=10_000
    )
    engine = Engine(load_rules(RULES))
    worker = WorkerLogics(RedisStore(redis_url, partitions=P))
    contacts = {}
    for i in range(200):
        contacts.setdefault(partition_of(f"s{i}@acme.com", P), f"s{i}@acme.com")
    parts = sorted(contacts)[:3]
    logics = [PartitionLogic(engine, config, worker) for _ in parts]
    for p, logic in zip(parts, logics, strict=True):
        line = {"contact": contacts[p], "action": "email.click", "id": f"s-{p}", "ts": START}
        store.send_events([orjson.dumps(line)])
        reply = store.r.xreadgroup(GROUP, Keys.consumer(p), {store.keys.input(p): ">"})
        logic.on_batch([(p, eid.decode(), f[b"e"]) for eid, f in reply[0][1]])
    logics[0].notify_at()  # applies all three; none is due for 10 s
    assert [store.last_checkpoint(p) for p in parts] == [0, 0, 0]
    now = time.time()
    for logic, deadline in zip(logics, (now - 1, now + 4, now + 6), strict=True):
        logic.deadline = deadline
    worker.commit_due(now)
    assert [store.last_checkpoint(p) for p in parts] == [1, 1, 0]
    assert logics[2].deadline is not None and logics[1].deadline is None


def test_at_the_end_of_input_records_committed_on_the_way_are_handed_out(
    redis_url: str, tmp_path: Path
) -> None:
    """The end-of-input checkpoint may find the partition due and commit it on the way (its
    worker's run, with ``keep``): with ``out`` set, those records are in on_eof's output, not
    left behind in ``ready`` for a callback that never comes."""
    contact = "eof@acme.com"
    store = RedisStore(redis_url)
    store.ensure(P)
    store.send_events(
        [
            orjson.dumps(
                {"contact": contact, "action": "email.click", "id": f"f-{i}", "ts": START + i}
            )
            for i in range(15)
        ]
    )
    p = partition_of(contact, P)
    config = FlowConfig(
        rules=str(RULES),
        source="redis",
        redis_url=redis_url,
        partitions=P,
        flush_ms=10_000,
        out=str(tmp_path),
        tail=False,
        stop=threading.Event(),
    )
    logic = PartitionLogic(Engine(load_rules(RULES)), config)
    reply = store.r.xreadgroup(GROUP, Keys.consumer(p), {store.keys.input(p): ">"})
    logic.on_batch([(p, eid.decode(), fields[b"e"]) for eid, fields in reply[0][1]])
    logic.notify_at()  # applied; not due for 10 s
    assert store.last_checkpoint(p) == 0
    fire = logic.advance_clock

    def slow_timers(t: float) -> None:
        fire(t)
        logic.deadline = time.time() - 1  # firing the timers outlasted the flush deadline

    logic.advance_clock = slow_timers  # type: ignore[method-assign]
    out, _ = logic.on_eof()
    assert store.last_checkpoint(p) == 1
    lines = {
        kind: [orjson.loads(line) for _, block in group for line in block.splitlines()]
        for kind in ("triggers", "changes")
        if (group := [item for item in out if item[0] == kind])
    }
    # Everything committed is in the output: the triggers (the wall clock has cooled it by
    # now) and the change log, as Redis holds them.
    assert [record["trigger"] for record in lines["triggers"]] == ["mql", "cooled"]
    assert lines["triggers"] == store.read_triggers()
    assert lines["changes"] == [record for _, _, record in store.iter_records("changes")]
    assert sum(record["kind"] == "points" for record in lines["changes"]) >= 10
    assert logic.ready == []


def test_a_backlog_is_applied_and_committed_a_group_at_a_time(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full reads of a backlog hold megabytes per partition: the worker applies and commits
    about GROUP_BYTES of input at a time instead of parsing every partition's batch first
    (which quadrupled the peak memory of a 1M-event catch-up)."""
    import flows.redis_flow as redis_flow

    monkeypatch.setattr(redis_flow, "GROUP_BYTES", 1)  # every partition is a group
    store = RedisStore(redis_url)
    store.ensure(P)
    contacts = [f"g{i}@acme.com" for i in range(60)]
    store.send_events(
        orjson.dumps({"contact": c, "action": "email.click", "id": f"{c}-1", "ts": START})
        for c in contacts
    )
    parts = sorted({partition_of(c, P) for c in contacts})
    config = FlowConfig(
        rules=str(RULES), source="redis", redis_url=redis_url, partitions=P, flush_events=1
    )
    engine = Engine(load_rules(RULES))
    worker = WorkerLogics(RedisStore(redis_url, partitions=P))
    logics = {p: PartitionLogic(engine, config, worker) for p in parts}
    for p, logic in logics.items():
        reply = store.r.xreadgroup(GROUP, Keys.consumer(p), {store.keys.input(p): ">"})
        logic.on_batch([(p, eid.decode(), f[b"e"]) for eid, f in reply[0][1]])
    store.r.config_resetstat()
    logics[parts[0]].notify_at()
    stats = {
        k.removeprefix("cmdstat_"): v["calls"] for k, v in store.r.info("commandstats").items()
    }
    assert stats["mget"] == len(parts)  # one group, one load, one commit per partition
    assert all(store.last_checkpoint(p) == 1 and store.pending(p) == 0 for p in parts)


def test_an_entry_with_bad_and_blank_lines_scores_the_rest_in_order(redis_url: str) -> None:
    """Each bad line of an entry is a dead letter naming its line; blank ones are skipped."""
    store = RedisStore(redis_url)
    store.ensure(P)
    contact = "lines@acme.com"
    p = partition_of(contact, P)

    def line(n: int, action: str = "page.hit") -> bytes:
        return orjson.dumps(
            {
                "contact": contact,
                "action": action,
                "ts": 1_780_000_000 + n,
                "id": f"{contact}-{n}",
                "props": {"url": "https://www.acme.com/blog/post"},
            }
        )

    payload = b"\n".join(
        [
            line(1),
            b"",
            b"   \r",
            b'{"contact": "x", "action": ',
            line(2, "made.up"),
            line(3) + b"\r",
            b"[1, 2]",
            line(4),
            b"",
        ]
    )
    config = FlowConfig(rules=str(RULES), source="redis", redis_url=redis_url, partitions=P)
    logic = PartitionLogic(Engine(load_rules(RULES)), config)
    logic.on_batch([(p, "1-0", payload)])
    logic.flush()

    dead = store.read_dead()
    assert [(d["position"], d["code"]) for d in dead] == [
        (f"{logic.stream}/1-0/3", "invalid_json"),
        (f"{logic.stream}/1-0/4", "unknown_action"),
        (f"{logic.stream}/1-0/6", "not_an_object"),
    ]
    changes = [rec for _, _, rec in store.iter_records("changes")]
    assert [rec["event_id"] for rec in changes if rec["kind"] == "points"] == [
        f"{contact}-1",
        f"{contact}-3",
        f"{contact}-4",
    ]
    assert logic.scored == 3


def test_an_oversized_line_is_dead_lettered_with_its_first_kib_and_its_size(
    redis_url: str,
) -> None:
    store = RedisStore(redis_url)
    store.ensure(P)
    huge = b'{"contact": "c-1", "action": "page.hit", "props": {"pad": "' + b"x" * 200_000 + b'"}}'
    config = FlowConfig(rules=str(RULES), source="redis", redis_url=redis_url, partitions=P)
    logic = PartitionLogic(Engine(load_rules(RULES)), config)
    logic.on_batch([(0, "1-0", b"[1]\n" + huge)])
    logic.flush()
    dead = store.read_dead()
    assert [(d["position"], d["code"]) for d in dead] == [
        (f"{logic.stream}/1-0/0", "not_an_object"),
        (f"{logic.stream}/1-0/1", "too_large"),
    ]
    assert dead[1]["raw"] == huge[:1024].decode() and dead[1]["size"] == len(huge)
    assert "size" not in dead[0]
