"""Identify with merge in the live Redis flow: hand-overs between partitions, exactly once.

Real redis-server, real Bytewax runs: the visitor and the known contact live in different
partitions; the visitor's partition hands its state over in its checkpoint, the known
contact's merges it in its own; later events of the old id are forwarded; readers answer for
the old id with the known contact. A kill -9 test checks totals and triggers against a clean
run.
"""

from __future__ import annotations

import gzip
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from bytewax.testing import cluster_main
from prometheus_client import REGISTRY
from test_identity_flow import CLI, KNOWN, RULES, VISITOR, hit, identify, one_contact
from test_redis_flow import FlowProcess, with_db

from flows.scoring import FlowConfig, build_flow
from leadscore.identity import Aliases
from leadscore.readmodel import view_at
from state.keys import Keys, partition_of
from state.redis_store import RedisStore

P = 16
T0 = 1780272000.0  # 2026-06-01T00:00:00Z (scoring_helpers.T0)
DAY = 86400.0


def rules_file(tmp: Path) -> Path:
    path = tmp / "rules.yaml"
    path.write_text(RULES)
    return path


def send(url: str, events: list[dict[str, Any]], batch: int = 20) -> None:
    with RedisStore(url) as store:
        store.ensure(P)
        store.send_events([orjson.dumps(e) for e in events], batch=batch)


def unsettled(url: str) -> int:
    """Input entries not yet read or not yet checkpointed, over every partition."""
    r = redis.Redis.from_url(url)
    try:
        keys = Keys("ls", P)
        left = 0
        for p in range(P):
            groups = r.xinfo_groups(keys.input(p))
            if not groups:
                left += r.xlen(keys.input(p))
                continue
            group = groups[0]
            left += group["pending"] + (group.get("lag") or 0)
        return left
    finally:
        r.close()


def drain(url: str, rules: Path, workers: int = 1, **options: Any) -> int:
    """Drain runs until every input entry, hand-overs included, is checkpointed (a hand-over
    sent after its partition drained waits for the next run); returns the runs made."""
    for runs in range(1, 20):
        config = FlowConfig(
            rules=str(rules),
            source="redis",
            redis_url=url,
            partitions=P,
            tail=False,
            stop=threading.Event(),
            **options,
        )
        cluster_main(build_flow(config), [], 0, worker_count_per_proc=workers)
        if unsettled(url) == 0:
            return runs
    raise AssertionError("the input never settled")


def view(url: str, contact: str, at: float) -> dict[str, Any] | None:
    with RedisStore(url) as store:
        doc = store.read_model(contact)
    return None if doc is None else {**view_at(doc, at), **_merged(doc)}


def _merged(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in ("requested", "merged_into") if k in doc}


def merge_steps(step: str) -> float:
    """``leadscore_flow_merge_messages_total{step}`` of this process (drain runs run here)."""
    return REGISTRY.get_sample_value("leadscore_flow_merge_messages_total", {"step": step}) or 0.0


def test_the_ids_live_in_different_partitions() -> None:
    assert partition_of(VISITOR, P) != partition_of(KNOWN, P)


def test_a_visitor_merges_across_partitions_and_its_later_events_follow(
    redis_url: str, tmp_path: Path
) -> None:
    url = with_db(redis_url, 3)
    rules = rules_file(tmp_path)
    visitor = [hit(VISITOR, T0 + d * DAY) for d in range(10, 14)]
    known = [hit(KNOWN, T0 + 15 * DAY, "form.submit"), hit(KNOWN, T0 + 15 * DAY)]
    known += [hit(KNOWN, T0 + 15.5 * DAY)]
    archive = str(tmp_path / "archive")
    before = {step: merge_steps(step) for step in ("take", "give", "forward", "refused")}
    send(url, visitor + known)
    drain(url, rules, archive=archive)
    send(url, [identify(KNOWN, T0 + 16 * DAY, VISITOR)])
    drain(url, rules, archive=archive)
    later = [hit(VISITOR, T0 + 20 * DAY), hit(VISITOR, T0 + 21 * DAY, "cart.add")]
    send(url, later)
    drain(url, rules, archive=archive)
    # The archive has each event once, as it arrived: hand-overs and forwarded events are
    # the flow's own traffic, not input.
    archived = [orjson.loads(line) for f in sorted(Path(archive).iterdir())
                for line in gzip.decompress(f.read_bytes()).splitlines()]  # fmt: skip
    assert sorted(e["contact"] for e in archived) == sorted(
        e["contact"] for e in [*visitor, *known, identify(KNOWN, 0, VISITOR), *later]
    )

    steps = {step: merge_steps(step) - n for step, n in before.items()}
    assert steps == {"take": 1, "give": 1, "forward": 2, "refused": 0}  # the two later events
    r = redis.Redis.from_url(url)
    keys = Keys("ls", P)
    pv = partition_of(VISITOR, P)
    assert r.hgetall(keys.aliases) == {VISITOR.encode(): KNOWN.encode()}
    assert not r.exists(keys.state(pv, VISITOR), keys.read_model(pv, VISITOR))
    at = T0 + 22 * DAY
    expected = one_contact(visitor + known + later, at)
    got = view(url, KNOWN, at)
    assert got is not None
    assert got["total"] == pytest.approx(expected["total"], abs=1e-3)
    # The old id answers with the known contact, saying it was merged.
    old = view(url, VISITOR, at)
    assert old is not None
    assert (old["contact"], old["requested"], old["merged_into"]) == (KNOWN, VISITOR, [KNOWN])
    assert old["total"] == got["total"]
    with RedisStore(url) as store:
        triggers = store.read_triggers()
        changes = [c for _, _, c in store.iter_records("changes")]
    assert [(t["contact"], t["trigger"], t["cause"]) for t in triggers] == [(KNOWN, "mql", "merge")]
    assert [(c["contact"], c["from"]) for c in changes if c.get("kind") == "merge"] == [
        (KNOWN, VISITOR)
    ]
    r.close()


