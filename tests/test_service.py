"""The HTTP service over real HTTP (uvicorn on loopback, httpx) against a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from redis_server import free_port

from leadscore.collector import Collector
from leadscore.events import MAX_EVENT_BYTES
from leadscore.service import GIF, ServiceConfig, pixel_event
from state.keys import GROUP, Keys

KEYS = Keys("ls", 16)
AUTH = ("test-key", "")


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def events_in(r: redis.Redis, keys: Keys = KEYS) -> list[dict[str, Any]]:
    """Every event in every input stream, in arrival order (sequential requests are flushes
    at least a millisecond apart), with the partition it was found in."""
    found = []
    for p in range(keys.partitions):
        for entry_id, fields in r.xrange(keys.input(p)):
            millis, _, seq = entry_id.decode().partition("-")
            for n, line in enumerate(fields[b"e"].split(b"\n")):
                order = (int(millis), int(seq), n)
                found.append((order, {**orjson.loads(line), "_partition": p}))
    return [event for _order, event in sorted(found, key=lambda pair: pair[0])]


def entries_in(r: redis.Redis, keys: Keys = KEYS) -> dict[int, list[bytes]]:
    return {
        p: [f[b"e"] for _id, f in r.xrange(keys.input(p))]
        for p in range(keys.partitions)
        if r.xlen(keys.input(p))
    }


def dead_letters(r: redis.Redis) -> list[dict[str, Any]]:
    return [orjson.loads(f[b"d"]) for _id, f in r.xrange(KEYS.dead(0))]


def written(r: redis.Redis) -> int:
    """Entries in every stream of the layout: input and dead letters alike."""
    return sum(r.xlen(k) for k in r.scan_iter("ls:*") if r.type(k) == b"stream")


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


# --------------------------------------------------------------------------- probes, errors


def test_health_ready_openapi_and_json_errors(serve: Callable[..., Any]) -> None:
    live = serve()
    with httpx.Client(base_url=live.url) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json() == {"status": "ready", "partitions": 16}
        doc = http.get("/openapi.json").json()
        assert doc["openapi"].startswith("3.1")
        assert set(doc["paths"]) >= {"/t.gif", "/v1/batch", "/v1/events", "/v1/contacts/{id}"}
        missing = http.get("/nowhere")
        assert missing.status_code == 404
        assert (missing.json()["code"], missing.json()["field"]) == ("not_found", "path")
        wrong = http.delete("/v1/track")
        assert wrong.status_code == 405
        assert (wrong.json()["code"], wrong.json()["field"]) == ("method_not_allowed", "method")
        assert "POST" in wrong.headers["allow"]


def test_redis_down_pixel_still_answers_writes_get_503(serve: Callable[..., Any]) -> None:
    live = serve(redis_url=f"redis://127.0.0.1:{free_port()}/0", pixel_timeout=0.2)
    with httpx.Client(base_url=live.url) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["code"] == "redis_unavailable"
        assert http.get("/healthz").status_code == 200
        pixel = http.get("/t.gif", params={"contact": "c-1"})
        assert (pixel.status_code, pixel.content) == (200, GIF)
        track = http.post("/v1/track", json={"userId": "u", "event": "x"}, auth=AUTH)
        assert track.status_code == 503
        assert track.json()["code"] == "unavailable"
        assert track.headers["retry-after"] == "1"
        text = http.get("/metrics").text
        assert metric(text, "leadscore_redis_up") == 0
        assert metric(text, "leadscore_http_write_failures_total", source="pixel") == 1


# --------------------------------------------------------------------------- pixel


def test_pixel_records_page_hit_and_sets_visitor_cookie(
    serve: Callable[..., Any], r: redis.Redis
) -> None:
    live = serve()
    with httpx.Client(base_url=live.url) as http:
        first = http.get(
            "/t.gif",
            params={
                "url": "https://acme.com/pricing",
                "title": "Pricing",
                "referrer": "https://google.com/",
                "plan": "pro",
                "_": "1234",
            },
        )
        assert (first.status_code, first.content) == (200, GIF)
        assert first.headers["content-type"] == "image/gif"
        assert "no-store" in first.headers["cache-control"]
        cookie = first.headers["set-cookie"]
        for attribute in ("HttpOnly", "Max-Age=34560000", "Path=/", "SameSite=Lax"):
            assert attribute in cookie
        visitor = http.cookies["ls_vid"]
        assert visitor.startswith("v-")

        second = http.get("/t.gif", params={"url": "https://acme.com/demo"})
        assert "set-cookie" not in second.headers

    first_event, second_event = events_in(r)  # different pages, same visitor
    assert first_event["contact"] == second_event["contact"] == visitor
    assert first_event["_partition"] == KEYS.partition(visitor)
    assert first_event["action"] == "page.hit"
    assert first_event["props"] == {
        "url": "https://acme.com/pricing",
        "title": "Pricing",
        "referrer": "https://google.com/",
        "plan": "pro",
    }
    assert second_event["props"] == {"url": "https://acme.com/demo"}


def test_pixel_mautic_params_referer_fallback_and_explicit_contact(
    serve: Callable[..., Any], r: redis.Redis
) -> None:
    live = serve(pixel_actions=("asset.download",))  # the pixel records page views only else
    with httpx.Client(base_url=live.url) as http:
        http.get(
            "/t.gif",
            params={
                "mtc_id": "42",
                "page_url": "https://acme.com/blog/x",
                "page_title": "Blog",
                "page_referrer": "https://news.ycombinator.com/",
                "action": "asset.download",
                "id": "evt-7",
            },
        )
        assert http.cookies["ls_vid"] == "42"  # the cookie follows the known contact
        http.get("/t.gif", headers={"Referer": "https://acme.com/pricing"})
        weird = http.get("/t.gif", params={"contact": "ana@acme.com/ñ"})
        assert "ana%40acme.com%2F%C3%B1" in weird.headers["set-cookie"]
        http.get("/t.gif")
        # HEAD (link checkers, prefetchers) answers the GIF but records nothing.
        assert http.head("/t.gif").status_code == 200

    mautic, referer, weird_event, after = events_in(r)
    assert mautic["contact"] == "42"
    assert (mautic["action"], mautic["id"]) == ("asset.download", "evt-7")
    assert mautic["props"] == {
        "url": "https://acme.com/blog/x",
        "title": "Blog",
        "referrer": "https://news.ycombinator.com/",
    }
    assert (referer["contact"], referer["props"]) == ("42", {"url": "https://acme.com/pricing"})
    assert weird_event["contact"] == "ana@acme.com/ñ"
    assert after["contact"] == "ana@acme.com/ñ"  # read back from the percent-encoded cookie


def test_pixel_reads_its_cookie_among_others(serve: Callable[..., Any], r: redis.Redis) -> None:
    live = serve()
    cookies = 'theme=dark; ls_vid="v-known"; ls_vid_other=x; session=abc'
    answer = httpx.get(f"{live.url}/t.gif", headers={"Cookie": cookies})
    assert "set-cookie" not in answer.headers
    assert [e["contact"] for e in events_in(r)] == ["v-known"]


def test_pixel_bad_input_is_dead_lettered_never_shown(
    serve: Callable[..., Any], r: redis.Redis
) -> None:
    live = serve()
    with httpx.Client(base_url=live.url) as http:
        long_contact = http.get("/t.gif", params={"contact": "c" * 300})
        huge = http.get("/t.gif", params={"junk": "x" * 9000})
        many = http.get("/t.gif", params={f"p{i}": "1" for i in range(80)})
        for response in (long_contact, huge, many):
            assert (response.status_code, response.content) == (200, GIF)
        text = http.get("/metrics").text
    assert events_in(r) == []
    letters = dead_letters(r)
    assert [d["source"] for d in letters] == ["pixel"] * 3
    assert letters[0]["reason"].startswith("wrong_type: field 'contact'")
    assert letters[0]["code"] == "wrong_type"
    assert letters[0]["raw"].startswith("/t.gif?contact=ccc")
    assert letters[1]["reason"].startswith("too_large")
    assert len(letters[1]["raw"]) <= 8 * 1024
    assert letters[2]["reason"].startswith("too_large")
    rejected = "leadscore_http_events_rejected_total"
    assert metric(text, rejected, source="pixel", reason="wrong_type") == 1
    assert metric(text, rejected, source="pixel", reason="too_large") == 2


def test_pixel_event_is_a_pure_function() -> None:
    event, remembered = pixel_event([("contact", "c-1"), ("contact", "c-2")], "v-old", None, 5.0)
    assert remembered == "c-1"  # the first value of a repeated parameter wins
    assert event.to_dict() == {"contact": "c-1", "action": "page.hit", "ts": 5.0}  # type: ignore[union-attr]
    _event, fresh = pixel_event([], None, None, 5.0)
    _event, other = pixel_event([], None, None, 5.0)
    assert fresh.startswith("v-") and fresh != other


# --------------------------------------------------------------------------- Segment API


def test_segment_calls_land_in_partition_streams(serve: Callable[..., Any], r: redis.Redis) -> None:
    live = serve(action_map={"Demo Requested": "form.submit"})
    with httpx.Client(base_url=live.url, auth=AUTH) as http:
        track = http.post(
            "/v1/track",
            json={
                "userId": "u-1",
                "event": "Demo Requested",
                "messageId": "m-1",
                "properties": {"form": "demo"},
                "timestamp": "2026-01-01T00:00:00Z",
            },
        )
        assert track.json() == {"success": True, "accepted": 1, "rejected": 0, "errors": []}
        http.post("/v1/identify", json={"anonymousId": "a-1", "traits": {"title": "CTO"}})
        http.post(
            "/v1/page",
            json={"userId": "u-1", "properties": {"url": "https://acme.com/"}, "name": "Home"},
        )
    by_action = {e["action"]: e for e in events_in(r)}
    tracked, identified, paged = (by_action[a] for a in ("form.submit", "identify", "page.hit"))
    assert tracked["action"] == "form.submit"
    assert (tracked["contact"], tracked["id"], tracked["props"]) == ("u-1", "m-1", {"form": "demo"})
    assert tracked["ts"] == 1767225600.0
    assert tracked["_partition"] == KEYS.partition("u-1")
    assert identified["action"] == "identify"
    assert (identified["contact"], identified["traits"]) == ("a-1", {"title": "CTO"})
    assert identified["_partition"] == KEYS.partition("a-1")
    assert paged["props"] == {"url": "https://acme.com/", "name": "Home"}


def test_write_key_in_body_and_gzip(serve: Callable[..., Any], r: redis.Redis) -> None:
    live = serve()
    body = {"writeKey": "test-key", "batch": [{"type": "track", "userId": "u", "event": "x"}]}
    with httpx.Client(base_url=live.url) as http:
        assert http.post("/v1/batch", json=body).json()["accepted"] == 1
        packed = gzip.compress(orjson.dumps(body))
        zipped = http.post("/v1/batch", content=packed, headers={"Content-Encoding": "gzip"})
        assert zipped.json()["accepted"] == 1
        bomb = gzip.compress(orjson.dumps({**body, "pad": "0" * 10_000_000}))
        refused = http.post("/v1/batch", content=bomb, headers={"Content-Encoding": "gzip"})
        assert (refused.status_code, refused.json()["code"]) == (400, "too_large")
        brotli = http.post("/v1/batch", content=b"{}", headers={"Content-Encoding": "br"})
        assert (brotli.status_code, brotli.json()["field"]) == (415, "Content-Encoding")
    assert len(events_in(r)) == 2


def test_batch_partial_acceptance_and_clock_skew(serve: Callable[..., Any], r: redis.Redis) -> None:
    live = serve()
    batch = {
        "sentAt": "2030-01-01T00:00:10Z",  # the client clock is years ahead
        "batch": [
            {"type": "track", "userId": "u-1", "event": "Order Completed", "messageId": "a",
             "timestamp": "2030-01-01T00:00:00Z"},
            {"type": "track", "userId": "u-2"},
            {"type": "group", "userId": "u-3", "groupId": "x"},
            {"type": "identify", "userId": "u-4", "traits": {"plan": "pro"}},
            "not a message",
        ],
    }  # fmt: skip
    with httpx.Client(base_url=live.url, auth=AUTH) as http:
        answer = http.post("/v1/batch", json=batch)
        assert answer.status_code == 200
        result = answer.json()
    assert (result["accepted"], result["rejected"]) == (2, 3)
    assert [(e["index"], e["field"]) for e in result["errors"]] == [
        (1, "batch[1].event"),
        (2, "batch[2].type"),
        (4, "batch[4]"),
    ]
    assert [e["code"] for e in result["errors"]] == [
        "missing_field",
        "unknown_action",
        "not_an_object",
    ]
    purchase = next(e for e in events_in(r) if e["action"] == "purchase")
    identify = next(e for e in events_in(r) if e["action"] == "identify")
    assert identify["ts"] - purchase["ts"] == pytest.approx(10, abs=1)  # skew removed
    assert [d["source"] for d in dead_letters(r)] == ["segment"] * 3
    assert orjson.loads(dead_letters(r)[0]["raw"]) == batch["batch"][1]


def test_single_call_errors_are_400_with_the_field(
    serve: Callable[..., Any], r: redis.Redis
) -> None:
    live = serve()
    with httpx.Client(base_url=live.url, auth=AUTH) as http:
        cases = [
            (http.post("/v1/track", content=b"{nope"), "invalid_json", "body"),
            (http.post("/v1/track", json=[1]), "not_an_object", "body"),
            (http.post("/v1/track", json={"userId": "u"}), "missing_field", "event"),
            (http.post("/v1/identify", json={"traits": {}}), "missing_field", "userId"),
            (
                http.post("/v1/page", json={"userId": "u", "timestamp": "noon"}),
                "bad_ts",
                "timestamp",
            ),
            (http.post("/v1/batch", json={}), "missing_field", "batch"),
            (http.post("/v1/batch", json={"batch": {}}), "wrong_type", "batch"),
            (http.post("/v1/batch", json={"batch": [], "sentAt": "soon"}), "bad_ts", "sentAt"),
        ]
        for response, code, field in cases:
            assert response.status_code == 400, response.text
            assert response.json()["code"] == code
            assert response.json()["field"] == field
            assert field in response.json()["message"]
    # Messages that parsed as JSON but could not be mapped are kept as dead letters.
    assert len(dead_letters(r)) == 3
    assert events_in(r) == []


def test_segment_size_limits(serve: Callable[..., Any], r: redis.Redis) -> None:
    live = serve()
    big = "x" * (33 * 1024)
    with httpx.Client(base_url=live.url, auth=AUTH) as http:
        call = http.post("/v1/track", json={"userId": "u", "event": "e", "properties": {"b": big}})
        assert (call.status_code, call.json()["code"], call.json()["field"]) == (
            400,
            "too_large",
            "body",
        )
        messages = [{"type": "track", "userId": "u", "event": "e", "properties": {"b": big}}]
        messages += [{"type": "track", "userId": "u", "event": "e"}] * 3
        batch = http.post("/v1/batch", json={"batch": messages})
        assert batch.json()["accepted"] == 3
        assert batch.json()["errors"][0]["code"] == "too_large"
        assert batch.json()["errors"][0]["field"] == "batch[0]"
        huge = http.post("/v1/batch", json={"batch": messages * 16})  # > 500 KB
        assert (huge.status_code, huge.json()["code"]) == (400, "too_large")
    assert len(events_in(r)) == 3


@pytest.mark.parametrize(
    "path", ["/v1/track", "/v1/identify", "/v1/page", "/v1/batch", "/v1/events"]
)
def test_missing_or_wrong_write_key_is_401_and_writes_nothing(
    serve: Callable[..., Any], r: redis.Redis, path: str
) -> None:
    live = serve()
    message = {"userId": "u", "event": "x", "type": "track", "contact": "u", "action": "x"}
    body = [message] if path == "/v1/events" else {**message, "batch": [message]}
    before = written(r)
    with httpx.Client(base_url=live.url) as http:
        attempts = [
            http.post(path, json=body),
            http.post(path, json=body, headers=basic("wrong-key")),
            http.post(path, json=body, headers={"Authorization": "Basic %%%"}),
            http.post(path, json=body, headers={"Authorization": "Token test-key"}),
        ]
        if path != "/v1/events":
            attempts.append(http.post(path, json={**body, "writeKey": "wrong-key"}))
            attempts.append(http.post(path, json={**body, "writeKey": 7}))
        for response in attempts:
            assert response.status_code == 401, response.text
            assert response.json()["code"] == "unauthorized"
            assert response.json()["field"] == "writeKey"
    assert written(r) == before


def test_no_configured_write_keys_refuses_writes(serve: Callable[..., Any], r: redis.Redis) -> None:
    live = serve(write_keys=())
    with httpx.Client(base_url=live.url) as http:
        refused = http.post("/v1/track", json={"userId": "u", "event": "x", "writeKey": ""})
        assert refused.status_code == 401
        assert "LEADSCORE_WRITE_KEYS" in refused.json()["message"]
        assert http.get("/t.gif", params={"contact": "c"}).status_code == 200
    assert [e["contact"] for e in events_in(r)] == ["c"]


def test_one_request_is_one_stream_entry_per_partition(
    serve: Callable[..., Any], r: redis.Redis
) -> None:
    live = serve()
    contacts = [f"c-{i}" for i in range(5)]
    batch = [
        {"type": "track", "userId": contacts[i % 5], "event": "Email Opened", "messageId": str(i)}
        for i in range(100)
    ]
    with httpx.Client(base_url=live.url, auth=AUTH) as http:
        assert http.post("/v1/batch", json={"batch": batch}).json()["accepted"] == 100
    entries = entries_in(r)
    assert sorted(entries) == sorted({KEYS.partition(c) for c in contacts})
    assert all(len(found) == 1 for found in entries.values())
    ids = [int(e["id"]) for e in events_in(r) if e["contact"] == "c-3"]
    assert ids == list(range(3, 100, 5))  # request order kept within a partition


def test_collector_coalesces_concurrent_writes(redis_url: str, r: redis.Redis) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        collector = Collector(client, KEYS, interval=0.05, max_events=1000)
        collector.start()
        first = collector.submit([(0, b"a"), (1, b"b")])
        second = collector.submit([(0, b"c")], [b'{"raw":"x"}'])
        assert first is second  # both ride the same flush
        await asyncio.gather(first, second)
        await collector.write([])  # nothing to write: returns at once
        pending = collector.submit([(2, b"d")])
        await collector.close()  # flushes what is pending
        assert pending.done()
        with pytest.raises(RuntimeError):
            collector.submit([(0, b"e")])
        await client.aclose()

    asyncio.run(scenario())
    assert entries_in(r) == {0: [b"a\nc"], 1: [b"b"], 2: [b"d"]}
    assert r.xlen(KEYS.dead(0)) == 1


# --------------------------------------------------------------------------- native events


def test_native_events_json_array_and_lines(serve: Callable[..., Any], r: redis.Redis) -> None:
    live = serve()
    oversized = {"contact": "c", "action": "x", "props": {"b": "x" * MAX_EVENT_BYTES}}
    array = [
        {"contact": "c-1", "action": "page.hit", "ts": "2026-11-22T10:00:00Z", "id": 5},
        {"contact": "c-2"},
        {"contact": 3, "action": "page.hit"},
        7,
        oversized,
    ]
    lines = (
        b'{"contact":"c-3","action":"email.open","ts":1795341600000}\n'
        b"\n"
        b"{broken\n"
        b'{"contact":"c-5","action":"purchase","ts":1e300}\n'
        b'{"contact":"c-4","action":"purchase","props":{"total":10}}'
    )
    with httpx.Client(base_url=live.url) as http:
        first = http.post("/v1/events", json=array, auth=AUTH)
        assert first.status_code == 200
        assert first.json()["accepted"] == 1
        assert first.json()["rejected"] == 4
        assert first.json()["reasons"] == {
            "missing_field": 1,
            "wrong_type": 1,
            "not_an_object": 1,
            "too_large": 1,
        }
        assert [e["index"] for e in first.json()["errors"]] == [1, 2, 3, 4]
        second = http.post(
            "/v1/events", content=lines, headers={"Authorization": "Bearer test-key"}
        )
        assert second.json()["accepted"] == 2
        assert [(e["index"], e["code"]) for e in second.json()["errors"]] == [
            (1, "invalid_json"),
            (2, "bad_ts"),
        ]
    stored = {e["contact"]: e for e in events_in(r)}
    assert set(stored) == {"c-1", "c-3", "c-4"}
    assert (stored["c-1"]["ts"], stored["c-1"]["id"]) == (1795341600.0, "5")
    assert stored["c-3"]["ts"] == 1795341600.0  # milliseconds normalised
    assert stored["c-4"]["ts"] > 1.7e9  # no ts: the receipt time
    assert [d["source"] for d in dead_letters(r)] == ["http"] * 6
    assert len(dead_letters(r)[3]["raw"]) == 8 * 1024  # raw text is truncated


def test_native_events_body_errors(serve: Callable[..., Any]) -> None:
    live = serve(max_body_bytes=2048)
    with httpx.Client(base_url=live.url, auth=AUTH) as http:
        empty = http.post("/v1/events", content=b"  \n")
        assert (empty.status_code, empty.json()["code"]) == (400, "missing_field")
        broken = http.post("/v1/events", content=b"[1, 2")
        assert (broken.status_code, broken.json()["code"]) == (400, "invalid_json")
        large = http.post("/v1/events", content=b"[" + b" " * 3000 + b"]")
        assert (large.status_code, large.json()["code"], large.json()["field"]) == (
            413,
            "too_large",
            "body",
        )
        assert http.post("/v1/events", content=b"[]").json()["accepted"] == 0
        pretty = b'{\n  "contact": "c-1",\n  "action": "page.hit"\n}\n'
        assert http.post("/v1/events", content=pretty).json()["accepted"] == 1


# --------------------------------------------------------------------------- score API


def test_contact_read_model_and_explain(serve: Callable[..., Any], r: redis.Redis) -> None:
    live = serve()
    contact = "ana@acme.com/ñ"
    view = {
        "contact": contact,
        "scores": {"engagement": 30, "fit": 25},
        "total": 55,
        "normalized": 55.0,
        "grade": "B2",
        "stage": "decision",
        "segments": ["mql"],
        "tags": [],
        "updated_at": "2026-11-22T10:00:00.000Z",
    }
    r.set(KEYS.contact_read_model(contact), orjson.dumps(view))
    p = KEYS.partition(contact)
    neighbour = next(f"n-{i}" for i in range(10_000) if KEYS.partition(f"n-{i}") == p)
    for i in range(6):
        for who in (contact, neighbour):
            change = {"contact": who, "rule": f"r{i}", "delta": i, "at": 1795341600 + i}
            r.xadd(KEYS.changes(p), {"c": orjson.dumps(change)})
    with httpx.Client(base_url=live.url) as http:
        path = "/v1/contacts/" + httpx.URL(contact).raw_path.decode().replace("/", "%2F")
        plain = http.get(path)
        assert plain.status_code == 200
        assert plain.headers["content-type"] == "application/json"
        # A document without `decay` (an older flow wrote it) is answered as stored.
        assert plain.json() == {**view, "as_of": view["updated_at"]}
        explained = http.get(path, params={"explain": "1", "limit": "3"}).json()
        assert [c["rule"] for c in explained["changes"]] == ["r3", "r4", "r5"]
        assert all(c["contact"] == contact for c in explained["changes"])
        assert {k: v for k, v in explained.items() if k != "changes"} == plain.json()
        assert len(http.get(path, params={"explain": "true"}).json()["changes"]) == 6

        unknown = http.get("/v1/contacts/nobody")
        assert unknown.status_code == 404
        assert (unknown.json()["code"], unknown.json()["field"]) == ("not_found", "id")
        for params, field in (({"explain": "maybe"}, "explain"), ({"limit": "0"}, "limit")):
            bad = http.get(path, params=params)
            assert (bad.status_code, bad.json()["field"]) == (400, field)
        assert http.get("/v1/contacts/" + "x" * 300).json()["field"] == "id"


def test_read_keys_guard_the_score_api(serve: Callable[..., Any], r: redis.Redis) -> None:
    live = serve(read_keys=("crm-key",))
    r.set(KEYS.contact_read_model("c-1"), b'{"total": 1}')
    with httpx.Client(base_url=live.url) as http:
        assert http.get("/v1/contacts/c-1").status_code == 401
        assert http.get("/v1/contacts/c-1", headers=basic("nope")).status_code == 401
        assert http.get("/v1/contacts/c-1", headers=basic("crm-key")).json()["total"] == 1
        bearer = {"Authorization": "Bearer test-key"}
        assert http.get("/v1/contacts/c-1", headers=bearer).status_code == 200


# --------------------------------------------------------------------------- metrics, config


def test_metrics_count_events_latency_and_lag(serve: Callable[..., Any], r: redis.Redis) -> None:
    live = serve()
    with httpx.Client(base_url=live.url, auth=AUTH) as http:
        for i in range(3):
            http.post("/v1/track", json={"userId": "u-1", "event": "x", "messageId": str(i)})
        http.post("/v1/track", json={"event": "x"})
        http.get("/t.gif", params={"contact": "u-1"})
        p = KEYS.partition("u-1")
        r.xgroup_create(KEYS.input(p), GROUP, id="0")
        r.xreadgroup(GROUP, KEYS.consumer(p), {KEYS.input(p): ">"}, count=1)
        text = http.get("/metrics").text
    assert metric(text, "leadscore_http_events_accepted_total", source="segment") == 3
    assert metric(text, "leadscore_http_events_accepted_total", source="pixel") == 1
    assert (
        metric(
            text, "leadscore_http_events_rejected_total", source="segment", reason="missing_field"
        )
        == 1
    )
    count = "leadscore_http_request_duration_seconds_count"
    assert metric(text, count, route="/v1/track", method="POST") == 4
    assert metric(text, count, route="/t.gif", method="GET") == 1
    assert metric(text, "leadscore_http_requests_total", route="/v1/track", status="400") == 1
    assert metric(text, "leadscore_stream_length", stream="in", partition=str(p)) == 4
    assert metric(text, "leadscore_consumer_group_lag", partition=str(p)) == 3
    assert metric(text, "leadscore_consumer_group_pending", partition=str(p)) == 1
    assert metric(text, "leadscore_stream_length", stream="dead", partition="0") == 1
    other = (p + 1) % 16
    assert metric(text, "leadscore_consumer_group_lag", partition=str(other)) == 0
    assert metric(text, "leadscore_redis_up") == 1
    assert metric(text, "leadscore_collector_flush_events_count") == 5


def test_partitions_come_from_meta_and_mismatch_refuses_writes(
    serve: Callable[..., Any], r: redis.Redis
) -> None:
    r.hset(KEYS.meta, mapping={"version": 1, "partitions": 4})
    discovered = serve(partitions=None)
    with httpx.Client(base_url=discovered.url, auth=AUTH) as http:
        assert http.get("/readyz").json()["partitions"] == 4
        http.post("/v1/track", json={"userId": "u-1", "event": "x"})
    assert events_in(r, Keys("ls", 4))[0]["_partition"] == Keys("ls", 4).partition("u-1")

    mismatched = serve(partitions=16)
    with httpx.Client(base_url=mismatched.url, auth=AUTH) as http:
        refused = http.post("/v1/track", json={"userId": "u-1", "event": "x"})
        assert refused.status_code == 503
        assert "16 partitions" in refused.json()["message"]
        assert http.get("/readyz").status_code == 503


def test_meta_is_claimed_when_absent(serve: Callable[..., Any], r: redis.Redis) -> None:
    serve(partitions=8, prefix="acme")
    assert r.hgetall("acme:meta") == {b"partitions": b"8", b"version": b"1"}


def test_cors_preflight_for_configured_origins(serve: Callable[..., Any]) -> None:
    live = serve(cors_origins=("https://www.acme.com",))
    preflight = {"Access-Control-Request-Method": "POST"}
    with httpx.Client(base_url=live.url) as http:
        ok = http.options("/v1/batch", headers={"Origin": "https://www.acme.com", **preflight})
        assert ok.headers["access-control-allow-origin"] == "https://www.acme.com"
        other = http.options("/v1/batch", headers={"Origin": "https://evil.test", **preflight})
        assert "access-control-allow-origin" not in other.headers
        assert other.status_code == 400
        assert (other.json()["code"], other.json()["field"]) == ("cors_refused", "Origin")


def test_config_from_env() -> None:
    env = {
        "LEADSCORE_REDIS_URL": "redis://cache:6380/2",
        "LEADSCORE_PREFIX": "acme",
        "LEADSCORE_PARTITIONS": "32",
        "LEADSCORE_WRITE_KEYS": "k1, k2,,",
        "LEADSCORE_CORS_ORIGINS": "https://a.com,https://b.com",
        "LEADSCORE_ACTION_MAP": "Demo Requested=form.submit, Trial Started=trial.start",
        "LEADSCORE_COOKIE_SECURE": "yes",
        "LEADSCORE_FLUSH_INTERVAL_MS": "1.5",
    }
    config = ServiceConfig.from_env(env, prefix="override", partitions=None)
    assert config.redis_url == "redis://cache:6380/2"
    assert config.prefix == "override"  # CLI options win
    assert config.partitions == 32  # None means "not given on the command line"
    assert config.write_keys == ("k1", "k2")
    assert config.cors_origins == ("https://a.com", "https://b.com")
    assert config.action_map == {"Demo Requested": "form.submit", "Trial Started": "trial.start"}
    assert (config.cookie_secure, config.flush_interval_ms) == (True, 1.5)
    as_json = ServiceConfig.from_env({"LEADSCORE_ACTION_MAP": '{"Paid": "purchase"}'})
    assert as_json.action_map == {"Paid": "purchase"}
    assert ServiceConfig.from_env({}) == ServiceConfig()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LEADSCORE_PARTITIONS": "many"}, "LEADSCORE_PARTITIONS"),
        ({"LEADSCORE_COOKIE_SECURE": "perhaps"}, "LEADSCORE_COOKIE_SECURE"),
        ({"LEADSCORE_ACTION_MAP": "no equals sign"}, "LEADSCORE_ACTION_MAP"),
        ({"LEADSCORE_ACTION_MAP": '{"Paid": 1}'}, "LEADSCORE_ACTION_MAP"),
        ({"LEADSCORE_PARTITIONS": "0"}, "partitions must be at least 1"),
        ({"LEADSCORE_ACTION_MAP": "Paid="}, "non-empty"),
        ({"LEADSCORE_COOKIE_NAME": "bad name;"}, "cookie_name"),
    ],
)
def test_config_errors_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServiceConfig.from_env(env)
