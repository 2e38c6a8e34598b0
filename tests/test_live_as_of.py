"""Live scores as of the moment of the read: real Redis, the real Redis flow, real HTTP.

The flow writes a contact's read model when the contact changes; a reader brings it to the
time of the read (leadscore.readmodel.view_at). So a contact that sends nothing keeps cooling
down in every answer. And no event dated in the future gets into the flow's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from bytewax.testing import run_main

from flows.scoring import FlowConfig, build_flow
from leadscore.readmodel import view_at
from state.keys import Keys
from state.redis_store import RedisStore

KEYS = Keys("ls", 16)
HALF_LIFE = 60.0

RULES = """\
version: 1
groups:
  engagement: {decay: {half_life: 1m}}
  fit: {}
actions:
  - {id: demo, on: form.submit, points: 100, repeat: true}
fit:
  - {id: vp, trait: title, matches: "(?i)\\\\bvp\\\\b", points: 15}
grades:
  engagement: {group: engagement, bands: {"1": 99, "2": 50}, otherwise: "3"}
scale: {score: total, max: 200}
"""


def score(rules: Path, redis_url: str) -> None:
    """The live Redis flow over everything in the input streams, then stop (tail=False)."""
    config = FlowConfig(rules=str(rules), source="redis", redis_url=redis_url, tail=False)
    run_main(build_flow(config))


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_a_contact_decays_between_two_reads_with_no_event_between(
    serve: Callable[..., Any], redis_url: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    sent_at = time.time() - 1.0
    event = {
        "contact": "ana@acme.com",
        "action": "form.submit",
        "ts": sent_at,
        "id": "e-1",
        "traits": {"title": "VP Sales"},
    }
    with RedisStore(redis_url) as store:
        store.ensure(16)
        store.send_events([orjson.dumps(event)])
    score(rules, redis_url)
    r = redis.Redis.from_url(redis_url)
    key = KEYS.contact_read_model("ana@acme.com")
    stored = r.get(key)
    assert stored is not None
    live = serve()
    with httpx.Client(base_url=live.url) as http:
        first = http.get("/v1/contacts/ana@acme.com").json()
        time.sleep(0.2)  # the contact sends nothing; only time passes
        second = http.get("/v1/contacts/ana@acme.com").json()
    assert r.get(key) == stored  # nobody wrote: the reads decayed it themselves

    for got in (first, second):
        age = epoch(got["as_of"]) - sent_at  # as_of is rendered to the millisecond
        expected = 100 * 2 ** (-age / HALF_LIFE)
        assert abs(got["scores"]["engagement"] - expected) < 0.01, (got, expected)
        assert got["scores"]["fit"] == 15.0
        assert got["total"] == round(got["scores"]["engagement"] + 15.0, 4)
        assert got["normalized"] == round(got["total"] / 2, 1)
        assert got["updated_at"] == first["updated_at"]
        assert abs(epoch(got["updated_at"]) - sent_at) < 0.001  # its own time
        assert set(got) == {
            "contact", "scores", "total", "normalized", "grade", "stage", "segments", "tags",
            "updated_at", "as_of",
        }  # fmt: skip
    assert second["as_of"] > first["as_of"]
    assert second["scores"]["engagement"] < first["scores"]["engagement"]
    # The grade follows the decayed score: what view_at says for the time of each read.
    doc = orjson.loads(stored)
    for got in (first, second):
        assert view_at(doc, epoch(got["as_of"]))["grade"] == got["grade"]
    later = view_at(doc, sent_at + HALF_LIFE)  # what any reader gets a minute on
    assert later["scores"]["engagement"] == 50.0 and later["grade"] == "2"


def test_events_dated_in_the_future_are_rejected_live(
    serve: Callable[..., Any], redis_url: str, tmp_path: Path
) -> None:
    """Over HTTP (the service answers which and why) and straight into the streams (the flow
    dead-letters it): neither reaches a contact or the partition clock."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    future = {"contact": "z", "action": "form.submit", "ts": "2099-01-01T00:00:00Z"}
    live = serve()
    with httpx.Client(base_url=live.url) as http:
        answer = http.post(
            "/v1/events",
            content=orjson.dumps([future, {**future, "ts": time.time() + 30}]),
            headers={"Authorization": "Bearer test-key"},
        ).json()
    assert answer["accepted"] == 1 and answer["rejected"] == 1  # 30 s ahead: within skew
    (error,) = answer["errors"]
    assert error["index"] == 0 and error["code"] == "bad_ts"
    assert "in the future" in error["message"]

    with RedisStore(redis_url) as store:
        store.send_events([orjson.dumps({**future, "contact": "y"})])
    score(rules, redis_url)
    with RedisStore(redis_url) as store:
        dead = [d for d in store.read_dead() if "2099" in d.get("raw", "")]
        assert {d["code"] for d in dead} == {"bad_ts"} and len(dead) == 2  # service + flow
        assert all("in the future" in d["reason"] for d in dead)
        assert store.read_model("y") is None
        clocks = [store.load_clock(p) for p in range(16)]
    assert max(c or 0.0 for c in clocks) < time.time() + 300