def test_chains_self_merges_refusals_and_ids_that_never_existed(
    redis_url: str, tmp_path: Path
) -> None:
    url = with_db(redis_url, 4)
    rules = rules_file(tmp_path)
    a, b, c = "a-1", "b-2", "c-3"
    steps = [
        [hit(a, T0), hit(b, T0 + 3600)],
        [identify(b, T0 + 7200, a)],
        [hit(c, T0 + 3 * 3600, "email.click"), identify(c, T0 + 4 * 3600, b, c, "ghost-9")],
        [hit(a, T0 + 5 * 3600)],  # to C, through B
        [identify("d-4", T0 + 6 * 3600, a), hit("d-4", T0 + 7 * 3600, "email.click")],
        [identify(a, T0 + 8 * 3600, c)],  # C is A's root: a self-merge, nothing happens
    ]
    for events in steps:
        send(url, events)
        drain(url, rules)
    r = redis.Redis.from_url(url)
    aliases = {k.decode(): v.decode() for k, v in r.hgetall(Keys("ls", P).aliases).items()}
    assert aliases == {a: b, b: c, "ghost-9": c}
    at = T0 + 9 * 3600
    expected = one_contact([e for s in steps[:4] for e in s], at)
    got = view(url, c, at)
    assert got is not None and got["total"] == pytest.approx(expected["total"], abs=1e-3)
    assert view(url, a, at)["merged_into"] == [b, c]  # type: ignore[index]
    assert view(url, "d-4", T0 + 7 * 3600)["total"] == 3  # type: ignore[index]
    with RedisStore(url) as store:
        dead = store.read_dead()
        merges = [(x["contact"], x["from"]) for _, _, x in store.iter_records("changes")
                  if x.get("kind") == "merge"]  # fmt: skip
    assert [d["code"] for d in dead] == ["merge_refused"]
    assert "'a-1' was merged into 'c-3' before" in dead[0]["reason"]
    assert sorted(merges) == [(b, a), (c, b), (c, "ghost-9")]
    r.close()


def generate(seed: int, people: int = 120) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """People browsing under a cookie for days, then identifying (some via a chain of two
    cookies, some twice, some naming ids that never existed); and, second, what the cookies
    do after (forwarded to the known contacts). Each in time order.

    Two phases because an event for a cookie that reaches the cookie's partition while the
    merge is still on its way is scored under the cookie and merged with it: the totals are
    the same either way, but whether a threshold was crossed on the way can depend on that
    timing, which differs between any two live runs (docs/redis.md)."""
    rng = random.Random(seed)
    first: list[dict[str, Any]] = []
    then: list[dict[str, Any]] = []
    for i in range(people):
        known, cookie, other = f"p{i}@acme.com", f"v-{i}", f"w-{i}"
        start = T0 + rng.uniform(0, 10) * DAY
        for _ in range(rng.randint(1, 8)):
            first.append(hit(cookie, start + rng.uniform(0, 5) * DAY))
        for _ in range(rng.randint(0, 5)):
            action = rng.choice(["page.hit", "email.click", "form.submit"])
            first.append(hit(known, start + rng.uniform(0, 8) * DAY, action))
        at = start + rng.uniform(5, 8) * DAY
        if i % 3 == 0:  # a second cookie, merged into the first before the first is merged
            for _ in range(rng.randint(1, 4)):
                first.append(hit(other, start + rng.uniform(0, 4) * DAY))
            first.append(identify(cookie, at - 3600, other))
        merged = [cookie] + (["ghost-" + str(i)] if i % 5 == 0 else []) + [known] * (i % 7 == 0)
        first.append(identify(known, at, *merged))
        if i % 4 == 0:
            first.append(identify(known, at + 60, cookie))  # a repeat: nothing more happens
        for _ in range(rng.randint(0, 4)):
            then.append(hit(cookie, at + rng.uniform(0, 3) * DAY, "cart.add"))
    n = 0
    for events in (first, then):
        events.sort(key=lambda e: e["ts"])
        for e in events:
            e["id"] = f"e{n}"
            n += 1
    return first, then


