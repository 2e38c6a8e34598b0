"""``leadscore publish`` so far: which kind of change new rules are, the history export from
the retained streams (real redis-server), and the preview through the real CLI."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
from test_cli_redis import RULES, cli, ev

from leadscore.publish import CHEAP, RESCORE, UNCHANGED, classify, export_history
from leadscore.rules import RulesError, _Loader
from state.keys import Keys

TEXT = RULES.read_text()


def doc() -> dict[str, Any]:
    return yaml.load(TEXT, Loader=_Loader)


def dump(d: dict[str, Any]) -> str:
    return yaml.safe_dump(d, sort_keys=False)


def action(d: dict[str, Any], rid: str) -> dict[str, Any]:
    return next(a for a in d["actions"] if a["id"] == rid)


def trigger(d: dict[str, Any], tid: str) -> dict[str, Any]:
    return next(t for t in d["triggers"] if t["id"] == tid)


def test_the_same_rules_rewritten_are_unchanged() -> None:
    assert classify(TEXT, dump(doc())).kind == UNCHANGED
    d = doc()
    action(d, "pricing-page")["name"] = "Pricing, renamed"
    change = classify(TEXT, dump(d))
    assert change.kind == CHEAP and "pricing-page" in change.describe()


def test_points_changed_need_a_rescore_naming_the_rule() -> None:
    d = doc()
    action(d, "pricing-page")["points"] = 30
    change = classify(TEXT, dump(d))
    assert change.kind == RESCORE
    assert change.reasons == ["action rule pricing-page: changed"]


def test_deliveries_of_a_trigger_are_cheap_its_state_actions_are_not() -> None:
    d = doc()
    trigger(d, "mql")["actions"] = [
        {"notify": "marketing"} if "notify" in a else a for a in trigger(d, "mql")["actions"]
    ]
    assert classify(TEXT, dump(d)).kind == CHEAP
    d = doc()
    trigger(d, "mql")["actions"].append({"add_tag": "new-tag"})
    change = classify(TEXT, dump(d))
    assert change.kind == RESCORE and "trigger mql" in change.reasons[0]
    d = doc()
    trigger(d, "mql")["at_least"] = 40
    assert classify(TEXT, dump(d)).kind == RESCORE


def test_a_new_trigger_needs_a_rescore() -> None:
    d = doc()
    d["triggers"].append({"id": "warm", "score": "total", "at_least": 20, "actions": []})
    change = classify(TEXT, dump(d))
    assert change.kind == RESCORE and change.reasons[0].startswith("trigger warm: new")


def test_a_new_action_rule_is_cheap_only_if_history_never_saw_its_action() -> None:
    d = doc()
    d["actions"].append({"id": "webinar", "on": "webinar.attend", "points": 10})
    new = dump(d)
    assert classify(TEXT, new, {"page.hit"}).kind == CHEAP
    assert classify(TEXT, new, {"page.hit", "webinar.attend"}).kind == RESCORE
    assert classify(TEXT, new, None).kind == RESCORE  # history unknown: assume the worst


def test_decay_changes_need_a_rescore() -> None:
    d = doc()
    d["groups"]["engagement"]["decay"] = {"half_life": "7d"}
    assert classify(TEXT, dump(d)).reasons == ["groups: changed"]


def test_invalid_new_rules_are_refused_naming_the_file() -> None:
    with pytest.raises(RulesError, match=r"new\.yaml"):
        classify(TEXT, "actions: 3\n", new_source="new.yaml")


def test_export_reads_every_retained_entry_in_stream_order(redis_url: str, tmp_path: Path) -> None:
    lines = [ev(f"c-{i % 13}", i % 60) for i in range(300)] + [b"not json"]
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert cli("send", "--redis", redis_url, "--events", str(path), "--batch", "7").returncode == 0
    keys = Keys("ls", 16)
    progress: list[tuple[int, int]] = []
    got = export_history(
        redis.Redis.from_url(redis_url),
        keys.input,
        16,
        tmp_path / "h.jsonl.gz",
        page=2,
        on_progress=lambda p, n: progress.append((p, n)),
    )
    with gzip.open(got.path) as fh:
        exported = fh.read().splitlines()
    assert sorted(exported) == sorted(lines) and got.events == len(lines)
    assert got.actions == {"page.hit"}
    assert progress[-1][1] == len(lines)
    assert len(progress) > len({p for p, _ in progress})  # several pages per partition
    for contact in {orjson.loads(x)["contact"] for x in lines[:-1]}:
        mine = [x for x in lines[:-1] if orjson.loads(x)["contact"] == contact]
        assert [
            x for x in exported if x.startswith(b"{") and orjson.loads(x)["contact"] == contact
        ] == mine


def test_preview_shows_the_change_and_changes_nothing(redis_url: str, tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    clicks = [ev(f"c-{i % 3}", i, action="email.click") for i in range(45)]
    events.write_bytes(b"\n".join(clicks) + b"\n")
    assert cli("send", "--redis", redis_url, "--events", str(events)).returncode == 0
    done = cli("run", "--rules", str(RULES), "--source", redis_url, "--drain")
    assert done.returncode == 0, done.stderr
    r = redis.Redis.from_url(redis_url)
    meta = r.hgetall("ls:meta")

    d = doc()
    trigger(d, "mql")["at_least"] = 500  # nobody is an MQL any more
    new = tmp_path / "new.yaml"
    new.write_text(dump(d))
    done = cli("preview", "--rules", str(new), "--redis", redis_url)
    assert done.returncode == 0, done.stderr
    assert "rescoring change" in done.stdout and "trigger mql" in done.stdout
    assert "retained input streams (45 events" in done.stdout
    assert "mql" in done.stdout and "c-0" in done.stdout  # the movers table
    assert r.hgetall("ls:meta") == meta
