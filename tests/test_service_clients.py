"""Real clients against the real service: Segment's official Python library and a headless
Chromium loading a page that embeds the tracking pixel."""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from state.keys import Keys

KEYS = Keys("ls", 16)


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def events_in(r: redis.Redis) -> list[dict[str, Any]]:
    found = []
    for p in range(KEYS.partitions):
        for entry_id, fields in r.xrange(KEYS.input(p)):
            for line in fields[b"e"].split(b"\n"):
                found.append((entry_id, {**orjson.loads(line), "_partition": p}))
    return [event for _id, event in sorted(found, key=lambda pair: pair[0])]


def wait_for_events(r: redis.Redis, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Poll until ``n`` events arrived (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        found = events_in(r)
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# --------------------------------------------------------------------------- Segment library


def test_official_segment_library(serve: Callable[..., Any], r: redis.Redis) -> None:
    from segment.analytics.client import Client

    live = serve()
    errors: list[Exception] = []
    client = Client(
        "test-key",
        host=live.url,
        on_error=lambda exc, batch: errors.append(exc),
        upload_interval=0.05,
        max_retries=0,
    )
    client.track(
        "u-1", "Order Completed", {"revenue": 99.5, "currency": "EUR"}, message_id="msg-track"
    )
    client.identify("u-2", {"title": "VP Sales", "company": {"size": 200}}, message_id="msg-id")
    client.page(
        "u-1",
        category="Docs",
        name="Pricing",
        properties={
            "url": "https://acme.com/pricing",
            "title": "Pricing | Acme",
            "referrer": "https://google.com/",
        },
        message_id="msg-page",
    )
    client.track(anonymous_id="anon-7", event="Webinar Signup", message_id="msg-anon")
    client.flush()
    client.shutdown()
    assert errors == []

    by_id = {e["id"]: e for e in events_in(r)}
    assert set(by_id) == {"msg-track", "msg-id", "msg-page", "msg-anon"}
    track, identify, page, anon = (
        by_id[k] for k in ("msg-track", "msg-id", "msg-page", "msg-anon")
    )
    assert (track["contact"], track["action"]) == ("u-1", "purchase")
    assert track["props"] == {"revenue": 99.5, "currency": "EUR"}
    assert track["_partition"] == KEYS.partition("u-1")
    assert (identify["contact"], identify["action"]) == ("u-2", "identify")
    assert identify["traits"] == {"title": "VP Sales", "company": {"size": 200}}
    assert identify["_partition"] == KEYS.partition("u-2")
    assert page["action"] == "page.hit"
    assert page["props"] == {
        "url": "https://acme.com/pricing",
        "title": "Pricing | Acme",
        "referrer": "https://google.com/",
        "name": "Pricing",
        "category": "Docs",
    }
    assert (anon["contact"], anon["action"]) == ("anon-7", "webinar.signup")
    assert anon["_partition"] == KEYS.partition("anon-7")
    # The library stamps timestamp and sentAt on one clock; after skew correction the event
    # time is the receipt time minus the (tiny) queueing delay, never in the future.
    assert all(e["ts"] <= time.time() for e in by_id.values())


def test_official_library_gzip_and_refused_key(serve: Callable[..., Any], r: redis.Redis) -> None:
    from segment.analytics.client import Client
    from segment.analytics.request import APIError

    live = serve()
    zipped = Client("test-key", host=live.url, gzip=True, sync_mode=True, max_retries=0)
    zipped.track("u-9", "Email Opened", message_id="gz-1")
    assert [(e["contact"], e["action"]) for e in events_in(r)] == [("u-9", "email.open")]

    refused = Client("stolen-key", host=live.url, sync_mode=True, max_retries=0)
    with pytest.raises(APIError) as caught:
        refused.track("u-9", "Email Opened")
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    assert len(events_in(r)) == 1


# --------------------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

LANDING = """<!doctype html>
<html><head><title>Pricing | Acme</title></head>
<body><h1>Pricing</h1>
<script>
  // The usual tracking snippet: the page tells the pixel where it is, then we move on.
  var img = new Image(1, 1);
  img.onload = img.onerror = function () { location.href = "/docs.html"; };
  img.src = "PIXEL/t.gif?title=" + encodeURIComponent(document.title)
    + "&url=" + encodeURIComponent(location.href) + "&plan=enterprise";
</script>
</body></html>
"""

DOCS = """<!doctype html>
<html><head><title>Docs | Acme</title></head>
<body><p id="reached">docs page</p>
<img src="PIXEL/t.gif?action=asset.download" referrerpolicy="unsafe-url" alt="">
</body></html>
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """A static site on its own loopback port (another origin than the service)."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(pixel_base: str) -> str:
        root = tmp_path / "site"
        root.mkdir()
        (root / "pricing.html").write_text(LANDING.replace("PIXEL", pixel_base))
        (root / "docs.html").write_text(DOCS.replace("PIXEL", pixel_base))

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)
def test_headless_chromium_loads_the_pixel(
    serve: Callable[..., Any],
    site: Callable[[str], str],
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    live = serve(pixel_actions=("asset.download",))  # the docs page's <img> sends one
    origin = site(live.url)
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        f"{origin}/pricing.html",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "docs page" in done.stdout  # the landing page loaded the pixel and navigated on

    landing, docs = wait_for_events(r, 2)
    # The snippet passed the page's own URL and title.
    assert landing["action"] == "page.hit"
    assert landing["props"] == {
        "url": f"{origin}/pricing.html",
        "title": "Pricing | Acme",
        "plan": "enterprise",
    }
    # The plain <img> on the second page is attributed through the Referer header, and the
    # first-party cookie set by the first hit made both hits one visitor.
    assert docs["action"] == "asset.download"
    assert docs["props"] == {"url": f"{origin}/docs.html"}
    assert landing["contact"].startswith("v-")
    assert docs["contact"] == landing["contact"]
    assert landing["_partition"] == KEYS.partition(landing["contact"])