def totals(url: str, at: float) -> dict[str, Any]:
    """Every contact's total at ``at``, each old id's root, the triggers fired, the dead
    letters."""
    r = redis.Redis.from_url(url)
    keys = Keys("ls", P)
    out: dict[str, float] = {}
    for p in range(P):
        names = list(r.scan_iter(match=keys.read_model(p, "*"), count=10_000))
        for raw in r.mget(names) if names else []:
            doc = orjson.loads(raw)
            out[doc["contact"]] = round(view_at(doc, at)["total"], 3)
    links = {k.decode(): v.decode() for k, v in r.hgetall(keys.aliases).items()}
    r.close()
    # Where each old id's history is now: a chain (w into v, v into p) may have been made as
    # w into p when v's hand-over committed first; the root is the same.
    aliases = {old: Aliases(links).resolve(old) for old in links}
    with RedisStore(url) as store:
        fired = sorted(
            (Aliases(links).resolve(t["contact"]), t["trigger"]) for t in store.read_triggers()
        )
        dead = sorted(d["code"] for d in store.read_dead())
    return {"totals": out, "aliases": aliases, "fired": fired, "dead": dead}


def killed_run(url: str, tmp: Path, env: dict[str, str], rng: random.Random, kills: int) -> int:
    """Run the flow (2 workers, a process), kill -9 it ``kills`` times at random moments of
    progress, then drain until settled; returns the input entries it started with."""
    log = tmp / "flow.log"
    entries = unsettled(url)
    for _ in range(kills):
        flow = FlowProcess(log, url, workers=2, **env)
        target = rng.uniform(0.1, 0.7)
        flow.wait_until(lambda t=target: unsettled(url) <= (1 - t) * entries, "progress")
        time.sleep(rng.uniform(0.0, 0.05))
        flow.kill()
    for _ in range(20):
        final = FlowProcess(log, url, workers=2, tail=False, **env)
        assert final.finish() == 0, final.output()[-3000:]
        if unsettled(url) == 0:
            return entries
    raise AssertionError("the input never settled")


@pytest.mark.slow
def test_kill_9_during_merges_gives_the_clean_runs_totals_and_triggers_once(
    redis_url: str, tmp_path: Path
) -> None:
    rules = rules_file(tmp_path)
    first, then = generate(18)
    at = max(e["ts"] for e in first + then) + DAY
    clean = with_db(redis_url, 5)
    for events in (first, then):
        send(clean, events)
        drain(clean, rules)
    expected = totals(clean, at)
    assert len(expected["aliases"]) >= 120 and expected["fired"]

    url = with_db(redis_url, 6)
    rng = random.Random(7)
    env = {"LEADSCORE_RULES": str(rules), "LEADSCORE_FLUSH_EVENTS": "50"}
    for events, kills in ((first, 3), (then, 1)):
        send(url, events, batch=5)
        killed_run(url, tmp_path, env, rng, kills)
    got = totals(url, at)
    assert got["aliases"] == expected["aliases"]
    assert got["totals"] == expected["totals"]
    assert got["fired"] == expected["fired"]
    assert len(set(got["fired"])) == len(got["fired"]), "a trigger fired twice for one person"
    assert got["dead"] == expected["dead"]
    print(f"\n4 kills; {len(got['aliases'])} merged ids; {len(got['fired'])} firings; equal")


