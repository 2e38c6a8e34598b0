"""End to end over real HTTP, real Redis and the real Bytewax flow: events in through
`leadscore serve` (the official Segment library, the tracking pixel), scored by the Redis flow,
scores and their explanation out of the contact API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from bytewax.testing import run_main
from redis_server import free_port

from flows.scoring import FlowConfig, build_flow
from leadscore.explain import explain
from leadscore.rules import load_rules
from state.keys import Keys
from state.redis_store import RedisStore

PREFIX = "e2e"
PARTITIONS = 4
KEYS = Keys(PREFIX, PARTITIONS)
WRITE_KEYS = ("seg-write-key-1", "seg-write-key-2")

# No decay anywhere, so every score below is an exact sum of rule points.
RULES = """\
version: 1
groups:
  engagement: {}
  fit: {}
actions:
  - id: pricing-page
    name: Visited pricing
    on: page.hit
    where: {url: "*/pricing*"}
    points: 10
    repeat: true            # every hit counts, so a retried hit scored twice would show
  - id: demo-request
    name: Requested a demo
    on: form.submit
    where: {form: demo}
    points: 30
    repeat: true
fit:
  - {id: title-vp, trait: title, matches: "(?i)\\\\bvp\\\\b", points: 15, group: fit}
  - {id: country, trait: country, in: [ES, FR], points: 5, group: fit}
triggers:
  - id: mql
    score: total
    at_least: 50
    actions: [{add_segment: mql}]
stages:
  order: [awareness, decision]
  rules:
    - {on: page.hit, where: {url: "*/pricing*"}, stage: decision}
"""


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


def score(rules: Path, redis_url: str) -> None:
    """Run the live Redis flow over everything in the input streams, then stop (tail=False)."""
    config = FlowConfig(
        rules=str(rules),
        source="redis",
        redis_url=redis_url,
        partitions=PARTITIONS,
        prefix=PREFIX,
        tail=False,
    )
    run_main(build_flow(config))


def wait_for_input(redis_url: str, n: int, timeout: float = 20.0) -> None:
    """Wait until ``n`` events are in the input streams. A pixel answers after at most half
    a second even if Redis is slower (the write still completes), so a flow started right
    after the last hit could otherwise miss it on a loaded machine."""
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while True:
        entries = [f[b"e"] for p in range(PARTITIONS) for _id, f in r.xrange(KEYS.input(p))]
        if sum(len(e.split(b"\n")) for e in entries) >= n or time.monotonic() > deadline:
            r.close()
            return
        time.sleep(0.02)


class Served:
    """A `leadscore serve` child process on a free port."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "leadscore.cli", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.output = ""

    def wait_ready(self, timeout: float = 20.0) -> Served:
        """Poll /readyz: a bound on waiting for start-up, not a timing assertion."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"leadscore serve exited: {self.stop()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"leadscore serve never became ready: {self.stop()}")
            time.sleep(0.05)

    def stop(self) -> str:
        """SIGTERM (what docker sends), then everything it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.output = out.decode() + err.decode()
        return self.output


@pytest.fixture
def serve_cli(redis_url: str) -> Iterator[Callable[..., Served]]:
    """``serve_cli(*args, **env)``: `leadscore serve` configured the docker-compose way, from
    LEADSCORE_* variables, with the Redis of this test."""
    started: list[Served] = []

    def start(*args: str, **env: str) -> Served:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCORE_")}
        environ.update(LEADSCORE_REDIS_URL=redis_url, **env)
        served = Served(list(args), environ)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def contact_path(contact: str) -> str:
    return "/v1/contacts/" + httpx.URL(contact).raw_path.decode().replace("/", "%2F")


def points_of(changes: list[dict[str, Any]]) -> list[tuple[str, str, float, float]]:
    return [
        (c["rule"], c["group"], c["applied"], c["score_after"])
        for c in changes
        if c["kind"] == "points"
    ]


# --------------------------------------------------------------------------- Segment library


