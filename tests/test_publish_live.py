"""`leadscore publish`: generations of state rebuilt from history, the live switch, the switch
firings, rollback, prune and crash safety, through the real CLI (and a real live flow
process) against a real redis-server. The oracle is `leadscore run` on the same events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from bytewax.testing import cluster_main
from conftest import LiveService
from test_cli_redis import LEADSCORE, ROOT, RULES, cli

from flows.scoring import FlowConfig, build_flow
from leadscore.readmodel import view_at
from state.keys import Keys
from state.redis_store import RedisStore

T0 = time.time() - 3600  # recent: no decay crossing is due while the test runs
AS_OF = T0 + 86_400.0  # after every event: both sides bring the scores to this time
P = 4


def ev(contact: str, n: int, action: str = "email.click", *, ids: bool = True) -> bytes:
    event = {"contact": contact, "action": action, "ts": T0 + n}
    if ids:
        event["id"] = f"{contact}-{action}-{n}"
    return orjson.dumps(event)


def batch(start: int, contacts: int = 24, *, ids: bool = True) -> list[bytes]:
    """Contact i clicks i times (scores spread across the MQL thresholds of both rules).
    Without ``ids`` an event applied twice is not dropped as a duplicate: it counts twice."""
    lines = [ev(f"c-{i}", start + k, ids=ids) for i in range(contacts) for k in range(i)]
    lines += [ev(f"c-{i}", start + 100, "page.hit", ids=ids) for i in range(0, contacts, 5)]
    return lines


def new_rules(tmp_path: Path) -> Path:
    """Rescoring: clicks are worth more and MQL comes earlier."""
    text = RULES.read_text()
    assert "    points: 4\n    repeat: true" in text and "at_least: 50" in text
    text = text.replace("    points: 4\n    repeat: true", "    points: 5\n    repeat: true")
    path = tmp_path / "new.yaml"
    path.write_text(text.replace("at_least: 50", "at_least: 30", 1))
    return path


def send(url: str, tmp_path: Path, lines: list[bytes], name: str) -> Path:
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    done = cli("send", "--redis", url, "--events", str(path), "--partitions", str(P))
    assert done.returncode == 0, done.stderr
    return path


def drain(url: str, rules: Path) -> None:
    done = cli("run", "--rules", str(rules), "--source", url, "--drain", "--partitions", str(P))
    assert done.returncode == 0, done.stderr


def oracle(rules: Path, files: list[Path], tmp_path: Path, name: str) -> dict[str, dict]:
    """The contacts of a fresh file replay of ``files`` under ``rules``, as of AS_OF."""
    out = tmp_path / name
    done = cli(
        "run", "--rules", str(rules), "--events", *map(str, files), "--out", str(out),
        "--as-of", str(AS_OF),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    contacts = (out / "contacts.jsonl").read_text().splitlines()
    return {c["contact"]: c for c in map(json.loads, contacts)}


def triggers_of(out: Path) -> set[tuple[str, str]]:
    lines = (out / "triggers.jsonl").read_text().splitlines()
    return {(t["contact"], t["trigger"]) for t in map(json.loads, lines)}


def fired(rules: Path, files: list[Path], tmp_path: Path, name: str) -> set[tuple[str, str]]:
    oracle(rules, files, tmp_path, name)
    return triggers_of(tmp_path / name)


FIELDS = ("scores", "total", "normalized", "grade", "stage", "segments", "tags")


def assert_live_equals(url: str, expected: dict[str, dict]) -> None:
    store = RedisStore(url)
    for contact, view in expected.items():
        doc = store.read_model(contact)
        assert doc is not None, contact
        got = view_at(doc, AS_OF)
        assert {k: got[k] for k in FIELDS} == {k: view[k] for k in FIELDS}, contact


def switch_firings(url: str) -> list[dict]:
    return [t for t in RedisStore(url).read_triggers() if t["cause"].startswith("rules published")]


def publish(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LEADSCORE, "publish", "--redis", url, *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.slow
def test_publish_rescores_every_contact_and_fires_the_differences_once(
    redis_url: str, tmp_path: Path, serve: Callable[..., LiveService]
) -> None:
    history = send(redis_url, tmp_path, batch(0), "history")
    drain(redis_url, RULES)
    new = new_rules(tmp_path)
    r = redis.Redis.from_url(redis_url)
    before = RedisStore(redis_url).read_triggers()
    old_total = {c: v["total"] for c, v in oracle(RULES, [history], tmp_path, "o").items()}

    # without --yes: the preview (kind of change, backtest), and nothing changes
    done = publish(redis_url, "--rules", str(new))
    assert done.returncode == 0, done.stderr
    assert "rescoring change" in done.stdout and "backtest of" in done.stdout
    assert "run again with --yes" in done.stdout
    assert r.hget("ls:meta", "rules_version") == b"1" and r.exists("ls:publish") == 0

    done = publish(redis_url, "--rules", str(new), "--yes")
    assert done.returncode == 0, done.stderr
    assert "publishing rules v2 as generation 1" in done.stdout
    assert "rescoring change" in done.stdout and "at_least" not in done.stderr
    meta = r.hgetall("ls:meta")
    assert meta[b"rules_version"] == b"2" and meta[b"generation"] == b"1"
    assert meta[b"rules_text"] == new.read_bytes()
    assert [r.get(Keys("ls", P).live(p)) for p in range(P)] == [b"1:2"] * P
    assert r.exists("ls:publish") == 0
    shown = cli("rules", "--redis", redis_url).stdout
    assert "# version:   2" in shown and "# generation: 1" in shown

    # every contact equals a fresh replay of the history under the new rules, and the HTTP
    # service answers from the new generation
    expected = oracle(new, [history], tmp_path, "new")
    assert_live_equals(redis_url, expected)
    with httpx.Client(base_url=serve(partitions=P).url, auth=("test-key", "")) as http:
        got = http.get("/v1/contacts/c-10").json()
    # c-10 (10 clicks) is an MQL under the new rules only
    assert "mql" in got["segments"] and "mql" in expected["c-10"]["segments"]
    assert got["segments"] == expected["c-10"]["segments"] and got["total"] > old_total["c-10"]
    # the old generation is untouched: generation 0 still holds the old answers
    old = oracle(RULES, [history], tmp_path, "old")
    doc = orjson.loads(r.get(Keys("ls", P).contact_read_model("c-10")))
    assert view_at(doc, AS_OF)["total"] == old["c-10"]["total"]

    # rebuild firings are not delivered; the switch fires exactly the differences, once
    after = RedisStore(redis_url).read_triggers()
    switch = switch_firings(redis_url)
    assert [t for t in after if t not in switch] == before
    expected = fired(new, [history], tmp_path, "fn") - fired(RULES, [history], tmp_path, "fo")
    assert expected and {(t["contact"], t["trigger"]) for t in switch} == expected
    assert len(switch) == len(expected)
    assert {t["cause"] for t in switch} == {"rules published: v2"}

    # the flow must now run the published rules: the old file is refused, the new accepted
    refused = cli(
        "run", "--rules", str(RULES), "--source", redis_url, "--drain", "--partitions", "4"
    )
    assert refused.returncode == 1 and "runs rules v2" in refused.stderr
    more = send(redis_url, tmp_path, batch(300, 30), "more")
    drain(redis_url, new)
    assert_live_equals(redis_url, oracle(new, [history, more], tmp_path, "new2"))

    # rollback: the old generation catches up on what came since, under the old rules
    done = publish(redis_url, "--rollback")
    assert done.returncode == 0, done.stderr
    assert r.hget("ls:meta", "rules_version") == b"1"
    assert [r.get(Keys("ls", P).live(p)) for p in range(P)] == [b"0:1"] * P
    assert_live_equals(redis_url, oracle(RULES, [history, more], tmp_path, "old2"))
    lost = fired(new, [history, more], tmp_path, "a") - fired(RULES, [history, more], tmp_path, "b")
    rolled = [t for t in switch_firings(redis_url) if t["cause"] == "rules published: v1"]
    # MQL under the new rules but not the old: their `cooled` handoff (below, after: mql)
    assert lost and {(t["contact"], t["trigger"]) for t in rolled} == {
        (c, "cooled") for c, trigger in lost if trigger == "mql"
    }
    drain(redis_url, RULES)

    # prune: generation 1 goes, and rolling back to it is refused
    done = publish(redis_url, "--prune")
    assert done.returncode == 0, done.stderr and "pruned generation 1" in done.stdout
    assert not list(r.scan_iter(match="ls:{*}:g1:*"))
    assert_live_equals(redis_url, oracle(RULES, [history, more], tmp_path, "old3"))
    done = publish(redis_url, "--rollback")
    assert done.returncode == 1 and "pruned" in done.stderr


def test_a_cheap_change_switches_without_replay(redis_url: str, tmp_path: Path) -> None:
    history = send(redis_url, tmp_path, batch(0, 12), "history")
    drain(redis_url, RULES)
    cheap = tmp_path / "cheap.yaml"
    cheap.write_text(RULES.read_text().replace("name: Hot lead", "name: Very hot lead"))
    done = publish(redis_url, "--rules", str(cheap), "--yes")
    assert done.returncode == 0, done.stderr
    assert "cheap change" in done.stdout and "no replay needed" in done.stdout
    r = redis.Redis.from_url(redis_url)
    assert [r.get(Keys("ls", P).live(p)) for p in range(P)] == [b"0:2"] * P
    assert not list(r.scan_iter(match="ls:{*}:g*"))
    assert switch_firings(redis_url) == []
    assert_live_equals(redis_url, oracle(cheap, [history], tmp_path, "cheap"))
    assert publish(redis_url, "--rules", str(cheap), "--yes").stdout.startswith("nothing")


def identify(contact: str, n: int, *merged: str) -> bytes:
    return orjson.dumps({"contact": contact, "action": "identify", "ts": T0 + n, "merge": merged})


def sent(url: str, tmp_path: Path, lines: list[bytes], name: str) -> Path:
    """``send`` in this process (a CLI start costs more than the sending)."""
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with RedisStore(url) as store:
        store.ensure(P)
        store.send_events(lines)
    return path


def settle(url: str, rules: Path) -> None:
    """Drain (in this process) until every entry is acknowledged, hand-overs included (a
    hand-over sent by a run's last checkpoint waits for the next run)."""
    for _ in range(10):
        config = FlowConfig(
            rules=str(rules), source="redis", redis_url=url, partitions=P, tail=False,
            stop=threading.Event(),
        )  # fmt: skip
        cluster_main(build_flow(config), [], 0, worker_count_per_proc=1)
        if caught_up(url):
            return
    raise AssertionError("the input never settled")


def roots(pairs: set[tuple[str, str]], into: dict[str, str]) -> set[tuple[str, str]]:
    """(contact, trigger) with each contact followed to the one it was merged into."""

    def root(c: str) -> str:
        while c in into:
            c = into[c]
        return c

    return {(root(c), t) for c, t in pairs}


@pytest.mark.slow
def test_publish_replays_identity_merges_as_the_live_flow_made_them(
    redis_url: str, tmp_path: Path
) -> None:
    """A history with merges across partitions (two visitors into c-3, then c-3 into c-5: a
    chain), a refused merge, an id that never existed, and events for old ids after their
    merge: publish rebuilds what `leadscore run` makes of the same events under the new
    rules, fires the differences once, and a rollback catches up on merges made since."""
    keys = Keys("ls", P)
    assert len({keys.partition(c) for c in ("v-1", "c-3", "c-5", "c-9")}) == 4
    visitors = [ev("v-1", n) for n in range(7)] + [ev("v-2", 10 + n) for n in range(9)]
    visitors += [ev("v-2", 30, "page.hit"), *(ev("anon-5", 40 + n) for n in range(4))]
    waves = [
        # the visitors' takes reach their streams after their events: merged whole
        [*batch(0, 12), *visitors, identify("c-3", 200, "v-1", "v-2")],
        # the chain; v-1 was merged before (refused); anon-2 never existed
        [identify("c-5", 300, "c-3"), identify("c-9", 301, "v-1"), identify("c-7", 302, "anon-2")],
        [*(ev("v-1", 400 + n) for n in range(3)), ev("c-3", 410), ev("c-3", 411)],
    ]
    files = []
    for i, wave in enumerate(waves):
        files.append(sent(redis_url, tmp_path, wave, f"wave{i}"))
        settle(redis_url, RULES)
    r = redis.Redis.from_url(redis_url)
    into = {"v-1": "c-3", "v-2": "c-3", "c-3": "c-5", "anon-2": "c-7"}
    assert {k.decode(): v.decode() for k, v in r.hgetall(keys.aliases).items()} == into
    refused = [d for d in RedisStore(redis_url).read_dead() if d["code"] == "merge_refused"]
    assert len(refused) == 1

    new = new_rules(tmp_path)
    done = publish(redis_url, "--rules", str(new), "--yes")
    assert done.returncode == 0, done.stderr
    assert [r.get(keys.live(p)) for p in range(P)] == [b"1:2"] * P
    expected = oracle(new, files, tmp_path, "new")
    fired_new = triggers_of(tmp_path / "new")
    assert "c-5" in expected and not {"v-1", "v-2", "c-3"} & set(expected)
    assert_live_equals(redis_url, expected)
    g1 = keys.at(1)
    for gone in into:
        assert not r.exists(g1.state(keys.partition(gone), gone)), gone
    assert not list(r.scan_iter(match="ls:{*}:g1:h:*"))  # no hand-over left half done
    assert {k.decode(): v.decode() for k, v in r.hgetall(keys.aliases).items()} == into
    # the switch fires the differences of the merged contacts, once
    differ = roots(fired_new, into) - roots(fired(RULES, files, tmp_path, "fo"), into)
    switch = switch_firings(redis_url)
    assert ("c-5", "mql") not in differ  # MQL under both rules: nothing to fire
    assert differ and {(t["contact"], t["trigger"]) for t in switch} == differ
    assert len(switch) == len(differ)

    # merges after the switch (live, under the new rules), then a rollback: the old
    # generation replays them from where it stopped
    files.append(sent(redis_url, tmp_path, [identify("c-9", 500, "anon-5")], "later"))
    settle(redis_url, new)
    assert r.hget(keys.aliases, "anon-5") == b"c-9"
    done = publish(redis_url, "--rollback")
    assert done.returncode == 0, done.stderr
    assert [r.get(keys.live(p)) for p in range(P)] == [b"0:1"] * P
    assert_live_equals(redis_url, oracle(RULES, files, tmp_path, "old2"))
    assert not r.exists(keys.state(keys.partition("anon-5"), "anon-5"))
    assert not list(r.scan_iter(match="ls:{*}:h:*"))


# --------------------------------------------------------------------------- live + crashes


def wait_for(condition, what: str, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def caught_up(url: str) -> bool:
    """Every input entry read and acknowledged."""
    r = redis.Redis.from_url(url)
    keys = Keys("ls", P)
    for p in range(P):
        groups = r.xinfo_groups(keys.input(p))
        if not groups or groups[0]["pending"] or groups[0].get("lag"):
            return False
    return True


def paused_publish(url: str, *args: str, step: str) -> subprocess.Popen:
    """A publish that stops (sleeps) at ``step`` once it has written everything before it."""
    proc = subprocess.Popen(
        [*LEADSCORE, "publish", "--redis", url, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "LEADSCORE_PUBLISH_PAUSE": step},
    )  # fmt: skip
    assert proc.stderr is not None
    for raw in proc.stderr:
        if f"publish paused at {step}".encode() in raw:
            return proc
    proc.wait(10)
    raise AssertionError(f"publish never paused at {step} (exit {proc.returncode})")


def read_not_acknowledged(url: str) -> bool:
    """Every input entry read by the flow, some of them not acknowledged (checkpoints held)."""
    r = redis.Redis.from_url(url)
    keys = Keys("ls", P)
    groups = [r.xinfo_groups(keys.input(p))[0] for p in range(P)]
    return all(not g.get("lag") for g in groups) and any(g["pending"] for g in groups)


def start_flow(url: str, rules: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*LEADSCORE, "run", "--rules", str(rules), "--source", url, "--partitions", str(P)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip


def stop_flow(flow: subprocess.Popen) -> bytes:
    flow.send_signal(signal.SIGTERM)
    _, err = flow.communicate(timeout=60)
    assert flow.returncode == 0, err.decode()
    return err or b""


def watch(flow: subprocess.Popen) -> list[bytes]:
    """The flow's stderr lines as they come (a thread reads them)."""
    lines: list[bytes] = []
    assert flow.stderr is not None
    stream = flow.stderr
    flow.stderr = None  # communicate() must not read it too
    threading.Thread(target=lambda: lines.extend(stream), daemon=True).start()
    return lines


@pytest.mark.slow
def test_a_live_flow_switches_without_restart_and_scores_everything_once(
    redis_url: str, tmp_path: Path
) -> None:
    """Events sent during the rebuild and during the hold are scored exactly once (they carry
    no ids, so a second application would count), under the rules live when the flow
    checkpoints them; the flow switches without a restart. Then a rollback: the flow is
    killed (-9) while the rollback holds it, a new one starts, the rollback finishes."""
    history = send(redis_url, tmp_path, batch(0, ids=False), "history")
    new = new_rules(tmp_path)
    flow = start_flow(redis_url, RULES)
    try:
        wait_for(lambda: caught_up(redis_url), "the flow to score the history")
        pub = paused_publish(redis_url, "--rules", str(new), "--yes", step="rebuilt:1")
        during = send(redis_url, tmp_path, batch(200, 30, ids=False), "during")
        wait_for(lambda: caught_up(redis_url), "the flow to score events sent during the rebuild")
        pub.kill()  # kill -9 mid-rebuild
        pub.wait(10)
        # again, up to the hold: the flow reads what is sent, its checkpoints are refused
        pub = paused_publish(redis_url, "--rules", str(new), "--yes", step="held")
        held = send(redis_url, tmp_path, batch(400, 26, ids=False), "held")
        wait_for(lambda: read_not_acknowledged(redis_url), "the flow to read during the hold")
        pub.kill()
        pub.wait(10)
        done = publish(redis_url, "--rules", str(new), "--yes")
        assert done.returncode == 0, done.stderr
        assert "resuming" in done.stdout
        after = send(redis_url, tmp_path, batch(600, 20, ids=False), "after")
        wait_for(lambda: caught_up(redis_url), "the flow to score everything")
        assert flow.poll() is None, "the flow stopped"
    finally:
        err = stop_flow(flow)
    assert b"switched to 1:2 by a publish" in err
    files = [history, during, held, after]
    assert_live_equals(redis_url, oracle(new, files, tmp_path, "new"))
    switch = switch_firings(redis_url)
    assert len({(t["contact"], t["trigger"]) for t in switch}) == len(switch)

    # rollback while a flow runs the published rules; the flow dies (-9) during the hold
    flow = start_flow(redis_url, new)
    try:
        pub = paused_publish(redis_url, "--rollback", step="held")
        late = send(redis_url, tmp_path, batch(800, 22, ids=False), "late")
        wait_for(lambda: read_not_acknowledged(redis_url), "the flow to read during the hold")
        flow.kill()
        flow.wait(10)
        flow = start_flow(redis_url, new)  # binds the held partitions to generation 1, v2
        log = watch(flow)
        wait_for(lambda: b"held by a publish" in b"".join(log), "the new flow to be held")
        pub.kill()
        pub.wait(10)
        done = publish(redis_url, "--rollback")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: caught_up(redis_url), "the new flow to score everything")
    finally:
        stop_flow(flow)
    assert b"switched to 0:1 by a publish" in b"".join(log)
    assert_live_equals(redis_url, oracle(RULES, [*files, late], tmp_path, "old"))


@pytest.mark.slow
@pytest.mark.parametrize("step", ["rebuilt:0", "marked", "held", "fired:1"])
def test_kill_9_at_any_step_then_publish_again_converges(
    redis_url: str, tmp_path: Path, step: str
) -> None:
    history = send(redis_url, tmp_path, batch(0), "history")
    drain(redis_url, RULES)
    new = new_rules(tmp_path)
    r = redis.Redis.from_url(redis_url)
    pub = paused_publish(redis_url, "--rules", str(new), "--yes", step=step)
    if step == "held":  # one publish process at a time
        running = publish(redis_url, "--rules", str(new), "--yes")
        assert running.returncode == 1 and "another publish is running" in running.stderr
    pub.send_signal(signal.SIGKILL)
    pub.wait(10)
    # killed: the old generation is live everywhere (answers, rules), the publish recorded
    assert r.hget("ls:meta", "rules_version") == b"1"
    assert r.exists("ls:publish") == 1
    assert (
        "# publishing: v2 as generation 1, unfinished" in cli("rules", "--redis", redis_url).stdout
    )
    assert_live_equals(redis_url, oracle(RULES, [history], tmp_path, "old"))
    # another publish is refused while this one is unfinished
    other = tmp_path / "other.yaml"
    other.write_text(new.read_text() + "\n# other\n")
    refused = publish(redis_url, "--rules", str(other), "--yes")
    assert refused.returncode == 1 and "in progress" in refused.stderr

    done = publish(redis_url, "--rules", str(new), "--yes")
    assert done.returncode == 0, done.stderr
    assert r.hget("ls:meta", "rules_version") == b"2"
    assert_live_equals(redis_url, oracle(new, [history], tmp_path, "new"))
    expected = fired(new, [history], tmp_path, "fn") - fired(RULES, [history], tmp_path, "fo")
    switch = switch_firings(redis_url)
    assert sorted((t["contact"], t["trigger"]) for t in switch) == sorted(expected)
