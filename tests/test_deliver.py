"""Delivery of trigger actions: a real redis-server, real deliverers, a real HTTP receiver.

Firings are committed the way the flow commits them (`RedisStore.checkpoint`), or by the live
flow itself; the receiver on a free loopback port records what arrives and answers from a
script (500s, hangs, 4xx, 429)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis_server import free_port
from webhook_receiver import Receiver

from leadscore.deliverer import DeliverConfig, Deliverer, owner_of, replay_dead
from leadscore.delivery import (
    DeliveryConfigError,
    Plan,
    RetryPolicy,
    build_plan,
    verify,
)
from leadscore.events import format_ts
from leadscore.rules import load_rules_text
from state.keys import DELIVER_GROUP, Keys, partition_of
from state.redis_store import RedisStore

ROOT = Path(__file__).resolve().parent.parent
SALES = b"sales-secret-for-tests"
DIRECT = b"direct-secret-for-tests"
LEADSCORE = [sys.executable, "-m", "leadscore.cli"]
FAST = RetryPolicy(max_attempts=6, base=0.02, cap=0.1, max_age=3600)


def rules_for(url: str) -> str:
    return f"""
version: 1
channels:
  sales: {{webhook: "{url}/sales", secret_env: TEST_SALES_SECRET}}
  chat: {{webhook: "{url}/slack", format: slack}}
triggers:
  - id: mql
    at_least: 10
    actions:
      [{{notify: sales}}, {{add_segment: mql}}, {{webhook: "{url}/direct"}}, {{notify: chat}}]
