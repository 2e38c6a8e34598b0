"""Versioned rules: the deployment records what it runs, and a flow with other rules is
refused (state/versions.py), through the real CLI against a real redis-server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import redis
from test_cli_redis import RULES, cli, ev

from state.keys import Keys
from state.redis_store import RedisStore


def live_run(url: str, rules: Path, *extra: str) -> tuple[int, str]:
    done = cli(
        "run", "--rules", str(rules), "--source", url, "--drain", "--partitions", "4", *extra
    )
    return done.returncode, done.stderr


def send(url: str, tmp_path: Path, n: int = 20) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(ev(f"c-{i % 5}", i) for i in range(n)) + b"\n")
    assert cli("send", "--redis", url, "--events", str(path), "--partitions", "4").returncode == 0


def edited(tmp_path: Path) -> Path:
    other = tmp_path / "edited.yaml"
    other.write_bytes(RULES.read_bytes() + b"\n# an edit\n")
    return other


def test_the_first_run_records_its_rules_as_v1_and_rules_prints_them(
    redis_url: str, tmp_path: Path
) -> None:
    send(redis_url, tmp_path)
    code, err = live_run(redis_url, RULES)
    assert code == 0, err
    meta = redis.Redis.from_url(redis_url).hgetall("ls:meta")
    assert meta[b"rules_version"] == b"1"
    assert meta[b"rules_sha256"] == hashlib.sha256(RULES.read_bytes()).hexdigest().encode()
    assert meta[b"rules_text"] == RULES.read_bytes()

    shown = cli("rules", "--redis", redis_url)
    assert shown.returncode == 0, shown.stderr
    assert "# version:   1" in shown.stdout
    assert hashlib.sha256(RULES.read_bytes()).hexdigest() in shown.stdout
    assert RULES.read_text() in shown.stdout
    text = cli("rules", "--redis", redis_url, "--text")
    assert text.stdout == RULES.read_text()
    doc = orjson.loads(cli("rules", "--redis", redis_url, "--json").stdout)
    assert doc["version"] == 1 and doc["text"] == RULES.read_text()
    assert doc["published"].endswith("Z")

    # the same rules again: accepted, still v1
    code, err = live_run(redis_url, RULES)
    assert code == 0, err
    assert redis.Redis.from_url(redis_url).hget("ls:meta", "rules_version") == b"1"


def test_a_flow_with_other_rules_is_refused_and_reads_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    send(redis_url, tmp_path)
    assert live_run(redis_url, RULES)[0] == 0
    send(redis_url, tmp_path)  # new input the refused flow must not touch
    store = RedisStore(redis_url)
    lengths = [store.r.xlen(store.keys.input(p)) for p in range(4)]
    before = {p: store.r.xinfo_groups(store.keys.input(p))[0] for p in range(4)}

    code, err = live_run(redis_url, edited(tmp_path))
    assert code == 1
    assert "runs rules v1" in err and "edited.yaml is different" in err
    assert "leadscore preview --rules" in err and "Traceback" not in err
    after = {p: store.r.xinfo_groups(store.keys.input(p))[0] for p in range(4)}
    assert after == before  # nothing read, nothing acknowledged
    assert [store.r.xlen(store.keys.input(p)) for p in range(4)] == lengths
    assert store.r.hget("ls:meta", "rules_sha256") == (
        hashlib.sha256(RULES.read_bytes()).hexdigest().encode()
    )
    # --publish never replaces published rules
    code, err = live_run(redis_url, edited(tmp_path), "--publish")
    assert code == 1 and "leadscore preview" in err


def test_state_without_recorded_rules_needs_publish(redis_url: str, tmp_path: Path) -> None:
    """A deployment that ran before versions: its rules are unknown, so the flow asks."""
    send(redis_url, tmp_path)
    assert live_run(redis_url, RULES)[0] == 0
    r = redis.Redis.from_url(redis_url)
    r.hdel(Keys().meta, "rules_version", "rules_sha256", "rules_text", "rules_published")

    code, err = live_run(redis_url, RULES)
    assert code == 1 and "records no rules" in err and "--publish" in err
    assert r.hget("ls:meta", "rules_version") is None

    code, err = live_run(redis_url, RULES, "--publish")
    assert code == 0, err
    assert r.hget("ls:meta", "rules_version") == b"1"
    assert cli("rules", "--redis", redis_url, "--text").stdout == RULES.read_text()


def test_rules_on_a_deployment_without_rules_says_so(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).hset("ls:meta", mapping={"version": 1, "partitions": 4})
    done = cli("rules", "--redis", redis_url)
    assert done.returncode == 1 and "records no rules yet" in done.stderr
