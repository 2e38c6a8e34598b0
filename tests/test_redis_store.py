"""RedisStore against a real redis-server: atomic checkpoints, idempotent retries under real
connection faults, restarts with AOF, MGET batching, the producer, and Redis Cluster."""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from conftest import TcpProxy
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    CrossSlotTransactionError,
    OutOfMemoryError,
)
from redis.retry import Retry
from redis_server import RedisServer

from state.keys import GROUP, LAYOUT_VERSION, Keys, partition_of
from state.redis_store import (
    CHECKPOINT_LUA,
    Checkpoint,
    CheckpointConflict,
    LiveChanged,
    MetaMismatch,
    NotInitialized,
    RedisLostCheckpoints,
    RedisStore,
    RetryPolicy,
    SentCheckpoints,
)

FAST_RETRY = RetryPolicy(attempts=60, base=0.01, cap=0.2)


def event(contact: str, n: int = 0, action: str = "page.hit") -> bytes:
    return orjson.dumps({"contact": contact, "action": action, "id": f"e-{contact}-{n}"})


def deliver(store: RedisStore, p: int) -> list[str]:
    """Read partition ``p``'s new entries as the flow does: they become pending, unacked."""
    resp = store.r.xreadgroup(GROUP, Keys.consumer(p), {store.keys.input(p): ">"}, count=10_000)
    return [eid.decode() for eid, _ in resp[0][1]] if resp else []


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


@pytest.fixture
def store(redis_url: str) -> RedisStore:
    s = RedisStore(redis_url, retry=FAST_RETRY)
    s.ensure(8)
    return s


def full_checkpoint(store: RedisStore, p: int, seq: int, ack_ids: list[str]) -> dict[str, bytes]:
    states = {f"c-{i}": f"state-{seq}-{i}".encode() for i in range(5)}
    store.checkpoint(
        p,
        seq,
        states=states,
        read_models={c: orjson.dumps({"contact": c, "total": seq}) for c in states},
        triggers=[orjson.dumps({"trigger": "mql", "seq": seq, "n": n}) for n in range(3)],
        changes=[orjson.dumps({"rule": "r", "seq": seq})],
        dead=[orjson.dumps({"reason": "invalid_json", "seq": seq})],
        ack_ids=ack_ids,
    )
    return states


# -- layout ---------------------------------------------------------------------------------


def test_ensure_writes_meta_and_groups_idempotently(redis_url: str) -> None:
    store = RedisStore(redis_url)
    keys = store.ensure(4)
    assert keys == Keys("ls", 4)
    meta = store.r.hgetall("ls:meta")
    assert meta == {b"version": str(LAYOUT_VERSION).encode(), b"partitions": b"4"}
    for p in range(4):
        groups = store.r.xinfo_groups(keys.input(p))
        assert [g["name"] for g in groups] == [GROUP.encode()]
    store.ensure(4)  # again: BUSYGROUP ignored, meta agrees
    assert RedisStore(redis_url).keys == keys  # readers discover the partition count


def test_meta_disagreement_is_refused(redis_url: str) -> None:
    RedisStore(redis_url).ensure(16)
    with pytest.raises(MetaMismatch, match=r"16 partitions.*configured for 8"):
        RedisStore(redis_url).ensure(8)
    with pytest.raises(MetaMismatch, match="configured for 8"):
        _ = RedisStore(redis_url, partitions=8).keys
    assert RedisStore(redis_url).keys.partitions == 16
    assert RedisStore(redis_url, prefix="other", partitions=8).ensure(8).partitions == 8


def test_foreign_layout_version_is_refused(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).hset("ls:meta", mapping={"version": 99, "partitions": 4})
    with pytest.raises(MetaMismatch, match="layout version 99"):
        RedisStore(redis_url).ensure(4)


def test_reader_without_meta_gets_a_clear_error(redis_url: str) -> None:
    with pytest.raises(NotInitialized, match="no ls:meta"):
        RedisStore(redis_url).read_model("c-1")


# -- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_writes_everything_in_one_transaction(store: RedisStore) -> None:
    store.send_events([event(f"c-{i}", n) for i in range(40) for n in range(3)], batch=5)
    p = 3
    ids = deliver(store, p)
    assert ids and store.pending(p) == len(ids)
    store.r.config_resetstat()

    states = full_checkpoint(store, p, 1, ids)

    stats = commandstats(store.r)
    # one script call (one round trip; NOSCRIPT then EVAL on a fresh server), one multi-key
    # MSET (never a SET per key), one XACK of exactly the ids, no WATCH/MULTI/EXEC
    assert 1 <= stats.get("evalsha", 0) + stats.get("eval", 0) <= 2
    assert "multi" not in stats and "exec" not in stats and "watch" not in stats
    assert stats["mset"] == 1 and stats["set"] == 1 and stats["xack"] == 1
    assert store.pending(p) == 0
    assert store.load_states(p, list(states)) == states
    assert store.r.get(store.keys.read_model(p, "c-1")) == orjson.dumps(
        {"contact": "c-1", "total": 1}
    )
    assert store.read_triggers() == [{"trigger": "mql", "seq": 1, "n": n} for n in range(3)]
    assert [rec for _, _, rec in store.iter_records("changes")] == [{"rule": "r", "seq": 1}]
    assert store.read_dead() == [{"reason": "invalid_json", "seq": 1}]
    assert store.last_checkpoint(p) == 1
    assert store.last_checkpoint(p + 1) == 0
    # every record stream is in the partition's own slot
    assert {k.decode() for k in store.r.keys(f"ls:{{{p}}}:*")} >= {
        store.keys.triggers(p),
        store.keys.changes(p),
        store.keys.dead(p),
        store.keys.checkpoint(p),
    }