"""


def plan_for(url: str, text: str | None = None) -> Plan:
    env = {"TEST_SALES_SECRET": SALES.decode(), "LEADSCORE_WEBHOOK_SECRET": DIRECT.decode()}
    return build_plan(load_rules_text(text or rules_for(url), "rules.yaml"), env)


def record(contact: str, n: int, actions: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "contact": contact,
        "trigger": "mql",
        "score": 10.0 + n,
        "at": format_ts(time.time()),
        "actions": actions or [{"notify": "sales"}],
        "cause": f"form.submit e-{n}: demo +10",
    }


class Firer:
    """Commits firings as the flow does: one checkpoint per firing, in order."""

    def __init__(self, url: str, partitions: int = 4) -> None:
        self.store = RedisStore(url)
        self.keys = self.store.ensure(partitions)
        self.seq: Counter[int] = Counter()
        self.fired: list[tuple[int, dict[str, Any]]] = []

    def fire(self, rec: dict[str, Any]) -> None:
        p = partition_of(rec["contact"], self.keys.partitions)
        self.seq[p] += 1
        self.store.checkpoint(p, self.seq[p], triggers=[orjson.dumps(rec)])
        self.fired.append((p, rec))

    def entries(self) -> list[tuple[int, str, dict[str, Any]]]:
        return [
            (p, eid, orjson.loads(f[b"t"]))
            for p in range(self.keys.partitions)
            for eid, f in self.store.iter_stream(self.keys.triggers(p))
        ]

    def pending(self) -> int:
        total = 0
        for p in range(self.keys.partitions):
            if not self.store.r.exists(self.keys.triggers(p)):
                continue
            with_group = self.store.r.xinfo_groups(self.keys.triggers(p))
            total += sum(g["pending"] for g in with_group if g["name"] == DELIVER_GROUP.encode())
        return total

    def undelivered(self) -> list[dict[str, Any]]:
        return [
            orjson.loads(f[b"u"])
            for p in range(self.keys.partitions)
            for _, f in self.store.iter_stream(self.keys.undelivered(p))
        ]


class Running:
    """A Deliverer on its own event loop in a thread (the process tests use subprocesses)."""

    def __init__(self, config: DeliverConfig, plan: Plan) -> None:
        self.deliverer = Deliverer(config, plan)
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.loop.run_until_complete(self.deliverer.run(self.stop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(20)
        assert not self.thread.is_alive()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def deliver(redis_url: str) -> Iterator[Any]:
    running: list[Running] = []

    def start(plan: Plan, **overrides: Any) -> Running:
        options: dict[str, Any] = {
            "redis_url": redis_url,
            "name": f"t{len(running)}",
            "policy": FAST,
            "timeout": 2.0,
            "lease_ttl": 1.5,
            "seed": 1,
        }
        options.update(overrides)
        run = Running(DeliverConfig(**options), plan)
        running.append(run)
        return run

    yield start
    for run in running:
        if run.thread.is_alive():
            run.close()


def test_exactly_the_fired_actions_arrive_signed_with_stable_unique_ids(
    redis_url: str, receiver: Receiver, deliver: Any
) -> None:
    firer = Firer(redis_url)
    actions = [
        {"notify": "sales"},
        {"add_segment": "mql"},
        {"webhook": f"{receiver.url}/direct"},
        {"notify": "chat"},
    ]
    for n in range(24):
        firer.fire(record(f"c-{n % 6}", n, actions))
    deliver(plan_for(receiver.url))
    receiver.wait(lambda: len(receiver.received()) >= 72)
    receiver.wait(lambda: firer.pending() == 0)
    time.sleep(0.2)  # nothing more arrives

    got = receiver.received()
    assert len(got) == 72 and all(r.status == 200 for r in got)
    expected = {f"ls:{p}:{eid}:{i}": (rec, i) for p, eid, rec in firer.entries() for i in (0, 2, 3)}
    assert {r.key for r in got} == set(expected)  # one per action, unique per firing
    now = time.time()
    for r in got:
        rec, index = expected[r.key]
        if r.path == "/slack":
            assert index == 3
            text = r.json["text"]
            assert set(r.json) == {"text"}
            assert f"*{rec['contact']}*" in text and "*mql*" in text and rec["cause"] in text
            assert "x-leadscore-signature" not in r.headers  # no secret_env: not signed
            continue
        secret = SALES if r.path == "/sales" else DIRECT
        assert verify(secret, r.headers["x-leadscore-signature"], r.body, now)
        assert not verify(b"wrong", r.headers["x-leadscore-signature"], r.body, now)
        assert not verify(secret, r.headers["x-leadscore-signature"], r.body + b" ", now)
        assert not verify(secret, r.headers["x-leadscore-signature"], r.body, now + 3600)
        body = r.json
        assert body.pop("id") == r.key
        assert body.pop("channel") == ("sales" if index == 0 else None)
        assert body == rec
    assert firer.undelivered() == []


def test_per_contact_order_holds_while_failures_are_retried(
    redis_url: str, receiver: Receiver, deliver: Any
) -> None:
    """Every even firing fails twice first; a contact's next firing must wait for it."""
    failures: Counter[str] = Counter()

    def decide(path: str, body: bytes) -> int:
        rec = orjson.loads(body)
        n = int(rec["cause"].split("e-")[1].split(":")[0])
        if n % 2 == 0 and failures[rec["id"]] < 2:
            failures[rec["id"]] += 1
            return 503
        return 200

    receiver.decide = decide
    firer = Firer(redis_url)
    for n in range(40):
        firer.fire(record(f"c-{n % 5}", n))
    deliver(plan_for(receiver.url), concurrency=8)
    receiver.wait(lambda: len(receiver.received(ok=True)) >= 40)
    by_contact: dict[str, list[int]] = defaultdict(list)
    for r in receiver.received():
        rec = r.json
        by_contact[rec["contact"]].append(int(rec["cause"].split("e-")[1].split(":")[0]))
    for contact, seq in by_contact.items():
        # all attempts of a firing come before any attempt of the contact's next firing
        assert seq == sorted(seq), contact
        assert sorted(set(seq)) == [n for n in range(40) if f"c-{n % 5}" == contact]
    receiver.wait(lambda: firer.pending() == 0)


def test_500_three_times_then_200_arrives_on_the_fourth_try(
    redis_url: str, receiver: Receiver, deliver: Any
) -> None:
    receiver.scripts["/sales"] = [500, 500, 500, 200]
    firer = Firer(redis_url)
    firer.fire(record("ana", 1))
    deliver(plan_for(receiver.url))
    receiver.wait(lambda: len(receiver.received(ok=True)) == 1)
    got = receiver.received()
    assert [r.status for r in got] == [500, 500, 500, 200]
    assert len({r.key for r in got}) == 1 and len({r.body for r in got}) == 1
    assert [r.headers["x-leadscore-attempt"] for r in got] == ["1", "2", "3", "4"]
    receiver.wait(lambda: firer.pending() == 0)
    assert firer.undelivered() == []


