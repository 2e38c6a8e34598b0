"""`leadscore publish --cluster` on a real 3-master Redis Cluster: the partitions' markers live
on different nodes, so the switch commits (``{prefix}:publish`` phase ``switched``) and then
rolls the markers forward one by one. A publish killed (-9) in the middle of that leaves the
deployment on the new generation for every reader; running it again finishes it. Rollback and
prune (a SCAN of every node) work there too. The oracle is `leadscore run` on the same events.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from redis.cluster import RedisCluster
from test_cli_redis import RULES, cli
from test_publish_live import (
    AS_OF,
    FIELDS,
    P,
    batch,
    fired,
    new_rules,
    oracle,
    paused_publish,
    publish,
)

from leadscore.readmodel import view_at
from state.keys import Keys
from state.redis_store import RedisStore

KEYS = Keys("ls", P)


def send(url: str, tmp_path: Path, lines: list[bytes], name: str) -> Path:
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    done = cli("send", "--redis", url, "--cluster", "--events", str(path), "--partitions", str(P))
    assert done.returncode == 0, done.stderr
    return path


def drain(url: str, rules: Path) -> None:
    done = cli(
        "run", "--rules", str(rules), "--source", url, "--cluster", "--drain",
        "--partitions", str(P),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def assert_live_equals(url: str, expected: dict[str, dict]) -> None:
    """What a reader (``leadscore show``'s store) answers for every contact."""
    with RedisStore(url, cluster=True) as store:
        for contact, view in expected.items():
            doc = store.read_model(contact)
            assert doc is not None, contact
            got = view_at(doc, AS_OF)
            assert {k: got[k] for k in FIELDS} == {k: view[k] for k in FIELDS}, contact


def switch_firings(url: str) -> list[dict]:
    with RedisStore(url, cluster=True) as store:
        return [t for t in store.read_triggers() if t["cause"].startswith("rules published")]


def markers(admin: RedisCluster) -> list[bytes | None]:
    return [admin.get(KEYS.live(p)) for p in range(P)]


@pytest.mark.cluster
@pytest.mark.slow
def test_publish_killed_mid_switch_on_a_cluster_serves_one_generation_and_finishes(
    redis_cluster: str, tmp_path: Path
) -> None:
    admin = RedisCluster.from_url(redis_cluster)
    admin.flushall()  # other tests' keys: ours must start empty
    nodes = {admin.get_node_from_key(KEYS.live(p)).name for p in range(P)}
    assert len(nodes) == 3  # the markers really are on different masters
    history = send(redis_cluster, tmp_path, batch(0), "history")
    drain(redis_cluster, RULES)
    new = new_rules(tmp_path)
    url = (redis_cluster, "--cluster")

    # killed after the commit point, with partitions 0 and 1 switched and 2, 3 still held
    pub = paused_publish(*url, "--rules", str(new), "--yes", step="switched:1")
    pub.kill()
    pub.wait(10)
    assert markers(admin) == [b"1:2", b"1:2", b">1:2", b">1:2"]
    assert admin.hget("ls:publish", "phase") == b"switched"
    assert admin.hget("ls:meta", "rules_version") == b"2"
    # every reader answers from the new generation, held partitions included
    expected = oracle(new, [history], tmp_path, "new")
    assert_live_equals(redis_cluster, expected)
    shown = cli("show", "c-10", "--redis", redis_cluster, "--cluster", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["segments"] == expected["c-10"]["segments"]

    # run again: rolled forward, nothing replayed, the differences fired once
    done = publish(*url, "--rules", str(new), "--yes")
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    assert markers(admin) == [b"1:2"] * P and admin.exists("ls:publish") == 0
    assert_live_equals(redis_cluster, expected)
    differences = fired(new, [history], tmp_path, "fn") - fired(RULES, [history], tmp_path, "fo")
    switch = switch_firings(redis_cluster)
    assert differences and sorted((t["contact"], t["trigger"]) for t in switch) == sorted(
        differences
    )
    # the flow runs the published rules on the new generation
    more = send(redis_cluster, tmp_path, batch(300, 30), "more")
    drain(redis_cluster, new)
    assert_live_equals(redis_cluster, oracle(new, [history, more], tmp_path, "new2"))

    # rollback: generation 0 catches up under the old rules, switched the same way; killed
    # after the meta moved (its rules_previous now names v2), a re-run still finishes it
    pub = paused_publish(*url, "--rollback", step="switched:0")
    pub.kill()
    pub.wait(10)
    assert markers(admin) == [b"0:1", b"1:2>0:1", b"1:2>0:1", b"1:2>0:1"]
    assert admin.hget("ls:meta", "rules_version") == b"1"
    done = publish(*url, "--rollback")
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    assert markers(admin) == [b"0:1"] * P and admin.exists("ls:publish") == 0
    assert_live_equals(redis_cluster, oracle(RULES, [history, more], tmp_path, "old2"))

    # prune: generation 1's keys go from every node; generation 0 answers as before
    assert list(admin.scan_iter(match="ls:{*}:g1:*"))
    done = publish(*url, "--prune")
    assert done.returncode == 0, done.stderr
    assert "pruned generation 1" in done.stdout
    assert not list(admin.scan_iter(match="ls:{*}:g1:*"))
    assert_live_equals(redis_cluster, oracle(RULES, [history, more], tmp_path, "old3"))
    admin.close()
