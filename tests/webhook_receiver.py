"""A real HTTP receiver on a free loopback port for delivery tests: it records every request
and answers from a per-path script (statuses, headers, or a hang), then 200."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

#: One scripted answer: a status, ``(status, headers)``, or ``("hang", seconds)``.
Answer = int | tuple[int, dict[str, str]] | tuple[str, float]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int  # what the receiver answered (0: it hung)

    @property
    def json(self) -> dict:
        return orjson.loads(self.body)

    @property
    def key(self) -> str:
        return self.headers["idempotency-key"]


@dataclass
class Receiver:
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    #: answers by request instead of by path when set: (path, body) -> answer or None
    decide: Callable[[str, bytes], Answer | None] | None = None
    delay: float = 0.0  # seconds before every answer
    got: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(size)
                if len(body) < size:  # the sender died mid-request: no server acts on half a body
                    self.close_connection = True
                    return
                receiver.answer(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        path = handler.path
        with self.lock:
            script = self.scripts.get(path)
            answer: Answer | None = script.pop(0) if script else None
            if self.decide is not None:
                answer = self.decide(path, body)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        status, extra = 200, {}
        if isinstance(answer, int):
            status = answer
        elif isinstance(answer, tuple) and answer[0] == "hang":
            with self.lock:
                self.got.append(Received(path, headers, body, time.time(), 0))
            time.sleep(float(answer[1]))
            return
        elif isinstance(answer, tuple):
            status, extra = int(answer[0]), dict(answer[1])  # type: ignore[arg-type]
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.got.append(Received(path, headers, body, time.time(), status))
        payload = b"ok" if status < 300 else b"nope"
        try:
            handler.send_response(status)
            for k, v in extra.items():
                handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            pass

    def received(self, path: str | None = None, ok: bool | None = None) -> list[Received]:
        with self.lock:
            got = list(self.got)
        return [
            r
            for r in got
            if (path is None or r.path == path) and (ok is None or (200 <= r.status < 300) == ok)
        ]

    def wait(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received {len(self.got)} requests")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