def test_segment_library_events_are_scored_and_explained_over_http(
    serve_cli: Callable[..., Served], rules_path: Path, redis_url: str
) -> None:
    from segment.analytics.client import Client

    served = serve_cli(
        "--prefix",
        PREFIX,
        "--partitions",
        str(PARTITIONS),
        LEADSCORE_WRITE_KEYS=",".join(WRITE_KEYS),
    ).wait_ready()
    errors: list[Exception] = []
    client = Client(
        WRITE_KEYS[1],
        host=served.url,
        on_error=lambda exc, batch: errors.append(exc),
        upload_interval=0.05,
        max_retries=0,
    )
    contact = "ana@acme.com"
    client.identify(contact, {"title": "VP Sales", "country": "ES"}, message_id="m-identify")
    client.page(contact, properties={"url": "https://acme.com/pricing"}, message_id="m-page")
    client.track(contact, "Form Submitted", {"form": "demo"}, message_id="m-demo")
    client.track(contact, "Form Submitted", {"form": "demo"}, message_id="m-demo")  # a retry
    client.flush()
    score(rules_path, redis_url)

    expected = {
        "contact": contact,
        "scores": {"engagement": 40.0, "fit": 20.0},
        "total": 60.0,
        "stage": "decision",
        "segments": ["mql"],
    }
    with httpx.Client(base_url=served.url) as http:
        view = http.get(contact_path(contact)).json()
        assert {k: view[k] for k in expected} == expected
        explained = http.get(contact_path(contact), params={"explain": "1"}).json()
        # Two reads, two moments: each answer is as of its own read.
        assert view["as_of"] >= view["updated_at"] and explained["as_of"] >= view["as_of"]
        assert {k: v for k, v in explained.items() if k not in ("changes", "as_of")} == {
            k: v for k, v in view.items() if k != "as_of"
        }
        assert points_of(explained["changes"]) == [
            ("title-vp", "fit", 15.0, 15.0),
            ("country", "fit", 5.0, 20.0),
            ("pricing-page", "engagement", 10.0, 10.0),
            ("demo-request", "engagement", 30.0, 40.0),
        ]
        assert [c["event_id"] for c in explained["changes"] if c["kind"] == "points"] == [
            "m-identify",
            "m-identify",
            "m-page",
            "m-demo",
        ]
        moves = [(c["kind"], c.get("stage") or c.get("segment")) for c in explained["changes"]]
        assert ("stage", "decision") in moves and ("segment", "mql") in moves
        # The payload is what leadscore.explain reads: it accounts for the whole score.
        story = explain(contact, explained["changes"], view, load_rules(rules_path))
        assert story.applied_total == view["total"] and story.decay_total == 0.0
        top = story.by_rule[0]
        assert (top.rule, top.name, top.applied) == ("demo-request", "Requested a demo", 30.0)

        # The library retries the same message later (say after a timeout): scored once.
        client.track(contact, "Form Submitted", {"form": "demo"}, message_id="m-demo")
        client.flush()
        client.shutdown()
        score(rules_path, redis_url)
        assert http.get(contact_path(contact)).json()["total"] == 60.0
        again = http.get(contact_path(contact), params={"explain": "1"}).json()
        assert again["changes"] == explained["changes"]
    assert errors == []

    log = served.stop()
    assert "2 write keys" in log
    assert f"partitions {PARTITIONS}" in log and f"prefix '{PREFIX}'" in log
    assert not any(key in log for key in WRITE_KEYS)


# --------------------------------------------------------------------------- pixel