def test_checkpoint_whose_exec_fails_leaves_nothing_behind(store: RedisStore) -> None:
    store.send_events([event(f"c-{i}") for i in range(50)])
    p = 0
    ids = deliver(store, p)
    admin = redis.Redis.from_url(store.url)
    admin.config_set("maxmemory", 1)  # noeviction: the script is refused before it runs
    try:
        with pytest.raises(OutOfMemoryError, match="maxmemory"):
            full_checkpoint(store, p, 1, ids)
    finally:
        admin.config_set("maxmemory", 0)
    k = store.keys
    assert store.r.exists(k.triggers(p), k.changes(p), k.dead(p), k.checkpoint(p)) == 0
    assert store.r.keys(f"ls:{{{p}}}:s:*") == [] and store.r.keys(f"ls:{{{p}}}:c:*") == []
    assert store.pending(p) == len(ids)  # nothing acked: the input will be replayed
    full_checkpoint(store, p, 1, ids)  # the same checkpoint succeeds once Redis has memory
    assert len(store.read_triggers()) == 3 and store.pending(p) == 0


def test_same_seq_twice_is_applied_once_and_older_seq_is_refused(store: RedisStore) -> None:
    full_checkpoint(store, 2, 1, [])
    assert store.checkpoint(2, 1, triggers=[b'{"again": true}']) is False
    assert store.read_triggers() == [{"trigger": "mql", "seq": 1, "n": n} for n in range(3)]
    assert store.checkpoint(2, 2, triggers=[b'{"next": true}']) is True
    with pytest.raises(CheckpointConflict, match="committed checkpoint is 2, got seq 1"):
        store.checkpoint(2, 1, triggers=[b"{}"])
    assert len(store.read_triggers()) == 4


def test_empty_checkpoint_still_records_its_sequence(store: RedisStore) -> None:
    assert store.checkpoint(5, 1) is True
    assert store.last_checkpoint(5) == 1


def test_large_checkpoint_chunks_commands_inside_one_script(store: RedisStore) -> None:
    states = {f"c-{i}": b"s" * 10 for i in range(12_000)}  # > the script's MSET chunk
    changes = [orjson.dumps({"i": i}) for i in range(11_000)]
    acks = [f"{i}-0" for i in range(1, 1200)]  # > its XACK chunk (unknown ids: acks nothing)
    timers = {f"c-{i}": float(i) if i % 2 else None for i in range(2500)}
    store.r.config_resetstat()
    assert store.checkpoint(1, 1, states=states, changes=changes, ack_ids=acks, timers=timers)
    stats = commandstats(store.r)
    assert stats["mset"] == 24 and stats["xack"] == 3  # 500 keys / ids per command
    assert stats["zadd"] == 3 and stats["zrem"] == 3
    assert len(store.load_timers(1)) == 1250
    assert store.r.xlen(store.keys.changes(1)) == 110  # 100 records per entry
    assert [rec["i"] for _, _, rec in store.iter_records("changes")] == list(range(11_000))
    assert len(store.load_states(1, list(states))) == 12_000


def test_changes_and_dead_letters_are_trimmed_triggers_are_not(redis_url: str) -> None:
    store = RedisStore(redis_url, changes_maxlen=1000, dead_maxlen=1000)
    store.ensure(2)
    records = [orjson.dumps({"i": i}) for i in range(1000)]
    for seq in range(1, 51):
        triggers = records if seq <= 5 else []
        store.checkpoint(0, seq, triggers=triggers, changes=records, dead=records)
    k = store.keys
    assert store.r.xlen(k.triggers(0)) == 5000  # the exactly-once output is never trimmed
    # maxlen counts records: 1000 records = 10 full entries. Approximate trimming (MAXLEN ~)
    # keeps whole radix-tree nodes (100 entries): bounded, not exact, and never below maxlen.
    for kind in ("changes", "dead"):
        kept = [rec["i"] for _, _, rec in store.iter_records(kind)]
        assert 1000 <= len(kept) <= 20_000 < 50_000
        assert kept[-1000:] == list(range(1000))  # the newest records are the ones kept


