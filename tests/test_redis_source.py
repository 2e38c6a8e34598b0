"""RedisStreamSource through real Bytewax runs against a real redis-server: every entry of
every partition, pending entries re-read after a crash, lost replies, restarts, Cluster."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from conftest import TcpProxy
from redis_server import RedisServer

from flows.redis_io import IDLE, Item, RedisStreamSource
from state.keys import GROUP, Keys, partition_of
from state.redis_store import RedisStore

P = 4


def event(contact: str, n: int = 0) -> bytes:
    return orjson.dumps({"contact": contact, "action": "page.hit", "id": f"{contact}/{n}"})


@pytest.fixture
def store(redis_url: str) -> RedisStore:
    s = RedisStore(redis_url)
    s.ensure(P)
    return s


def all_entry_ids(store: RedisStore) -> set[tuple[str, str]]:
    """``(partition, entry id)``: ids are unique per stream only."""
    return {(str(p), eid) for p in range(P) for eid, _ in store.iter_stream(store.keys.input(p))}


def run(source: RedisStreamSource, crash_after: int | None = None) -> list[Item]:
    """One Bytewax run of source -> capture; ``crash_after`` items, a step raises mid-run."""
    out: list[Item] = []
    flow = Dataflow("redis_source_test")
    stream = op.input("in", flow, source)
    if crash_after is not None:
        seen = [0]

        def crash(item: Item) -> Item:
            seen[0] += 1
            if seen[0] > crash_after:
                raise RuntimeError("simulated crash")
            return item

        stream = op.map("crash", stream, crash)
    op.output("out", stream, TestingSink(out))
    run_main(flow)
    return out


def test_reads_every_event_of_every_partition_keyed_by_partition(store: RedisStore) -> None:
    lines = [event(f"c-{i % 50}", i) for i in range(1000)]
    sent = store.send_events(lines, batch=20)
    items = run(RedisStreamSource(store.url, store.keys, tail=False, count=7))

    assert len(items) == sent.entries
    assert len({(part, eid) for part, (eid, _) in items}) == sent.entries
    received = []
    for part, (_, payload) in items:
        for line in payload.split(b"\n"):
            assert partition_of(orjson.loads(line)["contact"], P) == int(part)
            received.append(line)
    assert sorted(received) == sorted(lines)
    # the source never acknowledges: everything waits for the checkpoint
    assert [store.pending(p) for p in range(P)] == [
        len(list(store.iter_stream(store.keys.input(p)))) for p in range(P)
    ]


def test_crashed_run_rereads_its_pending_entries_then_new_ones(store: RedisStore) -> None:
    store.send_events([event(f"c-{i}") for i in range(400)], batch=10)
    with pytest.raises(Exception, match="crash") as crashed:
        run(RedisStreamSource(store.url, store.keys, tail=False, count=5), crash_after=3)
    causes = []
    err: BaseException | None = crashed.value
    while err is not None:
        causes.append(str(err))
        err = err.__cause__
    assert "simulated crash" in causes  # Bytewax wraps the step's exception
    delivered = sum(store.pending(p) for p in range(P))
    assert delivered > 3  # read from Redis, never checkpointed

    store.send_events([event(f"late-{i}") for i in range(40)], batch=10)
    items = run(RedisStreamSource(store.url, store.keys, tail=False))
    ids = [(part, eid) for part, (eid, _) in items]
    assert len(ids) == len(set(ids))  # each entry once, the pending ones included
    assert set(ids) == all_entry_ids(store)

    # Checkpoint (ack) the entries of partitions 0 and 1: only the rest comes back.
    acked: set[tuple[str, str]] = set()
    for p in (0, 1):
        mine = [eid for part, (eid, _) in items if part == str(p)]
        store.checkpoint(p, 1, ack_ids=mine)
        acked |= {(str(p), eid) for eid in mine}
    again = run(RedisStreamSource(store.url, store.keys, tail=False))
    assert {(part, eid) for part, (eid, _) in again} == all_entry_ids(store) - acked
    assert {part for part, _ in again} == {"2", "3"}


def test_a_lost_read_reply_is_recovered_from_the_pending_list(
    store: RedisStore, tcp_proxy: Callable[..., TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    store.send_events([event(f"c-{i}") for i in range(200) if partition_of(f"c-{i}", P) == 0], 5)
    expected = {eid for eid, _ in store.iter_stream(store.keys.input(0))}
    proxy = tcp_proxy()
    source = RedisStreamSource(proxy.url, store.keys, [0], tail=False, count=1000)
    part = source.build_part("in", "0", None)
    # Redis delivers the entries (they become pending) but the reply never arrives.
    proxy.arm("drop_reply", marker=b"$1\r\n>\r\n", committed=lambda: store.pending(0) > 0)
    with caplog.at_level(logging.INFO, logger="leadscore.redis"):
        assert part.next_batch() == []
        assert proxy.fired.is_set()
        assert part.next_awake() is not None  # backing off
        got = part.next_batch()
        with pytest.raises(StopIteration):
            part.next_batch()
    assert {eid for _, (eid, _) in got} == expected
    assert len(got) == len(expected)
    assert "read failed" in caplog.text and "re-read" in caplog.text
    part.close()


def test_source_waits_out_a_redis_crash_without_failing(
    aof_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(aof_server.url)
    keys = store.ensure(1)
    store.send_events([event("a"), event("b")], batch=1)
    part = RedisStreamSource(aof_server.url, keys, max_backoff=0.05).build_part("in", "0", None)
    first = part.next_batch()
    assert len(first) == 2

    assert aof_server.proc is not None
    aof_server.proc.kill()
    aof_server.proc.wait()
    aof_server.proc = None
    with caplog.at_level(logging.WARNING, logger="leadscore.redis"):
        assert part.next_batch() == []
        assert part.next_batch() == []
    assert part.next_awake() is not None
    # One warning per back-off step, not per failure: max_backoff=0.05 is the first step.
    assert caplog.text.count("read failed") == 1
    assert "further failures are not logged" in caplog.text

    aof_server.start()
    assert store.pending(0) == 2  # the AOF kept the delivery: no re-read of in-flight entries
    store.send_events([event("c")], batch=1)
    with caplog.at_level(logging.INFO, logger="leadscore.redis"):
        after = part.next_batch()
    assert [orjson.loads(payload)["contact"] for _, (_, payload) in after] == ["c"]
    awake = part.next_awake()  # no back-off any more: polled again at once
    assert awake is None or awake <= datetime.now(UTC)
    assert "reachable again after 2 failed reads" in caplog.text
    part.close()


def test_pending_entries_deleted_from_the_stream_are_acked_not_emitted(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    key = store.keys.input(0)
    ids = [store.r.xadd(key, {"e": event(f"x{i}")}).decode() for i in range(3)]
    store.r.xreadgroup(GROUP, Keys.consumer(0), {key: ">"})  # a previous run read them
    store.r.xdel(key, ids[1])
    part = RedisStreamSource(store.url, store.keys, [0], tail=False).build_part("in", "0", None)
    with caplog.at_level(logging.WARNING, logger="leadscore.redis"):
        got = part.next_batch()
    assert [eid for _, (eid, _) in got] == [ids[0], ids[2]]
    assert store.pending(0) == 2
    assert "deleted from the stream" in caplog.text


def test_foreign_entries_are_passed_on_for_dead_lettering(store: RedisStore) -> None:
    store.r.xadd(store.keys.input(2), {"event": b'{"contact": "z"}', "via": "other"})
    items = run(RedisStreamSource(store.url, store.keys, [2], tail=False))
    assert [orjson.loads(payload) for _, (_, payload) in items] == [
        {"event": '{"contact": "z"}', "via": "other"}
    ]


def test_a_missing_consumer_group_is_recreated(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    key = store.keys.input(1)
    store.r.xgroup_destroy(key, GROUP)  # e.g. Redis restarted without persistence
    store.r.xadd(key, {"e": event("c-1")})
    with caplog.at_level(logging.WARNING, logger="leadscore.redis"):
        items = run(RedisStreamSource(store.url, store.keys, [1], tail=False))
    assert len(items) == 1
    assert "consumer group leadscore missing" in caplog.text


def test_partitions_argument(store: RedisStore) -> None:
    keys = store.keys
    assert RedisStreamSource(store.url, keys).list_parts() == ["0", "1", "2", "3"]
    assert RedisStreamSource(store.url, keys, P).list_parts() == ["0", "1", "2", "3"]
    assert RedisStreamSource(store.url, keys, [3, 1, 3]).list_parts() == ["1", "3"]
    with pytest.raises(ValueError, match="partitions=8"):
        RedisStreamSource(store.url, keys, 8)
    with pytest.raises(ValueError, match=r"\[4\] outside"):
        RedisStreamSource(store.url, keys, [0, 4])
    assert RedisStreamSource(store.url, keys).build_part("in", "0", None).snapshot() is None


def test_stop_event_ends_a_tailing_run(store: RedisStore) -> None:
    store.send_events([event(f"c-{i}") for i in range(100)], batch=10)
    stop = threading.Event()
    out: list[Any] = []
    flow = Dataflow("stoppable")
    stream = op.input("in", flow, RedisStreamSource(store.url, store.keys, stop=stop))
    op.output("out", op.map("stop", stream, lambda x: (stop.set(), x)[1]), TestingSink(out))
    runner = threading.Thread(target=run_main, args=(flow,), daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive()
    assert out  # it read, then ended cleanly although tail=True


def test_mark_idle_says_once_per_catch_up_that_a_partition_has_read_everything(
    store: RedisStore,
) -> None:
    """A read that returns fewer entries than ``count`` got everything there was: the marker
    follows its entries in the same batch. A full read may have left some: the marker waits
    for a short or an empty read. Said once per catch-up, not on every idle poll."""
    mine = [f"c-{i}" for i in range(200) if partition_of(f"c-{i}", P) == 1]
    store.send_events([event(c, n) for n, c in enumerate(mine[:5])], batch=1)  # 5 entries
    source = RedisStreamSource(store.url, store.keys, [1], mark_idle=True, count=2)
    part = source.build_part("in", "1", None)

    def ids(batch: list[Item]) -> list[str]:
        return [eid if eid == IDLE else orjson.loads(p)["id"] for _, (eid, p) in batch]

    assert ids(part.next_batch()) == [f"{mine[0]}/0", f"{mine[1]}/1"]  # full: maybe more
    assert ids(part.next_batch()) == [f"{mine[2]}/2", f"{mine[3]}/3"]
    assert ids(part.next_batch()) == [f"{mine[4]}/4", IDLE]  # short: caught up
    assert part.next_batch() == []  # ...said once, not on every idle poll
    store.send_events([event(mine[0], 99)])
    assert ids(part.next_batch()) == [f"{mine[0]}/99", IDLE]  # and again after the next one
    assert part.next_batch() == []
    store.send_events([event(mine[1], n) for n in (100, 101)], batch=1)
    assert ids(part.next_batch()) == [f"{mine[1]}/100", f"{mine[1]}/101"]  # exactly count
    assert part.next_batch() == [("1", (IDLE, b""))]  # the empty read says it
    assert part.next_batch() == []
    part.close()


def test_a_drain_run_never_marks_idle(store: RedisStore) -> None:
    """tail=False ends at the first empty read; timers then follow on_eof, not a marker."""
    store.send_events([event(f"c-{i}", i) for i in range(40) if partition_of(f"c-{i}", P) == 1])
    source = RedisStreamSource(store.url, store.keys, [1], mark_idle=True, tail=False)
    items = run(source)
    assert items and all(eid != IDLE for _, (eid, _) in items)


@pytest.mark.cluster
def test_source_reads_from_redis_cluster(redis_cluster: str) -> None:
    store = RedisStore(redis_cluster, cluster=True, prefix="src")
    keys = store.ensure(P)
    lines = [event(f"c-{i}") for i in range(300)]
    store.send_events(lines, batch=10)
    items = run(RedisStreamSource(redis_cluster, keys, cluster=True, tail=False))
    received = [line for _, (_, payload) in items for line in payload.split(b"\n")]
    assert sorted(received) == sorted(lines)


def _drain(parts: list[Any]) -> None:
    """Poll every partition until each has read everything (an empty poll each)."""
    for _ in range(4):
        for part in parts:
            part.next_batch()


def test_one_read_of_an_idle_worker_covers_all_of_its_streams(store: RedisStore) -> None:
    source = RedisStreamSource(store.url, store.keys, mark_idle=True)
    parts = [source.build_part("in", str(p), None) for p in range(P)]  # one worker thread
    _drain(parts)
    assert [store.pending(p) for p in range(P)] == [0] * P
    late = next(f"c-{i}" for i in range(100) if partition_of(f"c-{i}", P) == 3)
    store.send_events([event(late, 7)])

    # Polls of the other partitions read every stream at once (one read per sweep: some of
    # them hand out what a sibling's read found, here nothing): partition 3's entry is
    # delivered now...
    for _ in range(2):
        for part in parts[:3]:
            assert part.next_batch() == []
    assert store.pending(3) == 1
    # ...and handed out by partition 3's next poll, exactly once.
    got = parts[3].next_batch()
    assert [orjson.loads(p)["id"] for _, (_, p) in got[:-1]] == [f"{late}/7"]
    assert got[-1] == ("3", (IDLE, b""))  # a short read: caught up with it
    assert all(part.next_batch() == [] for part in parts)
    for part in parts:
        part.close()


def test_a_sweep_hands_out_everything_its_read_found(store: RedisStore) -> None:
    # Bytewax polls a worker's partitions once per activation, in the order of their keys
    # (strings: "0", "1", "10", ..., "9"), and runs the steps downstream after the sweep.
    # Entries that a read in the middle of a sweep found for partitions already polled waited
    # for the next sweep: a second round of the flow's work and checkpoints for every
    # activation, and live entries held up by it (bench/README.md, "lat").
    source = RedisStreamSource(store.url, store.keys, mark_idle=True, block_ms=5)
    order = sorted(range(P), key=str)
    parts = [source.build_part("in", str(p), None) for p in order]  # one worker thread

    def sweep() -> dict[int, list[Item]]:
        return {p: part.next_batch() for p, part in zip(order, parts, strict=True)}

    def reads() -> int:
        return int(store.r.info("commandstats")["cmdstat_xreadgroup"]["calls"])

    for _ in range(3):
        sweep()  # caught up: every partition has read everything and said so
    for _ in range(3):
        contacts = {}
        for i in range(1000):
            contacts.setdefault(partition_of(f"c-{i}", P), f"c-{i}")
            if len(contacts) == P:
                break
        store.send_events([event(c, 1) for c in contacts.values()])
        before = reads()
        got = sweep()
        assert reads() - before == 1  # one read for the worker's streams...
        for p, items in got.items():  # ...whose entries every partition hands out at once
            assert [orjson.loads(v)["id"] for _, (_, v) in items[:-1]] == [f"{contacts[p]}/1"]
            assert items[-1] == (str(p), (IDLE, b""))
        assert all(items == [] for items in sweep().values())  # each once
    for part in parts:
        part.close()


def test_a_read_woken_by_a_burst_takes_all_of_it(store: RedisStore) -> None:
    # A blocking read returns as soon as the first entry of a burst lands: Redis serves the
    # blocked reader right after the XADD that woke it, before the rest of the producer's
    # pipeline. What came after it waited a whole round of the flow (apply, checkpoint) for
    # the next sweep; one more read, not blocking, hands the whole burst out in this sweep.
    source = RedisStreamSource(store.url, store.keys, mark_idle=True, block_ms=5)
    order = sorted(range(P), key=str)
    parts = [source.build_part("in", str(p), None) for p in order]  # one worker thread
    _drain(parts)
    parts[0]._worker.block_ms = 20_000  # from now on the idle read waits for the burst
    contacts: dict[int, str] = {}
    for i in range(1000):
        contacts.setdefault(partition_of(f"c-{i}", P), f"c-{i}")
        if len(contacts) == P:
            break
    got: dict[int, list[Item]] = {}

    def sweep() -> None:
        got.update({p: part.next_batch() for p, part in zip(order, parts, strict=True)})

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    deadline = time.monotonic() + 30
    while store.r.info("clients")["blocked_clients"] < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert store.r.info("clients")["blocked_clients"] == 1  # the sweep's read is waiting
    store.send_events([event(c, 1) for c in contacts.values()])  # one pipeline of P XADDs
    sweeper.join(timeout=30)
    assert not sweeper.is_alive()
    for p, items in got.items():  # every partition hands its entry out in this one sweep
        assert [orjson.loads(v)["id"] for _, (_, v) in items[:-1]] == [f"{contacts[p]}/1"]
        assert items[-1] == (str(p), (IDLE, b""))
    for part in parts:
        part.close()


def test_partitions_sharing_reads_are_polled_at_every_sweep(store: RedisStore) -> None:
    # After an empty poll Bytewax waits 1 ms (judged from the sweep's start) unless
    # next_awake says otherwise: a sweep whose first read blocked until an entry came would
    # skip the partitions it read for, and they would hand out their entries a sweep late.
    source = RedisStreamSource(store.url, store.keys, mark_idle=True, block_ms=5)
    parts = [source.build_part("in", str(p), None) for p in range(P)]
    _drain(parts)
    for part in parts:
        assert part.next_batch() == []
        awake = part.next_awake()
        assert awake is not None and awake <= datetime.now(UTC)
        part.close()


def test_entries_read_for_a_sibling_are_handed_out_when_stopping(store: RedisStore) -> None:
    stop = threading.Event()
    source = RedisStreamSource(store.url, store.keys, [0, 1], stop=stop)
    parts = [source.build_part("in", str(p), None) for p in (0, 1)]
    _drain(parts)
    a = next(f"c-{i}" for i in range(100) if partition_of(f"c-{i}", P) == 0)
    b = next(f"c-{i}" for i in range(100) if partition_of(f"c-{i}", P) == 1)
    store.send_events([event(a), event(b)])
    got = parts[0].next_batch() or parts[0].next_batch()  # the first may be a sibling's []
    assert [part for part, _ in got] == ["0"]  # and "1" was read too
    stop.set()
    assert [part for part, _ in parts[1].next_batch()] == ["1"]  # what was read goes on
    for part in parts:
        with pytest.raises(StopIteration):
            part.next_batch()
        part.close()


def test_pending_entries_of_the_old_per_partition_consumer_are_taken_over(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A version that read partition p as consumer p{p} crashed: its pending entries are
    re-read (once) by the shared consumer, and the old consumer goes."""
    store.send_events([event(f"c-{i}") for i in range(200)], batch=5)
    old = {}
    for p in range(P):
        key = store.keys.input(p)
        reply = store.r.xreadgroup(GROUP, Keys.legacy_consumer(p), {key: ">"}, count=3)
        old[p] = {eid.decode() for eid, _ in reply[0][1]}
    with caplog.at_level(logging.INFO, logger="leadscore.redis"):
        items = run(RedisStreamSource(store.url, store.keys, tail=False))
    ids = [(part, eid) for part, (eid, _) in items]
    assert len(ids) == len(set(ids)) == len(all_entry_ids(store))
    for p in range(P):
        mine = [eid for part, eid in ids if part == str(p)]
        assert set(mine[:3]) == old[p]  # the old consumer's entries first, as before
        consumers = store.r.xinfo_consumers(store.keys.input(p), GROUP)
        assert [c["name"] for c in consumers] == [Keys.consumer(p).encode()]
    assert "moved 3 pending entries of old consumer p0" in caplog.text
