"""The pixel cannot act for anyone (issue 11, part 5): it records page views (and the actions
the operator lists) only, and with a secret a contact id on its URL counts only when signed.
Real HTTP against the real service and Redis."""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis_server import free_port
from test_service import KEYS, events_in, metric

from leadscore.service import GIF, ServiceConfig, pixel_event

ROOT = Path(__file__).resolve().parent.parent
SECRET = "pixel-secret-for-tests-0123456789"
REJECTED = "leadscore_http_events_rejected_total"


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def dead(r: redis.Redis) -> list[dict[str, Any]]:
    import orjson

    found = []
    for p in range(KEYS.partitions):
        for _id, fields in r.xrange(KEYS.dead(p)):
            found.extend(orjson.loads(line) for line in fields[b"d"].split(b"\n"))
    return found


def sign(contact: str, secret: str = SECRET) -> str:
    """What the README tells operators to compute: HMAC-SHA256 of the id, in hex."""
    return hmac.new(secret.encode(), contact.encode(), hashlib.sha256).hexdigest()


def test_three_purchases_on_the_pixel_never_reach_the_input_streams(
    serve: Callable[..., Any], r: redis.Redis
) -> None:
    live = serve()
    with httpx.Client(base_url=live.url) as http:
        for _ in range(3):
            hit = http.get("/t.gif", params={"contact": "victim", "action": "purchase"})
            assert (hit.status_code, hit.content) == (200, GIF)  # the page never breaks
            assert "set-cookie" not in hit.headers  # nor does the refused hit name anyone
        unsubscribe = http.get(
            "/t.gif", params={"contact": "victim", "action": "email.unsubscribe"}
        )
        assert unsubscribe.content == GIF
        view = http.get("/t.gif", params={"contact": "visitor-1", "url": "https://a.com/"})
        assert view.content == GIF
        text = http.get("/metrics").text
    assert [(e["contact"], e["action"]) for e in events_in(r)] == [("visitor-1", "page.hit")]
    letters = dead(r)
    assert [d["code"] for d in letters] == ["pixel_action_refused"] * 4
    assert all(d["source"] == "pixel" for d in letters)
    assert "purchase" in letters[0]["reason"]
    assert metric(text, REJECTED, source="pixel", reason="pixel_action_refused") == 4
    assert metric(text, "leadscore_http_events_accepted_total", source="pixel") == 1


def test_the_operator_lists_other_pixel_actions(serve: Callable[..., Any], r: redis.Redis) -> None:
    live = serve(pixel_actions=("asset.download", "video.play"))
    with httpx.Client(base_url=live.url) as http:
        http.get("/t.gif", params={"contact": "c-1", "action": "asset.download"})
        http.get("/t.gif", params={"contact": "c-1", "action": "video.play"})
        http.get("/t.gif", params={"contact": "c-1"})
        http.get("/t.gif", params={"contact": "c-1", "action": "purchase"})
    assert [e["action"] for e in events_in(r)] == ["asset.download", "video.play", "page.hit"]
    assert [d["code"] for d in dead(r)] == ["pixel_action_refused"]


def test_with_a_secret_only_signed_contact_ids_count(
    serve: Callable[..., Any], r: redis.Redis
) -> None:
    live = serve(pixel_secret=SECRET)
    with httpx.Client(base_url=live.url) as http:
        unsigned = http.get("/t.gif", params={"contact": "victim"})
        forged = http.get("/t.gif", params={"contact": "victim", "sig": sign("victim", "x" * 16)})
        mautic = http.get("/t.gif", params={"mtc_id": "victim"})
        for refused in (unsigned, forged, mautic):
            assert refused.content == GIF
            assert "set-cookie" not in refused.headers
        signed = http.get(
            "/t.gif", params={"contact": "ana@acme.com", "sig": sign("ana@acme.com"), "url": "/x"}
        )
        assert "set-cookie" in signed.headers
        # Later hits from that browser count for ana through the (signed) cookie.
        http.get("/t.gif", params={"url": "/pricing"})
        text = http.get("/metrics").text
    # A cookie written by hand cannot name a contact either: it makes a new visitor.
    cookie = httpx.get(f"{live.url}/t.gif", headers={"Cookie": "ls_vid=victim"})
    assert cookie.headers["set-cookie"].startswith("ls_vid=v-")
    contacts = [e["contact"] for e in events_in(r)]
    assert contacts[:2] == ["ana@acme.com", "ana@acme.com"]
    assert contacts[2].startswith("v-") and "victim" not in contacts
    assert [e.get("props", {}).get("url") for e in events_in(r)][:2] == ["/x", "/pricing"]
    assert "sig" not in events_in(r)[0]["props"]
    assert [d["code"] for d in dead(r)] == ["bad_signature"] * 3
    assert metric(text, REJECTED, source="pixel", reason="bad_signature") == 3


def test_pixel_policy_is_pure() -> None:
    allowed = frozenset({"page.hit"})
    event, remembered = pixel_event(
        [("contact", "victim"), ("action", "purchase")], "v-1", None, 5.0, actions=allowed
    )
    assert (getattr(event, "code", None), remembered) == ("pixel_action_refused", "v-1")
    event, remembered = pixel_event([("contact", "victim")], None, None, 5.0, secret=SECRET)
    assert (getattr(event, "code", None), remembered) == ("bad_signature", None)
    params = [("contact", "ana"), ("sig", sign("ana").upper())]
    event, remembered = pixel_event(params, None, None, 5.0, secret=SECRET)
    assert (getattr(event, "contact", None), remembered) == ("ana", "ana")


def test_pixel_settings_from_the_environment() -> None:
    env = {
        "LEADSCORE_PIXEL_ACTIONS": "asset.download, video.play",
        "LEADSCORE_PIXEL_SECRET": SECRET,
    }
    config = ServiceConfig.from_env(env)
    assert config.pixel_actions == ("asset.download", "video.play")
    assert config.pixel_secret == SECRET
    assert SECRET not in repr(config)
    with pytest.raises(ValueError, match="at least 16 characters"):
        ServiceConfig.from_env({"LEADSCORE_PIXEL_SECRET": "short"})


def test_leadscore_serve_takes_the_pixel_and_slow_client_options(
    redis_url: str, r: redis.Redis
) -> None:
    """The options as an operator passes them, in the real process `leadscore serve` runs."""
    port = free_port()
    command = [sys.executable, "-m", "leadscore.cli", "serve", "--port", str(port)]
    command += ["--redis", redis_url, "--partitions", "16", "--write-key", "k"]
    command += ["--pixel-action", "asset.download", "--body-timeout", "0.5"]
    command += ["--max-connections", "50"]
    env = {**os.environ, "LEADSCORE_PIXEL_SECRET": SECRET}
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        signed = {"contact": "ana", "sig": sign("ana")}
        httpx.get(f"{url}/t.gif", params={**signed, "action": "asset.download"})
        httpx.get(f"{url}/t.gif", params={**signed, "action": "purchase"})
        httpx.get(f"{url}/t.gif", params={"contact": "victim"})
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                b"Content-Length: 1000\r\n\r\n["
            )
            assert slow.recv(100).startswith(b"HTTP/1.1 408 ")
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=30)
    assert "pixel records page.hit, asset.download, signed contact ids only" in err
    assert [(e["contact"], e["action"]) for e in events_in(r)] == [("ana", "asset.download")]
    assert sorted(d["code"] for d in dead(r)) == ["bad_signature", "pixel_action_refused"]