def test_change_and_dead_records_are_packed_triggers_are_not(store: RedisStore) -> None:
    changes = [orjson.dumps({"i": i}) for i in range(250)]
    dead = [orjson.dumps({"raw": "x" * 30_000, "i": i}) for i in range(5)]  # byte cap: 2 each
    triggers = [orjson.dumps({"t": i}) for i in range(3)]
    store.checkpoint(2, 1, triggers=triggers, changes=changes, dead=dead)
    k = store.keys
    payloads = [f[b"c"] for _, f in store.iter_stream(k.changes(2))]
    assert [len(p.split(b"\n")) for p in payloads] == [100, 100, 50]
    assert b"\n".join(payloads) == b"\n".join(changes)
    assert [len(f[b"d"].split(b"\n")) for _, f in store.iter_stream(k.dead(2))] == [2, 2, 1]
    assert [f[b"t"] for _, f in store.iter_stream(k.triggers(2))] == triggers
    assert [rec["i"] for rec in store.read_dead()] == list(range(5))
    assert [rec["t"] for rec in store.read_triggers()] == [0, 1, 2]


def test_a_record_with_a_newline_is_refused_before_anything_is_written(store: RedisStore) -> None:
    for kind in ("triggers", "changes", "dead"):
        with pytest.raises(ValueError, match="one line of JSON"):
            store.checkpoint(0, 1, **{kind: [b"{}", b'{"a":\n1}']})
    assert store.last_checkpoint(0) == 0


def test_timers_and_clock_are_committed_with_the_checkpoint(store: RedisStore) -> None:
    store.checkpoint(1, 1, timers={"a": 2000.5, "b": 1000.0, "c": 3000.0})
    assert store.load_timers(1) == [("b", 1000.0), ("a", 2000.5), ("c", 3000.0)]
    store.checkpoint(1, 2, timers={"a": None, "c": 500.0, "gone": None})
    assert store.load_timers(1, page=1) == [("c", 500.0), ("b", 1000.0)]
    assert store.load_timers(0) == []
    assert store.load_clock(1) is None
    store.checkpoint(1, 3, clock=1_700_000_000.123456)
    assert store.load_clock(1) == 1_700_000_000.123456  # repr: the float round-trips exactly


# -- ambiguous failures through a real faulty connection -----------------------------------


SCRIPT_CALL = b"EVALSHA"
"""What the proxy acts on: the checkpoint's one request (the script, run by its SHA)."""


def proxied_store(proxy: TcpProxy) -> RedisStore:
    # The script is cached up front so the first attempt is the EVALSHA, not a NOSCRIPT.
    redis.Redis.from_url(proxy.url).script_load(CHECKPOINT_LUA)
    return RedisStore(proxy.url, retry=FAST_RETRY)


def committed(store: RedisStore, p: int, seq: int) -> Callable[[], bool]:
    direct = redis.Redis.from_url(store.url)
    return lambda: direct.get(store.keys.checkpoint(p)) == str(seq).encode()