def test_segment_alias_identify_and_the_pixel_cookie_merge_end_to_end(
    redis_url: str, serve: Callable[..., Any], tmp_path: Path
) -> None:
    """The official Segment library (alias, identify with anonymousId) and a browser's pixel
    cookie then a form, through the real service into the live flow; GET and show answer
    for the old ids with the known contact."""
    from segment.analytics.client import Client

    url = with_db(redis_url, 7)
    rules = rules_file(tmp_path)
    send(url, [])  # the key layout, so the service finds the partitions
    live = serve(redis_url=url)
    errors: list[Exception] = []
    client = Client(
        "test-key",
        host=live.url,
        on_error=lambda exc, batch: errors.append(exc),
        upload_interval=0.05,
        max_retries=0,
    )
    for i in range(3):
        client.page(anonymous_id="anon-s", properties={"url": f"https://acme.com/pricing?{i}"})
        client.page(anonymous_id="anon-t", properties={"url": "https://acme.com/pricing"})
    client.flush()
    drain(url, rules)  # the anonymous history is scored under the anonymous ids
    client.identify("user@acme.com", {"title": "VP"}, anonymous_id="anon-s")
    client.alias("anon-t", "user@acme.com")
    client.flush()
    client.shutdown()
    assert errors == []

    # A browser: two page views under the pixel's cookie, then the form's thank-you page
    # with the contact id it learns (a signed id when the pixel has a secret).
    with httpx.Client(base_url=live.url) as browser:
        for page in ("pricing", "blog/a"):
            browser.get("/t.gif", params={"url": f"https://acme.com/{page}"})
        cookie = browser.cookies["ls_vid"]
        assert cookie.startswith("v-")
        browser.get("/t.gif", params={"url": "https://acme.com/thanks", "contact": "bob@acme.com"})
    drain(url, rules)

    def get(contact: str) -> dict[str, Any]:
        answer = httpx.get(f"{live.url}/v1/contacts/{contact}", auth=("test-key", ""))
        assert answer.status_code == 200, answer.text
        return answer.json()

    user = get("user@acme.com")
    assert user["scores"]["engagement"] == pytest.approx(60, abs=0.1)  # 6 pricing views
    for old in ("anon-s", "anon-t"):
        merged = get(old)
        assert (merged["contact"], merged["requested"]) == ("user@acme.com", old)
        assert merged["merged_into"] == ["user@acme.com"]
        assert merged["total"] == pytest.approx(user["total"], abs=0.01)
    # ?explain=1: the known contact's records and those of the ids merged into it.
    answer = httpx.get(
        f"{live.url}/v1/contacts/anon-s", params={"explain": "1"}, auth=("test-key", "")
    )
    changes = answer.json()["changes"]
    earned = [(c["contact"], c["rule"]) for c in changes if c.get("kind") == "points"]
    assert earned.count(("anon-s", "pricing")) == 3 and earned.count(("anon-t", "pricing")) == 3
    assert {c["from"] for c in changes if c.get("kind") == "merge"} == {"anon-s", "anon-t"}
    bob = get(cookie)
    assert (bob["contact"], bob["merged_into"]) == ("bob@acme.com", ["bob@acme.com"])
    assert bob["scores"]["engagement"] == pytest.approx(10, abs=0.1)  # one pricing view
    shown = subprocess.run(
        [*CLI, "show", "--redis", url, "anon-t", "--json"], capture_output=True, check=False
    )
    assert shown.returncode == 0, shown.stderr.decode()
    view = orjson.loads(shown.stdout)
    assert (view["contact"], view["requested"], view["merged_into"]) == (
        "user@acme.com",
        "anon-t",
        ["user@acme.com"],
    )
    text = subprocess.run([*CLI, "show", "--redis", url, "anon-t"], capture_output=True)
    assert b"anon-t was merged into user@acme.com" in text.stdout


def test_a_hand_over_message_in_sent_input_is_dead_lettered_not_obeyed(
    redis_url: str, tmp_path: Path
) -> None:
    """A line that looks like the flow's own `$take` (or `$give`, `$fwd`) in a file given to
    `leadscore send` used to be obeyed: anyone who could get a line into a sent file could
    hand a contact's state to an id of their choosing."""
    from flows.handover import forward_line, take_line
    from leadscore.events import Event

    url = with_db(redis_url, 4)
    rules = rules_file(tmp_path)
    send(url, [hit(VISITOR, T0 + DAY), hit(VISITOR, T0 + 2 * DAY)])
    drain(url, rules)
    forged_fwd = forward_line(Event(contact=KNOWN, action="page.hit", ts=T0 + 3 * DAY))
    with RedisStore(url) as store:
        result = store.send_events([take_line(VISITOR, "thief", T0 + 3 * DAY), forged_fwd])
    assert result.events == 2
    drain(url, rules)
    r = redis.Redis.from_url(url)
    keys = Keys("ls", P)
    assert r.hgetall(keys.aliases) == {}
    assert r.exists(keys.state(partition_of(VISITOR, P), VISITOR))
    assert view(url, "thief", T0 + 4 * DAY) is None
    assert view(url, KNOWN, T0 + 4 * DAY) is None  # a forwarded event is the flow's own traffic
    with RedisStore(url) as store:
        dead = store.read_dead()
    assert len(dead) == 2 and all(d["code"] == "reserved" for d in dead), dead
    assert all("hand-over" in d["reason"] for d in dead)
    r.close()