def test_a_hanging_receiver_is_timed_out_and_retried(
    redis_url: str, receiver: Receiver, deliver: Any
) -> None:
    receiver.scripts["/sales"] = [("hang", 3.0), 200]
    firer = Firer(redis_url)
    firer.fire(record("bo", 1))
    deliver(plan_for(receiver.url), timeout=0.3)
    receiver.wait(lambda: len(receiver.received(ok=True)) == 1)
    got = receiver.received()
    assert [r.status for r in got] == [0, 200]  # the first one never answered
    assert got[0].key == got[1].key and got[0].body == got[1].body
    receiver.wait(lambda: firer.pending() == 0)


def test_429_waits_for_retry_after_not_the_back_off(
    redis_url: str, receiver: Receiver, deliver: Any
) -> None:
    """The back-off here would wait a minute; Retry-After: 0 asks for an immediate retry."""
    receiver.scripts["/sales"] = [(429, {"Retry-After": "0"}), 200]
    firer = Firer(redis_url)
    firer.fire(record("cy", 1))
    slow = RetryPolicy(max_attempts=5, base=120.0, cap=120.0)
    deliver(plan_for(receiver.url), policy=slow)
    receiver.wait(lambda: len(receiver.received(ok=True)) == 1, timeout=20)
    assert [r.status for r in receiver.received()] == [429, 200]


def test_a_4xx_is_dead_lettered_and_replay_dead_sends_it_again(
    redis_url: str, receiver: Receiver, deliver: Any
) -> None:
    receiver.scripts["/sales"] = [422]
    firer = Firer(redis_url)
    firer.fire(record("dee", 1))
    firer.fire(record("dee", 2))
    running = deliver(plan_for(receiver.url))
    receiver.wait(lambda: len(receiver.received()) == 2)
    receiver.wait(lambda: firer.pending() == 0)
    running.close()
    first, second = receiver.received()
    assert first.status == 422 and second.status == 200  # final at once, then the next one
    [letter] = firer.undelivered()
    assert letter["id"] == first.key and letter["status"] == 422 and letter["attempts"] == 1
    assert letter["channel"] == "sales" and "422" in letter["error"]
    assert letter["record"] == {k: v for k, v in first.json.items() if k not in ("id", "channel")}

    config = DeliverConfig(redis_url=redis_url, policy=FAST, timeout=2.0)
    result = asyncio.run(replay_dead(config, plan_for(receiver.url)))
    assert (result.sent, result.failed) == (1, 0)
    again = receiver.received()[-1]
    assert again.status == 200 and again.key == first.key and again.body == first.body
    assert firer.undelivered() == []


def test_a_notify_to_a_channel_the_rules_no_longer_have_is_dead_lettered(
    redis_url: str, receiver: Receiver, deliver: Any
) -> None:
    firer = Firer(redis_url)
    firer.fire(record("eve", 1, [{"notify": "gone"}, {"notify": "sales"}]))
    deliver(plan_for(receiver.url))
    receiver.wait(lambda: len(receiver.received()) == 1)
    receiver.wait(lambda: firer.pending() == 0)
    [letter] = firer.undelivered()
    assert letter["index"] == 0 and "unknown channel 'gone'" in letter["error"]


