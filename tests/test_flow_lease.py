"""Several flow processes on one deployment: one flow lease, fenced checkpoints, lost peers.

Real redis-server, real flow processes (``python -m bytewax.run flows.scoring:flow``). Two
independent flows on one Redis used to read as the same consumer and commit over each other
(contacts missing, triggers doubled, entries left pending) while both exited 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis
from bytewax.testing import cluster_main
from redis_server import free_port
from test_redis_flow import (
    FLOW_CMD,
    RULES,
    START,
    FlowProcess,
    P,
    Snapshot,
    assert_same_results,
    progress,
    send,
    with_db,
)

from flows.redis_flow import PartitionLogic
from flows.scoring import FlowConfig, build_flow
from leadscore.engine import Engine
from leadscore.generate import generate_events
from leadscore.rules import load_rules
from state.keys import GROUP, Keys, partition_of
from state.lease import FlowLease, LeaseHeld, LeaseLost
from state.redis_store import CheckpointConflict, Fenced, RedisStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def events_20k() -> list[bytes]:
    return list(generate_events(2000, 20_000, seed=5, start=START, days=30))


def wait_for(done: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- the store


def test_a_checkpoint_with_a_token_that_is_not_the_fence_writes_nothing(redis_url: str) -> None:
    keys = Keys("ls", P)
    old = FlowLease(redis_url, ttl=5)
    old_token = old.acquire(range(P), keys.fence)
    old.release()
    new = FlowLease(redis_url, ttl=5)
    new_token = new.acquire(range(P), keys.fence)
    assert new_token == old_token + 1
    with RedisStore(redis_url) as writer:
        writer.ensure(P)
        writer.fence_token = old_token  # a process that lost the lease and does not know it
        with pytest.raises(Fenced, match="another flow holds it"):
            writer.checkpoint(3, 1, states={"c": b"stale"}, triggers=[b'{"t":1}'])
        client = redis.Redis.from_url(redis_url)
        assert client.get(keys.state(3, "c")) is None
        assert client.xlen(keys.triggers(3)) == 0
        assert client.get(keys.checkpoint(3)) is None
        writer.fence_token = new_token
        assert writer.checkpoint(3, 1, states={"c": b"fresh"})
        assert client.get(keys.state(3, "c")) == b"fresh"
    new.release()
    old.close()
    new.close()


def test_a_second_lease_is_refused_while_the_first_is_held_and_taken_once_released(
    redis_url: str,
) -> None:
    keys = Keys("ls", P)
    first = FlowLease(redis_url, ttl=5, holder="box-a pid 1")
    first.acquire(range(P), keys.fence)
    second = FlowLease(redis_url, ttl=5, holder="box-b pid 2")
    with pytest.raises(LeaseHeld, match="box-a pid 1"):
        second.acquire(range(P), keys.fence, wait=False)
    first.release()
    assert second.acquire(range(P), keys.fence, wait=False) == first.token + 1  # type: ignore[operator]
    assert not first._renew()  # the old holder's next heartbeat finds another token
    with pytest.raises(LeaseLost, match="taken over"):
        first.check()
    second.release()
    first.close()
    second.close()


def test_a_lease_not_renewed_lapses_after_its_ttl(redis_url: str) -> None:
    keys = Keys("ls", P)
    gone = FlowLease(redis_url, ttl=1, holder="box-a pid 1")
    gone.acquire(range(P), keys.fence)
    gone._done.set()  # its heartbeat stops, as when the process is killed
    standby = FlowLease(redis_url, ttl=1, holder="box-b pid 2")
    started = time.monotonic()
    standby.acquire(range(P), keys.fence, poll=0.05)
    assert time.monotonic() - started > 0.3  # it waited for the lapse
    with pytest.raises(LeaseLost, match="renew"):
        time.sleep(max(0.0, gone.valid_until - time.monotonic()) + 0.01)
        gone.check()  # and the old holder knows it may not read any more
    standby.release()
    gone.close()
    standby.close()


# --------------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_two_independent_flows_on_one_redis_give_the_single_flow_result(
    redis_url: str, events_20k: list[bytes], tmp_path: Path
) -> None:
    """Both started, then events arrive live: the second flow stands by while the first
    scores everything, both stop with SIGTERM and exit 0, and Redis holds exactly one flow's
    result. (Before the lease both read as one consumer and committed over each other.)"""
    # Without decay the result depends on the events alone, not on when a live clock fired
    # a timer: a live run and a drained reference must then agree exactly.
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "".join(line for line in RULES.read_text().splitlines(True) if "decay:" not in line)
    )
    reference = with_db(redis_url, 1)
    send(reference, events_20k, batch=5)
    config = FlowConfig(
        rules=str(rules),
        source="redis",
        redis_url=reference,
        partitions=P,
        tail=False,
        stop=threading.Event(),
    )
    cluster_main(build_flow(config), [], 0, worker_count_per_proc=1)
    expected = Snapshot.read(reference)

    send(redis_url, [])
    flows = [
        FlowProcess(
            tmp_path / f"flow{i}.log",
            redis_url,
            LEADSCORE_FLUSH_EVENTS="200",
            LEADSCORE_RULES=str(rules),
        )
        for i in range(2)
    ]
    started = time.monotonic()
    wait_for(
        lambda: any("standing by" in f.output() for f in flows) or time.monotonic() > started + 8,
        "both flows up",
    )
    entries = 0
    for i in range(0, len(events_20k), 1000):  # live traffic, while both processes run
        entries += send(redis_url, events_20k[i : i + 1000], batch=5)
        time.sleep(0.05)
    wait_for(
        lambda: (
            ((now := progress(redis_url)).acked == entries and now.pending == 0)
            or any(f.proc.poll() is not None for f in flows)
        ),
        "every entry checkpointed",
        timeout=180,
    )
    codes = [f.finish(signal.SIGTERM) for f in flows]
    logs = [f.output() for f in flows]
    assert codes == [0, 0], "\n----\n".join(log[-3000:] for log in logs)
    assert any("standing by" in log for log in logs), logs
    done = progress(redis_url)
    assert done.pending == 0 and done.acked == entries
    assert_same_results(Snapshot.read(redis_url), expected)


def test_a_second_flow_told_not_to_wait_is_refused_at_once(redis_url: str, tmp_path: Path) -> None:
    send(redis_url, [b'{"contact": "a", "action": "page.hit"}'])
    first = FlowProcess(tmp_path / "first.log", redis_url)
    client = redis.Redis.from_url(redis_url)
    first.wait_until(lambda: bool(client.hget("ls:lease", "holder")), "the lease")
    second = FlowProcess(tmp_path / "second.log", redis_url, LEADSCORE_LEASE_WAIT="0")
    code = second.finish(timeout=60)
    assert code != 0
    assert "another flow holds the lease" in second.output()
    assert "pid" in second.output()
    assert first.finish(signal.SIGTERM) == 0, first.output()[-3000:]


@pytest.mark.slow
def test_kill_9_of_a_peer_stops_the_other_process_of_the_cluster_naming_it(
    redis_url: str, events_20k: list[bytes], tmp_path: Path
) -> None:
    send(redis_url, events_20k, batch=5)

    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    env = {
        "LEADSCORE_RULES": str(RULES),
        "LEADSCORE_SOURCE": "redis",
        "LEADSCORE_REDIS_URL": redis_url,
        "LEADSCORE_PARTITIONS": str(P),
        "LEADSCORE_LEASE_TTL": "3",
        "PYTHONUNBUFFERED": "1",
    }
    logs = [tmp_path / f"proc{i}.log" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [*FLOW_CMD, "-i", str(i), "-a", addresses],
                    cwd=ROOT,
                    env={**os.environ, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        wait_for(lambda: progress(redis_url).acked > 0, "the cluster's first checkpoint", 120)
        procs[1].kill()
        procs[1].wait(10)
        try:
            code = procs[0].wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("process 0 kept running after its peer died:\n" + logs[0].read_text())
        output = logs[0].read_text(errors="replace")
        assert code != 0, output[-3000:]
        assert "lost process 1" in output, output[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_checkpoint_another_writer_committed_first_stops_the_flow_instead_of_dropping(
    redis_url: str,
) -> None:
    """Its batch (states, records, acknowledgements) used to be logged as 'already committed'
    and thrown away; now the flow stops, and its input is still pending for the next run."""
    store = RedisStore(redis_url)
    store.ensure(P)
    store.send_events([orjson.dumps({"contact": "x@acme.com", "action": "email.click"})])
    p = partition_of("x@acme.com", P)
    config = FlowConfig(
        rules=str(RULES), source="redis", redis_url=redis_url, partitions=P, flush_ms=600_000
    )
    logic = PartitionLogic(Engine(load_rules(RULES)), config)
    reply = store.r.xreadgroup(GROUP, Keys.consumer(p), {store.keys.input(p): ">"})
    logic.on_batch([(p, eid.decode(), f[b"e"]) for eid, f in reply[0][1]])
    logic.worker.run()  # applied, not yet committed (flush_ms is long)
    assert store.checkpoint(p, 1)  # another writer commits sequence 1 first
    with pytest.raises(CheckpointConflict, match="another process committed"):
        logic.flush()
    assert store.pending(p) == 1  # nothing acknowledged: the entry is read again
    store.close()


def test_a_standby_flow_stopped_with_sigterm_exits_0_having_read_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    send(redis_url, [b'{"contact": "a", "action": "page.hit"}'])
    client = redis.Redis.from_url(redis_url)
    first = FlowProcess(tmp_path / "first.log", redis_url)
    first.wait_until(lambda: bool(client.hget("ls:lease", "holder")), "the lease")
    holder = client.hget("ls:lease", "holder")
    second = FlowProcess(tmp_path / "second.log", redis_url)
    second.wait_until(lambda: "standing by" in second.output(), "the standby")
    assert holder.decode() in second.output()  # it says who holds the lease
    assert second.finish(signal.SIGTERM) == 0, second.output()[-3000:]
    assert client.hget("ls:lease", "holder") == holder
    assert first.finish(signal.SIGTERM) == 0, first.output()[-3000:]
    assert client.hget("ls:lease", "holder") == b""  # released on a clean stop


def test_leadscore_run_source_stands_by_or_refuses_and_trims_by_its_options(
    redis_url: str, events_20k: list[bytes], tmp_path: Path
) -> None:
    """The command line: --no-standby refuses while a flow holds the lease (exit 1, naming
    it); a standby stopped by SIGTERM exits 0; --retain 0 --retain-entries N keeps N."""
    from test_cli_redis import LEADSCORE, cli

    send(redis_url, events_20k[:2000], batch=5)
    client = redis.Redis.from_url(redis_url)
    first = FlowProcess(tmp_path / "first.log", redis_url)
    first.wait_until(lambda: bool(client.hget("ls:lease", "holder")), "the lease")
    holder = client.hget("ls:lease", "holder").decode()
    refused = cli("run", "-r", str(RULES), "--source", redis_url, "--no-standby", timeout=60)
    assert refused.returncode == 1, refused.stderr
    assert "another flow holds the lease" in refused.stderr and holder in refused.stderr
    with (tmp_path / "standby.log").open("wb") as out:
        standby = subprocess.Popen(
            [*LEADSCORE, "run", "-r", str(RULES), "--source", redis_url],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for(lambda: "standing by" in (tmp_path / "standby.log").read_text(), "the standby")
    standby.send_signal(signal.SIGTERM)
    assert standby.wait(60) == 0, (tmp_path / "standby.log").read_text()
    assert "nothing was read" in (tmp_path / "standby.log").read_text()
    assert first.finish(signal.SIGTERM) == 0, first.output()[-3000:]

    send(redis_url, events_20k[2000:4000], batch=5)
    bad = cli("run", "-r", str(RULES), "--source", redis_url, "--drain", "--retain", "soon")
    assert bad.returncode == 1 and "--retain" in bad.stderr
    done = cli(
        "run", "-r", str(RULES), "--source", redis_url, "--drain",
        "--retain", "0", "--retain-entries", "3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [client.xlen(Keys("ls", P).input(p)) for p in range(P)] == [3] * P


@pytest.mark.slow
def test_leadscore_run_source_with_processes_is_one_supervised_cluster(
    redis_url: str, events_20k: list[bytes], tmp_path: Path
) -> None:
    """`run --source -p 2 --drain` scores everything as one cluster (one lease) and exits 0;
    live, kill -9 of one of its processes stops the other and the command exits 1 naming it."""
    from test_cli_redis import LEADSCORE, cli

    entries = send(redis_url, events_20k[:5000], batch=5)
    done = cli("run", "-r", str(RULES), "--source", redis_url, "-p", "2", "--drain", timeout=180)
    assert done.returncode == 0, done.stderr
    now = progress(redis_url)
    assert now.acked == entries and now.pending == 0
    assert "2 processes x 1 worker" in done.stderr

    log = tmp_path / "cluster.log"
    with log.open("wb") as out:
        supervisor = subprocess.Popen(
            [*LEADSCORE, "run", "-r", str(RULES), "--source", redis_url, "-p", "2"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = redis.Redis.from_url(redis_url)
    drained = client.hget("ls:lease", "proc:1")  # the drain run's process 1, gone
    try:
        wait_for(
            lambda: (
                bool(client.hget("ls:lease", "proc:0"))
                and client.hget("ls:lease", "proc:1") not in (None, drained)
            ),
            "both processes' heartbeats",
        )
        child = int(client.hget("ls:lease", "proc:1").split(b" pid ")[1].split()[0])
        os.kill(child, signal.SIGKILL)
        code = supervisor.wait(60)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    output = log.read_text(errors="replace")
    assert code == 1, output[-3000:]
    assert "process 1 of 2 failed: killed by signal 9" in output, output[-3000:]


def test_a_lease_hash_deleted_by_hand_does_not_leave_the_fences_ahead(redis_url: str) -> None:
    keys = Keys("ls", P)
    first = FlowLease(redis_url, ttl=5)
    first.acquire(range(P), keys.fence)
    first.release()
    client = redis.Redis.from_url(redis_url)
    client.delete("ls:lease")  # the counter restarts at 1, below the fences
    second = FlowLease(redis_url, ttl=5)
    token = second.acquire(range(P), keys.fence)
    assert token > first.token  # type: ignore[operator]
    with RedisStore(redis_url) as writer:
        writer.ensure(P)
        writer.fence_token = token
        assert writer.checkpoint(0, 1, states={"c": b"x"})
    second.release()


def test_a_standby_cluster_stopped_with_sigterm_exits_0(redis_url: str, tmp_path: Path) -> None:
    """`run --source -p 2` while another flow holds the lease: process 0 stands by, process 1
    waits for it; SIGTERM stops both and the command exits 0."""
    from test_cli_redis import LEADSCORE

    send(redis_url, [b'{"contact": "a", "action": "page.hit"}'])
    client = redis.Redis.from_url(redis_url)
    first = FlowProcess(tmp_path / "first.log", redis_url)
    first.wait_until(lambda: bool(client.hget("ls:lease", "holder")), "the lease")
    log = tmp_path / "standby.log"
    with log.open("wb") as out:
        standby = subprocess.Popen(
            [*LEADSCORE, "run", "-r", str(RULES), "--source", redis_url, "-p", "2"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for(lambda: "standing by" in log.read_text(), "the standby")
    standby.send_signal(signal.SIGTERM)
    assert standby.wait(60) == 0, log.read_text()
    assert first.finish(signal.SIGTERM) == 0, first.output()[-3000:]


@pytest.mark.slow
def test_a_cluster_stopped_with_sigterm_while_its_processes_start_exits_0(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGTERM right after `run --source -p 2` says it starts: the processes are still
    importing (no handler yet) and die of the forwarded signal. That is the stop the user
    asked for, not a lost peer: exit 0. (It used to exit 1, "process 1 of 2 failed: killed by
    signal 15", whenever a process was slower to start than the signal.)"""
    from test_cli_redis import LEADSCORE

    send(redis_url, [b'{"contact": "a", "action": "page.hit"}'])
    for attempt in range(3):
        log = tmp_path / f"early-{attempt}.log"
        with log.open("wb") as out:
            cluster = subprocess.Popen(
                [*LEADSCORE, "run", "-r", str(RULES), "--source", redis_url, "-p", "2"],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: "leadscore: scoring" in log.read_text(), "the start")  # noqa: B023
        cluster.send_signal(signal.SIGTERM)
        try:
            code = cluster.wait(90)
        except subprocess.TimeoutExpired:
            cluster.kill()
            pytest.fail(f"still running 90 s after SIGTERM:\n{log.read_text()}")
        assert code == 0, log.read_text()
