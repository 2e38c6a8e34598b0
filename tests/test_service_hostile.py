"""Hostile HTTP input (issue 11, part 3), over real sockets against the real service: items
nested deeper than any limit, gzip bodies of several members or with trailing data, and
request bodies that never finish. Bad input never costs the good input next to it, and
never a 5xx."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
import uvicorn
from test_service import AUTH, KEYS, dead_letters, events_in, metric

from leadscore.events import MAX_DEPTH
from leadscore.service import ServiceConfig
from leadscore.service.app import uvicorn_config


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def deep_json(levels: int) -> bytes:
    """``levels`` arrays and objects one inside the other, as text (orjson will not write
    past 254 levels, and does not read past 1024)."""
    opens = "".join('{"k":' if i % 2 else "[" for i in range(levels))
    closes = "".join("}" if i % 2 else "]" for i in reversed(range(levels)))
    return (opens + "1" + closes).encode()


def deep_event(levels: int, contact: str = "deep") -> bytes:
    return (
        b'{"contact":"'
        + contact.encode()
        + b'","action":"page.hit","props":{"x":'
        + (deep_json(levels) + b"}}")
    )


def good_event(contact: str) -> bytes:
    return orjson.dumps({"contact": contact, "action": "page.hit", "id": f"e-{contact}"})


DEPTHS = [MAX_DEPTH, 253, 300, 1100, 5000]


# --------------------------------------------------------------------------- too deep


@pytest.mark.parametrize("levels", DEPTHS)
def test_native_deep_item_is_rejected_its_neighbours_accepted(
    serve: Callable[..., Any], r: redis.Redis, levels: int
) -> None:
    live = serve()
    array = b"[" + good_event("a") + b"," + deep_event(levels) + b"," + good_event("b") + b"]"
    lines = good_event("c") + b"\n" + deep_event(levels) + b"\n" + good_event("d")
    with httpx.Client(base_url=live.url, auth=AUTH) as http:
        for body in (array, lines):
            answer = http.post("/v1/events", content=body)
            assert answer.status_code == 200, answer.text
            outcome = answer.json()
            assert (outcome["accepted"], outcome["rejected"]) == (2, 1)
            assert outcome["reasons"] == {"too_deep": 1}
            assert outcome["errors"][0]["index"] == 1
        text = http.get("/metrics").text
    assert sorted(e["contact"] for e in events_in(r)) == ["a", "b", "c", "d"]
    letters = [d for d in dead_letters_everywhere(r)]
    assert [d["code"] for d in letters] == ["too_deep", "too_deep"]
    assert all(d["source"] == "http" and len(d["raw"]) <= 8 * 1024 for d in letters)
    rejected = "leadscore_http_events_rejected_total"
    assert metric(text, rejected, source="http", reason="too_deep") == 2


def dead_letters_everywhere(r: redis.Redis) -> list[dict[str, Any]]:
    """Dead letters go to partition 0 today; read them all so the test does not care."""
    found = []
    for p in range(KEYS.partitions):
        for _id, fields in r.xrange(KEYS.dead(p)):
            found.extend(orjson.loads(line) for line in fields[b"d"].split(b"\n"))
    return found


@pytest.mark.parametrize("levels", DEPTHS)
def test_segment_deep_message_is_rejected_the_rest_accepted(
    serve: Callable[..., Any], r: redis.Redis, levels: int
) -> None:
    live = serve()
    track = b'{"type":"track","userId":"u-%d","event":"Form Submitted"}'
    deep = b'{"type":"track","userId":"victim","event":"x","properties":{"p":%s}}' % (
        deep_json(levels)
    )
    batch = b'{"batch":[' + track % 1 + b"," + deep + b"," + track % 2 + b"]}"
    single = b'{"userId":"u-3","event":"x","properties":{"p":' + deep_json(levels) + b"}}"
    with httpx.Client(base_url=live.url, auth=AUTH) as http:
        answer = http.post("/v1/batch", content=batch)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["accepted"], answer.json()["rejected"]) == (2, 1)
        assert answer.json()["errors"][0]["code"] == "too_deep"
        assert answer.json()["errors"][0]["field"] == "batch[1]"
        refused = http.post("/v1/track", content=single)
        assert (refused.status_code, refused.json()["code"]) == (400, "too_deep")
    assert sorted(e["contact"] for e in events_in(r)) == ["u-1", "u-2"]
    assert [d["code"] for d in dead_letters_everywhere(r)] == ["too_deep", "too_deep"]


def test_deep_single_object_and_deep_junk_outside_props(
    serve: Callable[..., Any], r: redis.Redis
) -> None:
    live = serve()
    pretty = b'{\n "contact": "c-1",\n "action": "page.hit",\n "props": {"x": '
    pretty += deep_json(3000) + b"}\n}\n"
    junk = b'[{"contact":"c-2","action":"page.hit","junk":' + deep_json(2000) + b"}]"
    broken = b"[" + deep_json(2000)[:-1]  # deep and unbalanced: not JSON at all
    with httpx.Client(base_url=live.url, auth=AUTH) as http:
        one = http.post("/v1/events", content=pretty)
        assert (one.status_code, one.json()["reasons"]) == (200, {"too_deep": 1})
        other = http.post("/v1/events", content=junk)
        assert (other.status_code, other.json()["reasons"]) == (200, {"too_deep": 1})
        bad = http.post("/v1/events", content=broken)
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_json")
    assert events_in(r) == []


# --------------------------------------------------------------------------- gzip


def test_gzip_members_are_all_read_and_trailing_data_is_refused(
    serve: Callable[..., Any], r: redis.Redis
) -> None:
    live = serve(max_body_bytes=4096)
    zipped = {"Content-Encoding": "gzip"}
    first, second = good_event("m-1") + b"\n", good_event("m-2") + b"\n"
    two_members = gzip.compress(first) + gzip.compress(second)
    with httpx.Client(base_url=live.url, auth=AUTH) as http:
        both = http.post("/v1/events", content=two_members, headers=zipped)
        assert (both.status_code, both.json()["accepted"]) == (200, 2)
        for trailing in (b"garbage", b"\x00\x00\x00\x00", b"\x1f\x8b"):
            answer = http.post(
                "/v1/events", content=gzip.compress(first) + trailing, headers=zipped
            )
            assert (answer.status_code, answer.json()["code"]) == (400, "invalid_gzip")
        cut = gzip.compress(first + second)[:-6]  # the member's end never arrives
        truncated = http.post("/v1/events", content=cut, headers=zipped)
        assert (truncated.status_code, truncated.json()["code"]) == (400, "invalid_gzip")
        # The size limit holds across members, not per member.
        many = b"".join(gzip.compress(b" " * 1000) for _ in range(5)) + gzip.compress(first)
        large = http.post("/v1/events", content=many, headers=zipped)
        assert (large.status_code, large.json()["code"]) == (413, "too_large")
        segment = gzip.compress(b'{"batch":[') + gzip.compress(
            b'{"type":"track","userId":"s-1","event":"x"}]}'
        )
        split = http.post("/v1/batch", content=segment, headers=zipped)
        assert (split.status_code, split.json()["accepted"]) == (200, 1)
    assert sorted(e["contact"] for e in events_in(r)) == ["m-1", "m-2", "s-1"]


# --------------------------------------------------------------------------- slow clients


class Server:
    """The service under uvicorn with the options `leadscore serve` gives it."""

    def __init__(self, config: ServiceConfig) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(config, "127.0.0.1", self.port))
        self.server.config.log_level = "warning"
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture
def uvicorn_service(redis_url: str) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(**overrides: Any) -> Server:
        options = {"redis_url": redis_url, "partitions": 16, "write_keys": ("test-key",)}
        server = Server(ServiceConfig(**{**options, **overrides}))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def slow_request(port: int, head: bytes, first_bytes: bytes) -> socket.socket:
    """A client that sends its headers and the start of a body, then goes quiet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head + first_bytes)
    return sock