def test_a_second_deliverer_takes_over_its_share_and_nothing_is_lost(
    redis_url: str, receiver: Receiver, deliver: Any
) -> None:
    """alpha starts alone and owns everything; beta joins mid-stream: alpha finishes what it
    holds of beta's partitions, hands them over, and every firing arrives."""
    firer = Firer(redis_url, partitions=8)
    plan = plan_for(receiver.url)
    receiver.delay = 0.005
    a = deliver(plan, name="alpha")
    for n in range(40):
        firer.fire(record(f"c-{n}", n))
    receiver.wait(lambda: len(a.deliverer.owned) == 8 and len(receiver.received()) >= 10)
    b = deliver(plan, name="beta")
    for n in range(40, 80):
        firer.fire(record(f"c-{n % 50}", n))
    receiver.wait(lambda: len({r.key for r in receiver.received(ok=True)}) == 80)
    receiver.wait(lambda: firer.pending() == 0)
    expected = {p: owner_of(p, ["alpha", "beta"]) for p in range(8)}
    assert set(expected.values()) == {"alpha", "beta"}
    leases = redis.Redis.from_url(redis_url)
    receiver.wait(
        lambda: all(
            leases.get(Keys("ls", 8).deliver_lease(p)) == who.encode()
            for p, who in expected.items()
        )
    )
    assert set(a.deliverer.owned) == {p for p, who in expected.items() if who == "alpha"}
    assert set(b.deliverer.owned) == {p for p, who in expected.items() if who == "beta"}
    assert {r.key for r in receiver.received(ok=True)} == {
        f"ls:{p}:{eid}:0" for p, eid, _ in firer.entries()
    }


def test_deliver_refuses_to_start_without_the_secrets_it_needs(receiver: Receiver) -> None:
    rules = load_rules_text(rules_for(receiver.url), "rules.yaml")
    with pytest.raises(DeliveryConfigError) as err:
        build_plan(rules, {})
    text = str(err.value)
    assert "$TEST_SALES_SECRET is not set" in text
    assert "$LEADSCORE_WEBHOOK_SECRET" in text
    remote = rules_for("http://crm.internal")
    with pytest.raises(DeliveryConfigError, match=r"--allow-http crm\.internal"):
        build_plan(
            load_rules_text(remote), {"TEST_SALES_SECRET": "s", "LEADSCORE_WEBHOOK_SECRET": "d"}
        )
    build_plan(
        load_rules_text(remote),
        {"TEST_SALES_SECRET": "s", "LEADSCORE_WEBHOOK_SECRET": "d"},
        allow_http=["crm.internal"],
    )
    no_channel = "version: 1\ntriggers: [{id: t, at_least: 1, actions: [{notify: sales}]}]\n"
    with pytest.raises(DeliveryConfigError, match="names no channel"):
        build_plan(load_rules_text(no_channel), {})


# --------------------------------------------------------------------------- processes