def test_reply_lost_after_commit_is_not_applied_twice(
    redis_url: str,
    redis_server: RedisServer,
    tcp_proxy: Callable[..., TcpProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    direct = RedisStore(redis_url)
    direct.ensure(8)
    direct.send_events([event(f"c-{i}") for i in range(30)])
    ids = deliver(direct, 4)
    proxy = tcp_proxy()
    store = proxied_store(proxy)
    proxy.arm("drop_reply", SCRIPT_CALL, committed=committed(direct, 4, 1))
    with caplog.at_level(logging.INFO, logger="leadscore.redis"):
        assert full_checkpoint(store, 4, 1, ids)
    assert proxy.fired.is_set()
    assert "had committed before its connection failed" in caplog.text
    assert "retrying in" in caplog.text
    assert direct.read_triggers() == [{"trigger": "mql", "seq": 1, "n": n} for n in range(3)]
    assert len(direct.read_dead()) == 1 and direct.pending(4) == 0


def test_request_lost_before_exec_is_applied_on_retry(
    redis_url: str, tcp_proxy: Callable[..., TcpProxy]
) -> None:
    direct = RedisStore(redis_url)
    direct.ensure(8)
    proxy = tcp_proxy()
    store = proxied_store(proxy)
    proxy.arm("drop_request", SCRIPT_CALL)
    full_checkpoint(store, 1, 1, [])
    assert proxy.fired.is_set()
    assert direct.read_triggers() == [{"trigger": "mql", "seq": 1, "n": n} for n in range(3)]
    assert direct.last_checkpoint(1) == 1


def test_stale_script_call_arriving_after_the_retry_writes_nothing(
    redis_url: str, tcp_proxy: Callable[..., TcpProxy]
) -> None:
    direct = RedisStore(redis_url)
    direct.ensure(8)
    proxy = tcp_proxy()
    store = proxied_store(proxy)
    proxy.arm("hold", SCRIPT_CALL)  # the first call is stuck "in the network"; the client retries
    full_checkpoint(store, 6, 1, [])
    assert direct.last_checkpoint(6) == 1
    # The old call finally reaches Redis on its old connection: the script finds seq 1
    # committed and answers {1 (already), 1} without writing anything.
    reply = proxy.release(until=b":1\r\n:1\r\n")
    assert reply == b"*2\r\n:1\r\n:1\r\n", reply
    assert len(direct.read_triggers()) == 3 and len(direct.read_dead()) == 1


# -- several partitions per round trip ------------------------------------------------------


def batch(p: int, seq: int, ack_ids: list[str] = ()) -> Checkpoint:  # type: ignore[assignment]
    return Checkpoint(
        p,
        seq,
        states={f"c{p}-{seq}": f"state-{p}-{seq}".encode()},
        read_models={f"c{p}-{seq}": orjson.dumps({"p": p, "seq": seq})},
        triggers=[orjson.dumps({"p": p, "seq": seq})],
        changes=[orjson.dumps({"p": p, "seq": seq, "kind": "change"})],
        ack_ids=list(ack_ids),
        timers={f"c{p}-{seq}": 1000.0 + p},
        clock=500.0 + seq,
    )


def test_checkpoint_many_commits_every_partition_like_single_checkpoints(
    store: RedisStore, socket_writes: list[int]
) -> None:
    store.send_events([event(f"c-{i}", n) for i in range(40) for n in range(3)], batch=5)
    acks = {p: deliver(store, p) for p in (1, 2, 5)}
    store.r.config_resetstat()
    store.r.script_load(CHECKPOINT_LUA)  # cached: NOSCRIPT retries are tested apart
    socket_writes.clear()
    assert store.checkpoint_many([batch(p, 1, acks[p]) for p in (1, 2, 5)]) == [True] * 3
    assert socket_writes == [3]  # one round trip
    assert commandstats(store.r)["evalsha"] == 3  # one script per partition
    for p in (1, 2, 5):
        assert store.last_checkpoint(p) == 1 and store.pending(p) == 0
        assert store.load_states(p, [f"c{p}-1"]) == {f"c{p}-1": f"state-{p}-1".encode()}
        assert store.load_timers(p) == [(f"c{p}-1", 1000.0 + p)]
        assert store.load_clock(p) == 501.0
    assert sorted((t["p"], t["seq"]) for t in store.read_triggers()) == [(1, 1), (2, 1), (5, 1)]
    # The same batch again: every partition answers "already committed", nothing is rewritten.
    assert store.checkpoint_many([batch(p, 1, acks[p]) for p in (1, 2, 5)]) == [False] * 3
    assert len(store.read_triggers()) == 3


def test_checkpoint_many_refuses_a_stale_partition_and_commits_the_others(
    store: RedisStore,
) -> None:
    """Each partition's script is its own atomic unit: the refused one writes nothing, the
    others of the same round trip commit (and are recorded), then the refusal is raised."""
    assert store.checkpoint_many([batch(3, 1), batch(4, 1)]) == [True, True]
    other = RedisStore(store.url)  # another writer moves partition 4 on to seq 3
    other.last_checkpoint(4)
    other.checkpoint_many([batch(4, 2)])
    other.checkpoint_many([batch(4, 3)])
    with pytest.raises(CheckpointConflict, match="partition 4: committed checkpoint is 3"):
        store.checkpoint_many([batch(3, 2), batch(4, 2), batch(6, 1)])
    assert store.last_checkpoint(3) == 2 and store.last_checkpoint(6) == 1
    assert store.last_checkpoint(4) == 3
    triggers = sorted((t["p"], t["seq"]) for t in store.read_triggers())
    # (4, 2) once: the other writer's; this process's refused call wrote nothing
    assert triggers == [(3, 1), (3, 2), (4, 1), (4, 2), (4, 3), (6, 1)]
    with pytest.raises(ValueError, match="one checkpoint per partition"):
        store.checkpoint_many([batch(1, 1), batch(1, 2)])


def test_checkpoints_sent_ahead_run_before_their_replies_are_read(store: RedisStore) -> None:
    """send_checkpoint writes a partition's script call at once: Redis commits it while the
    caller goes on (the flow builds the next partition's); checkpoint_many(sent=) then reads
    the replies and records the commits as it does for its own round trip."""
    store.send_events([event(f"c-{i}", n) for i in range(40) for n in range(3)], batch=5)
    acks = {p: deliver(store, p) for p in (1, 2, 5)}
    store.r.script_load(CHECKPOINT_LUA)
    store.send_ahead_bytes = 0  # each call written as soon as it is built
    sent = SentCheckpoints()
    for p in (1, 2, 5):
        store.send_checkpoint(sent, batch(p, 1, acks[p]))
    direct = redis.Redis.from_url(store.url)
    deadline = time.monotonic() + 30
    while direct.get(store.keys.checkpoint(5)) != b"1" and time.monotonic() < deadline:
        time.sleep(0.005)
    assert direct.get(store.keys.checkpoint(5)) == b"1"  # committed, its reply not read yet
    assert store.checkpoint_many(sent.batches, sent=sent) == [True] * 3
    for p in (1, 2, 5):
        assert store.last_checkpoint(p) == 1 and store.pending(p) == 0
        assert store.load_states(p, [f"c{p}-1"]) == {f"c{p}-1": f"state-{p}-1".encode()}
    assert sorted((t["p"], t["seq"]) for t in store.read_triggers()) == [(1, 1), (2, 1), (5, 1)]
    # Redis forgot the script: NOSCRIPT replies, the calls are sent again with EVAL.
    store.r.script_flush()
    sent = SentCheckpoints()
    for p in (1, 2):
        store.send_checkpoint(sent, batch(p, 2))
    assert store.checkpoint_many(sent.batches, sent=sent) == [True, True]
    assert len(store.read_triggers()) == 5
    # The next commit of the same partitions, sent ahead, is checked against what these did.
    other = RedisStore(store.url)
    other.last_checkpoint(2)
    other.checkpoint_many([batch(2, 3)])
    other.checkpoint_many([batch(2, 4)])
    sent = SentCheckpoints()
    for p in (1, 2):
        store.send_checkpoint(sent, batch(p, 3))
    with pytest.raises(CheckpointConflict, match="partition 2: committed checkpoint is 4"):
        store.checkpoint_many(sent.batches, sent=sent)
    assert store.last_checkpoint(1) == 3
    with pytest.raises(ValueError, match="sent checkpoints of partitions"):
        store.checkpoint_many([batch(1, 4)], sent=sent)


def test_checkpoints_sent_ahead_are_held_back_until_they_fill_a_write(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls below ``send_ahead_bytes`` wait for the next ones, and go together in ONE
    socket write once they reach it; what is still held when the replies are read is written
    then. Held or written, a checkpoint counts as committed only once its reply is read."""
    writes: list[int] = []
    send_packed = redis.connection.Connection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        calls = sum(bytes(c).count(b"EVALSHA") for c in command)
        if calls:  # a write of checkpoint calls (other commands go through here too)
            writes.append(calls)
        send_packed(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
    store.r.script_load(CHECKPOINT_LUA)
    direct = redis.Redis.from_url(store.url)
    store.send_ahead_bytes = 1 << 30
    sent = SentCheckpoints()
    for p in (1, 2, 3):
        store.send_checkpoint(sent, batch(p, 1))
    assert writes == [] and sent.buffered > 0  # all three held back: below the limit
    assert [direct.get(store.keys.checkpoint(p)) for p in (1, 2, 3)] == [None] * 3
    store.send_ahead_bytes = sent.buffered + 1  # the next call reaches it
    store.send_checkpoint(sent, batch(4, 1))
    assert writes == [4] and sent.buffered == 0  # the four in one write
    store.send_checkpoint(sent, batch(5, 1))  # a third of the limit: held back
    deadline = time.monotonic() + 30
    while direct.get(store.keys.checkpoint(4)) != b"1" and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [direct.get(store.keys.checkpoint(p)) for p in (1, 4, 5)] == [b"1", b"1", None]
    assert store.checkpoint_many(sent.batches, sent=sent) == [True] * 5
    assert writes == [4, 1]  # the one held back, written before its reply was read
    assert all(store.last_checkpoint(p) == 1 for p in range(1, 6)) and store.pending(5) == 0
    # Stopped with calls held back: none of them was written, nothing of them committed.
    sent = SentCheckpoints()
    store.send_checkpoint(sent, batch(1, 2))
    store.discard_sent(sent)
    assert writes == [4, 1] and store.last_checkpoint(1) == 1


def test_a_sent_ahead_checkpoint_whose_reply_is_lost_is_not_applied_twice(
    redis_url: str, tcp_proxy: Callable[..., TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    direct = RedisStore(redis_url)
    direct.ensure(8)
    proxy = tcp_proxy()
    store = proxied_store(proxy)
    store.last_checkpoint(2)  # the connection is up before the proxy is armed
    proxy.arm("drop_reply", SCRIPT_CALL, committed=committed(direct, 2, 1))
    sent = SentCheckpoints()
    with caplog.at_level(logging.INFO, logger="leadscore.redis"):
        store.send_checkpoint(sent, batch(2, 1))
        store.send_checkpoint(sent, batch(7, 1))  # may find the connection gone: sent again
        assert store.checkpoint_many(sent.batches, sent=sent) == [True, True]
    assert proxy.fired.is_set()
    assert "checkpoint p=2 seq=1 had committed before its connection failed" in caplog.text
    assert sorted((t["p"], t["seq"]) for t in direct.read_triggers()) == [(2, 1), (7, 1)]
    assert direct.last_checkpoint(2) == 1 and direct.last_checkpoint(7) == 1


def test_checkpoint_many_survives_redis_forgetting_the_script(store: RedisStore) -> None:
    assert store.checkpoint_many([batch(0, 1), batch(1, 1)]) == [True, True]
    store.r.script_flush()
    store.r.config_resetstat()
    assert store.checkpoint_many([batch(0, 2), batch(1, 2)]) == [True, True]
    stats = commandstats(store.r)
    assert stats["evalsha"] == 2 and stats["eval"] == 2  # both NOSCRIPT, both re-sent once
    store.r.config_resetstat()
    assert store.checkpoint_many([batch(0, 3), batch(1, 3)]) == [True, True]
    assert commandstats(store.r).get("eval", 0) == 0
    assert len(store.read_triggers()) == 6


def test_checkpoint_many_reply_lost_after_commit_is_not_applied_twice(
    redis_url: str, tcp_proxy: Callable[..., TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    direct = RedisStore(redis_url)
    direct.ensure(8)
    proxy = tcp_proxy()
    store = proxied_store(proxy)
    both = committed(direct, 2, 1)
    proxy.arm("drop_reply", SCRIPT_CALL, committed=lambda: both() and committed(direct, 7, 1)())
    with caplog.at_level(logging.INFO, logger="leadscore.redis"):
        assert store.checkpoint_many([batch(2, 1), batch(7, 1)]) == [True, True]
    assert proxy.fired.is_set()
    assert caplog.text.count("had committed before its connection failed") == 2
    assert sorted((t["p"], t["seq"]) for t in direct.read_triggers()) == [(2, 1), (7, 1)]


def test_load_states_many_reads_several_partitions_in_one_mget(store: RedisStore) -> None:
    store.checkpoint(1, 1, states={"a": b"s1a", "b": b"s1b"})
    store.checkpoint(6, 1, states={"a": b"s6a"})
    store.r.config_resetstat()
    found = store.load_states_many({1: ["a", "b", "x"], 6: ["a", "b"], 2: ["y"]})
    assert found == {1: {"a": b"s1a", "b": b"s1b"}, 6: {"a": b"s6a"}, 2: {}}
    assert commandstats(store.r)["mget"] == 1


# -- Redis restarts -------------------------------------------------------------------------


def test_checkpoint_rides_through_a_redis_crash_and_aof_reload(
    aof_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(aof_server.url, retry=FAST_RETRY)
    store.ensure(4)
    filler = aof_server.client()
    pipe = filler.pipeline(transaction=False)
    for i in range(2000):  # enough AOF to make the reload take a while (see key-load-delay)
        pipe.set(f"filler:{i}", i)
    pipe.execute()
    first = full_checkpoint(store, 2, 1, [])

    assert aof_server.proc is not None
    aof_server.proc.kill()  # SIGKILL: no shutdown save; only the fsynced AOF survives
    aof_server.proc.wait()
    aof_server.proc = None
    aof_server.extra = ["--key-load-delay", "200"]  # microseconds per AOF command while loading
    restarter = threading.Thread(target=aof_server.start)
    restarter.start()
    with caplog.at_level(logging.INFO, logger="leadscore.redis"):
        second = full_checkpoint(store, 2, 2, [])  # refused / LOADING until Redis is back
    restarter.join()

    assert "retrying in" in caplog.text and "succeeded after" in caplog.text
    assert first.keys() == second.keys()
    assert store.load_states(2, list(second)) == second
    assert [t["seq"] for t in store.read_triggers()] == [1, 1, 1, 2, 2, 2]
    assert store.last_checkpoint(2) == 2
    assert filler.dbsize() > 2000


def test_redis_losing_committed_checkpoints_is_detected(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "volatile").start()  # no AOF, no RDB
    try:
        store = RedisStore(server.url, retry=FAST_RETRY)
        store.ensure(2)
        assert store.last_checkpoint(1) == 0
        full_checkpoint(store, 1, 1, [])
        full_checkpoint(store, 1, 2, [])
        server.restart()  # everything is gone; this process's memory is now ahead of Redis
        store.ensure(2)
        with pytest.raises(RedisLostCheckpoints, match="holds checkpoint 0 but this process had"):
            full_checkpoint(store, 1, 3, [])
        assert store.r.exists(store.keys.checkpoint(1), store.keys.triggers(1)) == 0
        restarted = RedisStore(server.url)  # a restarted flow resumes from what Redis has
        assert restarted.last_checkpoint(1) == 0
        assert full_checkpoint(restarted, 1, 1, [])
    finally:
        server.stop()


def test_unreachable_redis_fails_after_a_bounded_number_of_attempts(redis_url: str) -> None:
    from redis_server import free_port

    from state.redis_store import StoreUnavailable

    dead = RedisStore(
        f"redis://127.0.0.1:{free_port()}/0",
        partitions=2,
        retry=RetryPolicy(attempts=3, base=0.001, cap=0.001),
    )
    with pytest.raises(StoreUnavailable, match="after 3 attempts"):
        dead.checkpoint(0, 1)


def test_password_comes_from_the_url_and_a_wrong_one_fails_fast(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "auth").start()
    try:
        server.client().config_set("requirepass", "s3cret")
        good = RedisStore(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        good.ensure(2)
        assert good.checkpoint(0, 1, states={"c": b"x"})
        bad = RedisStore(f"redis://:wrong@127.0.0.1:{server.port}/0", partitions=2)
        with pytest.raises(AuthenticationError):  # not retried: waiting does not fix it
            bad.checkpoint(0, 2)
        with pytest.raises(NotInitialized, match=r"redis://\*\*\*@127.0.0.1"):
            _ = RedisStore(f"redis://:s3cret@127.0.0.1:{server.port}/0", prefix="x").keys
    finally:
        server.stop()


def test_tls_settings_come_from_a_rediss_url(tmp_path: Path) -> None:
    """A TLS-only redis-server with a self-signed certificate, verified by the client."""
    import shutil
    import subprocess

    from redis_server import free_port

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    req = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    req += ["-nodes", "-days", "1", "-keyout", str(key), "-out", str(cert)]
    req += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(req, check=True, capture_output=True)
    port = free_port()
    exe = shutil.which("redis-server")
    assert exe is not None
    args = [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--dir", str(tmp_path), "--tls-ca-cert-file", str(cert)]
    args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}&ssl_cert_reqs=required"
        store = RedisStore(url, retry=RetryPolicy(attempts=100, base=0.02, cap=0.05))
        store.ensure(2)  # retried until the server listens
        assert store.checkpoint(1, 1, read_models={"c": b'{"total": 1}'})
        assert RedisStore(url).read_model("c") == {"total": 1}
        plain = redis.Redis(port=port, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
        with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            plain.ping()  # the server speaks TLS only: the store really used TLS
    finally:
        proc.terminate()
        proc.wait(10)


# -- loads and reads ------------------------------------------------------------------------


def test_load_states_uses_batched_mgets_and_omits_unknown_contacts(store: RedisStore) -> None:
    states = {f"c-{i}": f"s{i}".encode() for i in range(0, 2500, 2)}
    store.checkpoint(7, 1, states=states)
    store.r.config_resetstat()
    wanted = [f"c-{i}" for i in range(2500)]
    assert store.load_states(7, wanted) == states
    assert commandstats(store.r)["mget"] == 3  # 2500 contacts in batches of 1000
    assert store.load_states(7, []) == {}


def test_read_model_finds_the_contact_partition(store: RedisStore) -> None:
    contact = "jane@acme.com"
    p = partition_of(contact, 8)
    view = {"contact": contact, "total": 42.5, "grade": "A1"}
    store.checkpoint(p, 1, read_models={contact: orjson.dumps(view)})
    assert store.read_model(contact) == view
    assert store.read_model("nobody") is None


def test_iter_stream_pages_through_long_streams(store: RedisStore) -> None:
    records = [orjson.dumps({"i": i}) for i in range(2345)]
    store.checkpoint(0, 1, triggers=records)
    ids = [eid for eid, _ in store.iter_stream(store.keys.triggers(0), count=1000)]
    assert len(ids) == 2345 == len(set(ids))
    assert [t["i"] for t in store.read_triggers()] == list(range(2345))


# -- producer -------------------------------------------------------------------------------


def stream_events(store: RedisStore, p: int) -> list[list[bytes]]:
    return [fields[b"e"].split(b"\n") for _, fields in store.iter_stream(store.keys.input(p))]


def test_send_events_packs_batches_per_partition_in_order(store: RedisStore) -> None:
    lines = [event(f"c-{i % 97}", i) for i in range(3000)]
    result = store.send_events(lines, batch=100)
    assert result.events == 3000 and result.malformed == 0 and result.blank == 0
    assert sum(result.per_partition) == 3000
    entries = 0
    seen: dict[str, list[int]] = {}
    for p in range(8):
        batches = stream_events(store, p)
        entries += len(batches)
        assert all(1 <= len(b) <= 100 for b in batches)
        assert len(batches) == -(-result.per_partition[p] // 100)  # full entries but the last
        for line in (line for batch in batches for line in batch):
            obj = orjson.loads(line)
            assert partition_of(obj["contact"], 8) == p
            assert zlib.crc32(obj["contact"].encode()) % 8 == p
            seen.setdefault(obj["contact"], []).append(int(obj["id"].rsplit("-", 1)[1]))
    assert entries == result.entries
    assert sum(map(len, seen.values())) == 3000
    assert all(ns == sorted(ns) for ns in seen.values())  # per-contact order kept


def test_send_events_keeps_malformed_lines_in_partition_zero(store: RedisStore) -> None:
    bad = [
        b"not json",
        b"[1, 2]",
        b'{"contact": 42, "action": "x"}',
        b'{"action": "no contact"}',
        b'{"contact": "c-1", "action": "x"',
    ]
    good = [event("c-1"), event("c-2")]
    text = b"\n".join([good[0], b"", b"   ", bad[0]]) + b"\r\n"  # a multi-line chunk, CRLF
    result = store.send_events([text, *bad[1:], good[1].decode()], batch=3)
    assert (result.events, result.malformed, result.blank) == (7, 5, 2)
    p0 = [line for batch in stream_events(store, 0) for line in batch]
    assert set(bad) <= set(p0)  # raw, byte for byte: the flow dead-letters them
    everywhere = [line for p in range(8) for batch in stream_events(store, p) for line in batch]
    assert sorted(everywhere) == sorted([*good, *bad])


def test_send_events_rejects_a_zero_batch(store: RedisStore) -> None:
    with pytest.raises(ValueError, match="batch"):
        store.send_events([event("c")], batch=0)


# -- Redis Cluster --------------------------------------------------------------------------


@pytest.mark.cluster
def test_cluster_checkpoint_is_one_legal_transaction_per_partition(redis_cluster: str) -> None:
    store = RedisStore(redis_cluster, cluster=True, prefix="cl", retry=FAST_RETRY)
    keys = store.ensure(16)
    r = store.r
    assert isinstance(r, RedisCluster)
    owners = {r.get_node_from_key(keys.input(p)).name for p in range(16)}
    assert len(owners) == 3  # partitions are spread over the three masters
    for p in range(16):  # every key of a partition hashes to one slot
        slots = {r.keyslot(k) for k in (keys.input(p), keys.state(p, "x"), keys.checkpoint(p))}
        slots |= {r.keyslot(keys.triggers(p)), r.keyslot(keys.read_model(p, "y"))}
        assert len(slots) == 1

    contacts = [f"c-{i}" for i in range(200)]
    sent = store.send_events([event(c) for c in contacts], batch=10)
    assert sent.events == 200
    for p in range(16):
        ids = deliver(store, p)
        mine = [c for c in contacts if partition_of(c, 16) == p]
        states = {c: f"state-{c}".encode() for c in mine}
        assert store.checkpoint(
            p,
            1,
            states=states,
            read_models={c: orjson.dumps({"contact": c}) for c in mine},
            triggers=[orjson.dumps({"p": p})],
            changes=[orjson.dumps({"p": p})],
            ack_ids=ids,
        )
        assert store.checkpoint(p, 1, triggers=[b"{}"]) is False  # idempotent on Cluster too
        assert store.load_states(p, mine) == states
        assert store.pending(p) == 0
    assert store.read_model("c-7") == {"contact": "c-7"}
    assert sorted(t["p"] for t in store.read_triggers()) == list(range(16))

    # Why the hash tag matters: a transaction over two partitions is refused.
    pipe = r.pipeline(transaction=True)
    pipe.set(keys.checkpoint(0), 1)
    pipe.set(keys.checkpoint(1), 1)
    with pytest.raises(CrossSlotTransactionError):
        pipe.execute()


def test_checkpoint_survives_redis_forgetting_the_script(store: RedisStore) -> None:
    """NOSCRIPT (restart, failover, SCRIPT FLUSH) costs one EVAL with the text, then EVALSHA."""
    assert store.checkpoint(3, 1, triggers=[b'{"n": 1}'])
    store.r.script_flush()
    store.r.config_resetstat()
    assert store.checkpoint(3, 2, triggers=[b'{"n": 2}'])
    stats = commandstats(store.r)
    assert stats["eval"] == 1 and stats["evalsha"] == 1  # the NOSCRIPT reply, then EVAL
    store.r.config_resetstat()
    assert store.checkpoint(3, 3, triggers=[b'{"n": 3}'])
    assert commandstats(store.r).get("eval", 0) == 0  # cached again
    assert [t["n"] for t in store.read_triggers()] == [1, 2, 3]


def test_retries_log_one_warning_per_backoff_step_and_count_every_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from redis_server import free_port

    from state.redis_store import StoreUnavailable

    retries: list[str] = []
    dead = RedisStore(
        f"redis://127.0.0.1:{free_port()}/0",
        partitions=2,
        retry=RetryPolicy(attempts=10, base=0.001, cap=0.004),  # 0.001, 0.002, then 0.004 x 7
        on_retry=retries.append,
    )
    with (
        caplog.at_level("WARNING", logger="leadscore.redis"),
        pytest.raises(StoreUnavailable, match="after 10 attempts"),
    ):
        dead.checkpoint(0, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3, warnings
    assert "retrying in 0.00s" in warnings[0] or "0.001" in warnings[0]
    assert "every" in warnings[-1]  # the last step says it keeps going, quietly
    assert len(retries) == 9


def test_the_live_flow_counts_store_retries_in_a_prometheus_metric() -> None:
    from prometheus_client import REGISTRY
    from redis_server import free_port

    from flows.config import FlowConfig
    from flows.redis_flow import _store
    from state.redis_store import StoreUnavailable

    def retries() -> float:
        return REGISTRY.get_sample_value("leadscore_flow_redis_retries_total", {"of": "store"}) or 0

    config = FlowConfig(
        rules="", source="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0", partitions=2
    )
    store = _store(config)
    store.retry = RetryPolicy(attempts=4, base=0.001, cap=0.001)
    before = retries()
    with pytest.raises(StoreUnavailable):
        store.checkpoint(0, 1)
    assert retries() - before == 3


def test_a_moved_live_marker_refuses_the_checkpoint_and_the_others_commit(
    store: RedisStore,
) -> None:
    """A publish moved partition 4 to another generation (or holds it): its checkpoint writes
    nothing and names the marker, the other partitions of the round trip commit, and the
    writer's generation decides which keys a checkpoint writes."""
    keys = store.keys
    store.live.update({3: "", 4: ""})
    store.r.set(keys.live(4), "0:1>1:2")
    with pytest.raises(LiveChanged) as refused:
        store.checkpoint_many([batch(3, 1), batch(4, 1)])
    assert refused.value.results == [True, False] and refused.value.live == {4: "0:1>1:2"}
    assert store.last_checkpoint(3) == 1 and store.last_checkpoint(4) == 0
    assert [t["p"] for t in store.read_triggers()] == [3]
    # bound to generation 1 (what the marker now says): the state lands in its keys
    store.r.set(keys.live(4), "1:2")
    store.generations[4], store.live[4] = 1, "1:2"
    assert store.checkpoint_many([batch(4, 1)]) == [True]
    assert store.r.get(keys.at(1).state(4, "c4-1")) == b"state-4-1"
    assert store.r.get(keys.state(4, "c4-1")) is None
    assert store.load_states(4, ["c4-1"]) == {"c4-1": b"state-4-1"}
    assert store.r.zscore(keys.at(1).timers(4), "c4-1") == 1004.0
    assert store.read_model("nobody") is None