def test_pixel_hits_are_scored(
    serve_cli: Callable[..., Served], rules_path: Path, redis_url: str
) -> None:
    served = serve_cli(
        "--prefix", PREFIX, "--partitions", str(PARTITIONS), "--write-key", "k"
    ).wait_ready()
    with httpx.Client(base_url=served.url) as http:
        # A Mautic-style snippet: the contact id and the page in the query string.
        pricing = {"mtc_id": "m-7", "url": "https://acme.com/pricing?plan=pro", "id": "px-1"}
        for _ in range(2):  # the same hit reloaded: one event id, scored once
            assert http.get("/t.gif", params=pricing).headers["content-type"] == "image/gif"
        http.get("/t.gif", params={**pricing, "id": "px-2"})
        http.get("/t.gif", params={"mtc_id": "m-7", "url": "https://acme.com/blog/x"})
    # Another browser, a plain <img>: a new visitor cookie names the contact, the Referer
    # header the page.
    with httpx.Client(base_url=served.url) as browser:
        browser.get("/t.gif", headers={"Referer": "https://acme.com/pricing"})
        visitor = browser.cookies["ls_vid"]
    wait_for_input(redis_url, 5)
    score(rules_path, redis_url)

    with httpx.Client(base_url=served.url) as http:
        known = http.get("/v1/contacts/m-7").json()
        assert (known["total"], known["stage"]) == (20.0, "decision")
        explained = http.get("/v1/contacts/m-7", params={"explain": "true"}).json()
        assert points_of(explained["changes"]) == [
            ("pricing-page", "engagement", 10.0, 10.0),
            ("pricing-page", "engagement", 10.0, 20.0),
        ]
        assert visitor.startswith("v-")
        anonymous = http.get(contact_path(visitor)).json()
        assert (anonymous["total"], anonymous["stage"]) == (10.0, "decision")


# --------------------------------------------------------------------------- explain reader


def test_explain_reads_packed_change_entries(serve: Callable[..., Any], redis_url: str) -> None:
    """Change entries hold one or more records (``\\n``-joined), neighbours mixed in."""
    live = serve(prefix=PREFIX, partitions=PARTITIONS)
    contact = "ana@acme.com/ñ"
    p = KEYS.partition(contact)
    neighbour = next(f"n-{i}" for i in range(10_000) if KEYS.partition(f"n-{i}") == p)

    def change(who: str, i: int) -> bytes:
        return orjson.dumps({"contact": who, "kind": "points", "rule": f"r{i}", "applied": i})

    r = redis.Redis.from_url(redis_url)
    r.xadd(KEYS.changes(p), {"c": change(contact, 0)})  # an entry with a single record
    with RedisStore(redis_url, prefix=PREFIX, partitions=PARTITIONS) as store:
        store.ensure(PARTITIONS)
        view = orjson.dumps({"contact": contact, "total": 10.0})
        first = [change(who, i) for i in (1, 2, 3) for who in (contact, neighbour)]
        store.checkpoint(p, 1, read_models={contact: view}, changes=first)
        store.checkpoint(p, 2, changes=[change(neighbour, 4), change(contact, 4)])
    assert all(b"\n" in fields[b"c"] for _id, fields in r.xrange(KEYS.changes(p))[1:])

    with httpx.Client(base_url=live.url) as http:
        path = contact_path(contact)
        everything = http.get(path, params={"explain": "1"}).json()["changes"]
        assert [c["rule"] for c in everything] == ["r0", "r1", "r2", "r3", "r4"]
        assert all(c["contact"] == contact for c in everything)
        newest = http.get(path, params={"explain": "1", "limit": "3"}).json()["changes"]
        assert [c["rule"] for c in newest] == ["r2", "r3", "r4"]
        last = http.get(path, params={"explain": "1", "limit": "1"}).json()["changes"]
        assert [c["rule"] for c in last] == ["r4"]


# --------------------------------------------------------------------------- the command


def test_serve_without_a_write_key_says_how_to_set_one(
    serve_cli: Callable[..., Served],
) -> None:
    refused = serve_cli()
    assert refused.proc.wait(timeout=20) == 2
    message = refused.stop()
    assert "no write key configured" in message
    assert "LEADSCORE_WRITE_KEYS" in message and "--write-key" in message

    pixel_only = serve_cli("--pixel-only").wait_ready()
    with httpx.Client(base_url=pixel_only.url) as http:
        assert http.get("/t.gif", params={"contact": "c-1"}).status_code == 200
        refused_write = http.post("/v1/events", json=[{"contact": "c-1", "action": "page.hit"}])
        assert refused_write.status_code == 401
    assert "0 write keys" in pixel_only.stop()


def test_serve_help_lists_the_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "leadscore.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert done.returncode == 0, done.stderr
    for word in ("--host", "--port", "--redis", "--write-key", "--cors-origin", "--pixel-only"):
        assert word in done.stdout
    assert "LEADSCORE_WRITE_KEYS" in done.stdout