def answer_of(sock: socket.socket) -> bytes:
    """Everything the server says until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def answer_unless_reset(sock: socket.socket) -> bytes | None:
    """The status line the server sends before hanging up on a client that is still sending,
    or None: closing with unread input makes TCP reset the connection, which may discard the
    answer before the client reads it. Either way the client is cut off (a server that never
    hangs up fails the read's timeout)."""
    try:
        return answer_of(sock)[:13]
    except ConnectionResetError:
        sock.close()
        return None


HEAD = (
    b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
    b"Content-Type: application/json\r\n"
)


@pytest.mark.slow
def test_bodies_that_never_finish_get_408_and_slow_clients_are_bounded(
    uvicorn_service: Callable[..., Server], r: redis.Redis
) -> None:
    server = uvicorn_service(body_timeout=1.0, max_connections=4)
    # Declared over the limit: refused at once, and the connection closed.
    huge = slow_request(server.port, HEAD + b"Content-Length: 100000000\r\n\r\n", b"[")
    refused = answer_of(huge)
    assert refused.startswith(b"HTTP/1.1 413 ") and b"connection: close" in refused.lower()
    # Declared within the limit, then silence; a chunked body that never ends; a trickle.
    declared = slow_request(server.port, HEAD + b"Content-Length: 1000000\r\n\r\n", b"[")
    chunked = slow_request(server.port, HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\n[\r\n")
    trickle = slow_request(server.port, HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"")
    # The trickling client keeps sending, but slower than a body must arrive.
    stop = threading.Event()

    def drip() -> None:
        try:
            while not stop.wait(0.1):
                trickle.sendall(b"1\r\n \r\n")
        except OSError:
            pass  # the server hung up on it

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    # Connections past the bound are answered at once (503), never left waiting.
    time.sleep(0.2)
    crowd = [socket.create_connection(("127.0.0.1", server.port), timeout=30)]
    over = httpx.post(
        f"http://127.0.0.1:{server.port}/v1/events", content=good_event("late"), auth=AUTH
    )
    assert over.status_code == 503
    for sock in (declared, chunked):
        reply = answer_of(sock)
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        body = orjson.loads(reply.partition(b"\r\n\r\n")[2])
        assert (body["code"], body["field"]) == ("request_timeout", "body")
    assert answer_unless_reset(trickle) in (None, b"HTTP/1.1 408 ")
    stop.set()
    dripper.join(5)
    for sock in crowd:
        sock.close()
    # The slow ones are gone: a normal request is served again.
    deadline = time.monotonic() + 10
    while True:
        ok = httpx.post(
            f"http://127.0.0.1:{server.port}/v1/events", content=good_event("on-time"), auth=AUTH
        )
        if ok.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (ok.status_code, ok.json()["accepted"]) == (200, 1)
    assert [e["contact"] for e in events_in(r)] == ["on-time"]
    assert dead_letters(r) == []


@pytest.mark.slow
def test_headers_that_never_finish_close_the_connection(
    uvicorn_service: Callable[..., Server], r: redis.Redis
) -> None:
    server = uvicorn_service(body_timeout=0.5, max_connections=10)
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    dribble = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    stop = threading.Event()

    def drip() -> None:  # a header line a byte at a time, never the blank line
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000:
                if stop.wait(0.05):
                    return
                dribble.sendall(bytes([byte]))
        except OSError:
            pass  # the server hung up on it

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    # A client that keeps its connection and pauses between requests is served throughout.
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", auth=AUTH) as http:
        for i in range(4):
            answer = http.post("/v1/events", content=good_event(f"k-{i}"))
            assert answer.status_code == 200
            time.sleep(0.3)
    assert answer_of(silent) == b""  # closed without a word
    assert answer_unless_reset(dribble) in (None, b"")
    stop.set()
    dripper.join(5)
    assert sorted(e["contact"] for e in events_in(r)) == ["k-0", "k-1", "k-2", "k-3"]