def spawn(redis_url: str, rules: Path, name: str, *extra: str) -> subprocess.Popen[bytes]:
    """A deliverer process, as an operator starts it."""
    env = {**os.environ, "TEST_SALES_SECRET": SALES.decode(), "LEADSCORE_WEBHOOK_SECRET": "x"}
    args = ["deliver", "--redis", redis_url, "--rules", str(rules), "--name", name]
    args += ["--backoff", "0.02s", "--backoff-cap", "0.1s", "--max-attempts", "6"]
    args += ["--lease-ttl", "1s", "--concurrency", "4", "--max-inflight", "40", "--timeout", "2"]
    return subprocess.Popen(
        [*LEADSCORE, *args, *extra],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_kill_9_mid_stream_then_another_deliverer_loses_nothing(
    redis_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_for(receiver.url))
    receiver.delay = 0.02
    firer = Firer(redis_url)
    for n in range(300):
        firer.fire(record(f"c-{n % 30}", n))
    first = spawn(redis_url, rules, "first")
    try:
        receiver.wait(lambda: len(receiver.received()) >= 80)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    in_flight = firer.pending()  # read, not acknowledged: all that may come twice
    assert 0 < in_flight < 300
    port = free_port()
    # another consumer: claims first's entries
    second = spawn(redis_url, rules, "second", "--metrics-port", str(port))
    try:
        receiver.wait(lambda: len({r.key for r in receiver.received(ok=True)}) == 300, 60)
        receiver.wait(lambda: firer.pending() == 0)
        metrics = _metrics(port)
        delivered = metrics['leadscore_deliver_delivered_total{channel="sales",status="200"}']
        assert in_flight <= delivered <= 300  # at least what first left pending
        assert metrics['leadscore_deliver_latency_seconds_count{channel="sales"}'] == delivered
        assert metrics["leadscore_deliver_oldest_undelivered_seconds"] == 0.0
        assert metrics["leadscore_deliver_partitions_owned"] == 4.0
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    finally:
        second.kill()
    expected = {f"ls:{p}:{eid}:0" for p, eid, _ in firer.entries()}
    got = receiver.received(ok=True)
    assert {r.key for r in got} == expected
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for r in got:
        bodies[r.key].add(r.body)
        assert verify(SALES, r.headers["x-leadscore-signature"], r.body, time.time())
    assert all(len(b) == 1 for b in bodies.values())  # a duplicate is the same delivery
    duplicates = len(got) - len(expected)
    assert duplicates <= in_flight
    assert firer.undelivered() == []


def test_the_live_flow_s_firings_are_what_arrives(
    redis_url: str, receiver: Receiver, deliver: Any, tmp_path: Path
) -> None:
    """Events -> the Redis flow (a real run) -> the deliverer -> the receiver: exactly the
    fired deliveries arrive, and the flow's own non-delivery actions (tags) send nothing."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"""
version: 1
channels:
  sales: {{webhook: "{receiver.url}/sales", secret_env: TEST_SALES_SECRET}}
actions:
  - {{id: pricing, on: page.hit, where: {{url: "*/pricing*"}}, points: 10, repeat: true}}
triggers:
  - {{id: mql, at_least: 30, actions: [{{notify: sales}}, {{add_tag: mql}}]}}
  - {{id: warm, at_least: 10, actions: [{{webhook: "{receiver.url}/direct"}}]}}
  - {{id: quiet, at_least: 20, actions: [{{add_tag: quiet}}]}}
"""
    )
    now = time.time()
    lines = [
        orjson.dumps(
            {
                "contact": f"c-{i % 9}",
                "action": "page.hit",
                "id": f"e-{i}",
                "ts": now - 120 + i,  # live: firings older than max_age would expire
                "props": {"url": "https://acme.com/pricing" if i % 4 else "/blog"},
            }
        )
        for i in range(120)
    ]
    store = RedisStore(redis_url)
    store.ensure(16)
    store.send_events(lines)
    flow = subprocess.run(
        [*LEADSCORE, "run", "-r", str(rules), "--source", redis_url, "--drain"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    assert flow.returncode == 0, flow.stderr
    fired = [
        (p, eid, orjson.loads(f[b"t"]))
        for p in range(16)
        for eid, f in store.iter_stream(store.keys.triggers(p))
    ]
    wanted = {f"ls:{p}:{eid}:0": rec for p, eid, rec in fired if rec["trigger"] in ("mql", "warm")}
    assert len(wanted) == 18  # 9 contacts, each reaching 10 and 30
    deliver(build_plan(load_rules_text(rules.read_text()), _env()))
    receiver.wait(lambda: len(receiver.received()) >= len(wanted))
    time.sleep(0.3)
    got = receiver.received()
    assert sorted(r.key for r in got) == sorted(wanted)
    for r in got:
        body = r.json
        assert body.pop("id") == r.key
        assert body.pop("channel") == ("sales" if r.path == "/sales" else None)
        assert body == wanted[r.key]
        assert r.path == {"mql": "/sales", "warm": "/direct"}[body["trigger"]]


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def _env() -> dict[str, str]:
    return {"TEST_SALES_SECRET": SALES.decode(), "LEADSCORE_WEBHOOK_SECRET": DIRECT.decode()}


def test_old_firings_a_backlog_replays_expire_to_the_dead_letters_unsent(
    redis_url: str, receiver: Receiver, deliver: Any
) -> None:
    """History replayed through Redis commits old firings now: they are not sent to sales."""
    firer = Firer(redis_url)
    old = record("fay", 1) | {"at": format_ts(time.time() - 2 * 86400)}
    firer.fire(old)
    firer.fire(record("fay", 2))
    deliver(plan_for(receiver.url))
    receiver.wait(lambda: firer.pending() == 0 and len(receiver.received()) == 1)
    assert receiver.received()[0].json["cause"] == old["cause"].replace("e-1", "e-2")
    [letter] = firer.undelivered()
    assert letter["record"] == old and letter["attempts"] == 0
    assert letter["error"].startswith("expired")


def test_deliver_command_refuses_to_start_without_secrets_and_never_prints_them(
    redis_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_for(receiver.url))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_SECRET")}
    done = subprocess.run(
        [*LEADSCORE, "deliver", "--redis", redis_url, "--rules", str(rules)],
        env={**env, "LEADSCORE_WEBHOOK_SECRET": "do-not-print-me"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 1
    assert "channels.sales: $TEST_SALES_SECRET is not set" in done.stderr
    assert "nothing started" in done.stderr and "Traceback" not in done.stderr
    assert "do-not-print-me" not in done.stderr + done.stdout


def test_deliver_command_with_no_redis_answering_says_so_at_once(
    receiver: Receiver, tmp_path: Path
) -> None:
    """Nothing at --redis: one line naming the URL and the option, exit 1 (it used to spend
    the retry budget, meant for a Redis lost mid-run, before saying the same)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_for(receiver.url))
    url = f"redis://127.0.0.1:{free_port()}/0"
    for extra in ([], ["--replay-dead"]):
        done = subprocess.run(
            [*LEADSCORE, "deliver", "--redis", url, "--rules", str(rules), *extra],
            env={**os.environ, "TEST_SALES_SECRET": "s", "LEADSCORE_WEBHOOK_SECRET": "w"},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        assert done.returncode == 1, done.stderr
        assert url in done.stderr and "--redis" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "delivering from" not in done.stderr


def test_replay_dead_command_re_sends_and_reports(
    redis_url: str, receiver: Receiver, deliver: Any, tmp_path: Path
) -> None:
    receiver.scripts["/sales"] = [404, 404]
    firer = Firer(redis_url)
    firer.fire(record("gil", 1))
    deliver(plan_for(receiver.url))
    receiver.wait(lambda: firer.pending() == 0 and len(firer.undelivered()) == 1)
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_for(receiver.url))
    env = {**os.environ, "TEST_SALES_SECRET": SALES.decode(), "LEADSCORE_WEBHOOK_SECRET": "x"}
    command = [*LEADSCORE, "deliver", "--redis", redis_url, "-r", str(rules), "--replay-dead"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert first.returncode == 1 and "0 dead letters; 1 still failing" in first.stderr
    [letter] = firer.undelivered()
    assert letter["status"] == 404 and letter["attempts"] == 2
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert second.returncode == 0 and "re-sent 1 dead letters; 0 still failing" in second.stderr
    got = receiver.received()
    assert [r.status for r in got] == [404, 404, 200] and len({r.key for r in got}) == 1
    assert firer.undelivered() == []


def test_a_handover_does_not_wait_for_a_failing_receiver_s_back_off(
    redis_url: str, receiver: Receiver, deliver: Any
) -> None:
    """alpha backs off for minutes from a 503; when beta joins, alpha hands the partition
    over at once (the firing stays pending) and beta, whose back-off is short, delivers it."""
    firer = Firer(redis_url, partitions=8)
    plan = plan_for(receiver.url)
    contact = next(
        f"c-{i}"
        for i in range(100)
        if owner_of(partition_of(f"c-{i}", 8), ["alpha", "beta"]) == "beta"
    )
    receiver.scripts["/sales"] = [503]
    slow = RetryPolicy(max_attempts=5, base=600.0, cap=600.0)
    a = deliver(plan, name="alpha", policy=slow)
    firer.fire(record(contact, 1))
    firer.fire(record(contact, 2))  # waits behind the first: same contact, same channel
    receiver.wait(lambda: len(receiver.received()) == 1 and len(a.deliverer.owned) == 8)
    deliver(plan, name="beta")
    receiver.wait(lambda: len(receiver.received(ok=True)) == 2)
    receiver.wait(lambda: firer.pending() == 0)
    got = receiver.received()
    assert [r.status for r in got] == [503, 200, 200]
    assert got[0].key == got[1].key and got[1].json["cause"].endswith("e-1: demo +10")
    assert got[2].json["cause"].endswith("e-2: demo +10")  # still in firing order
