"""The read API's latency: ``python -m bench.read_api`` (``--quick`` for a smoke run).

Reads now decay the stored scores to the moment of the read (leadscore.readmodel.view_at):
this measures what that costs, two ways, each against a baseline in the same run.

1. The function alone: ``view_at_bytes`` on real read-model documents (examples/rules.yaml
   over generated events) against ``orjson.loads`` + ``orjson.dumps`` of the same bytes,
   which is the least any reader that parses the document pays.
2. Real HTTP on loopback: a private redis-server, the real service (one uvicorn process,
   ``run_server``), the bare Starlette baseline of bench/http_load.py and a "stored" app
   that answers the stored bytes as the service did before reads decayed (a Redis GET and
   nothing else). One keep-alive connection per server sends ``GET /v1/contacts/{id}`` (a
   Redis GET, view_at, JSON out) one request at a time, interleaved in rounds with the
   stored app's same request and the baseline's ``GET /readyz`` (204, no Redis), so all
   three see the same machine load. The client is a raw socket with a prebuilt request, so
   the figures are the server's and the loopback's, not an HTTP library's.

Target (issue 13): the read API under 1 ms p50 on the 2-core development machine. Nothing
here asserts a time; results go to stdout and ``--json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.http_load import Processes, free_port, wait_http
from leadscore.engine import Engine
from leadscore.generate import generate_events
from leadscore.readmodel import DocumentWriter, view_at_bytes
from leadscore.rules import load_rules
from state.redis_store import RedisStore

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "rules.yaml"

# The read endpoint as it was before reads decayed: the stored bytes, as they are.
STORED_APP = """
import os
import redis.asyncio as redis
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

r = redis.Redis.from_url(os.environ["STORED_REDIS_URL"])

async def contact(request):
    raw = await r.get("ls:{%d}:c:" % int(request.query_params["p"]) + request.path_params["id"])
    return Response(raw, 200, media_type="application/json")

async def ready(request):
    return Response(status_code=204)

app = Starlette(routes=[Route("/v1/contacts/{id:path}", contact), Route("/readyz", ready)])
"""


def documents(contacts: int, events: int) -> dict[str, bytes]:
    """Read-model documents as the flow writes them, for a generated stream."""
    rules = load_rules(str(RULES))
    engine = Engine(rules)
    writer = DocumentWriter(engine)
    states: dict[str, Any] = {}
    known = rules.known_actions
    from leadscore.events import Event, parse_events

    for event in parse_events(list(generate_events(contacts, events, seed=13)), 0.0):
        if type(event) is not Event or event.action not in known:
            continue
        state = states.get(event.contact)
        if state is None:
            state = states[event.contact] = engine.new_state()
        engine.apply(state, event)
    return {c: writer.encode(c, s) for c, s in states.items()}


def per_call_us(fn: Any, args: list[Any], rounds: int) -> float:
    """Median over rounds of the mean time of one call over ``args``, in microseconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for a in args:
            fn(a)
        times.append((time.perf_counter() - start) / len(args) * 1e6)
    return statistics.median(times)


def function_figures(docs: dict[str, bytes], rounds: int) -> dict[str, float]:
    raws = list(docs.values())
    at = time.time()
    loads, dumps = orjson.loads, orjson.dumps
    base = per_call_us(lambda raw: dumps(loads(raw)), raws, rounds)
    read = per_call_us(lambda raw: view_at_bytes(raw, at), raws, rounds)
    return {
        "documents": len(raws),
        "mean_document_bytes": round(statistics.mean(map(len, raws)), 1),
        "baseline_us": round(base, 2),
        "view_at_us": round(read, 2),
        "ratio": round(read / base, 2),
    }


class RawClient:
    """One keep-alive HTTP/1.1 connection that sends a prebuilt GET and reads the answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def get(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        return status, rest[:length]

    def close(self) -> None:
        self.sock.close()


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "n": len(ordered)}


def http_figures(docs: dict[str, bytes], requests: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="leadscore-read-") as tmp:
        procs = Processes(Path(tmp), flush_ms=2.0)
        procs.start()
        try:
            url = f"redis://127.0.0.1:{procs.redis_port}/0"
            with RedisStore(url) as store:
                keys = store.ensure(16)
                store.r.mset({keys.contact_read_model(c): raw for c, raw in docs.items()})
            stored_port = free_port()
            (Path(tmp) / "stored_app.py").write_text(STORED_APP)
            stored_proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "uvicorn", "stored_app:app"),
                    *("--host", "127.0.0.1", "--port", str(stored_port)),
                    *("--no-access-log", "--log-level", "warning"),
                ],
                cwd=tmp,
                env={**os.environ, "STORED_REDIS_URL": url},
            )
            procs.procs.append(stored_proc)  # stopped with the others
            wait_http(f"http://127.0.0.1:{stored_port}/readyz")
            contacts = sorted(docs, key=lambda c: -len(docs[c]))[:50]  # the biggest documents
            service = RawClient(procs.service_port)
            stored = RawClient(stored_port)
            baseline = RawClient(procs.baseline_port)
            reads = [request(f"/v1/contacts/{c}") for c in contacts]
            plain = [request(f"/v1/contacts/{c}?p={keys.partition(c)}") for c in contacts]
            ready = request("/readyz")
            for i in range(200):  # warm up the servers and the connections
                assert service.get(reads[i % len(reads)])[0] == 200
                assert stored.get(plain[i % len(plain)])[0] == 200
                assert baseline.get(ready)[0] == 204
            times: dict[str, list[float]] = {"read": [], "stored": [], "baseline": []}
            per_round = max(1, requests // rounds)
            clock = time.perf_counter
            for r in range(rounds):
                for i in range(per_round):
                    k = (r + i) % len(reads)
                    start = clock()
                    status, body = service.get(reads[k])
                    times["read"].append(clock() - start)
                    assert status == 200 and b'"as_of"' in body, body[:200]
                    start = clock()
                    stored.get(plain[k])
                    times["stored"].append(clock() - start)
                    start = clock()
                    baseline.get(ready)
                    times["baseline"].append(clock() - start)
            for client in (service, stored, baseline):
                client.close()
        finally:
            procs.stop()
    out: dict[str, Any] = {name: percentiles(samples) for name, samples in times.items()}
    out["p50_ratio"] = round(out["read"]["p50_ms"] / out["baseline"]["p50_ms"], 2)
    out["p50_ratio_to_stored"] = round(out["read"]["p50_ms"] / out["stored"]["p50_ms"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    contacts, events = (100, 1000) if args.quick else (2000, 40000)
    requests, rounds = (400, 4) if args.quick else (5000, 10)
    docs = documents(contacts, events)
    figures = {
        "machine": f"{platform.node()} Python {platform.python_version()}",
        "function": function_figures(docs, 3 if args.quick else 9),
        "http": http_figures(docs, requests, rounds),
    }
    f, h = figures["function"], figures["http"]
    print(
        f"view_at_bytes: {f['view_at_us']} us a read ({f['documents']} documents, "
        f"{f['mean_document_bytes']} bytes on average); orjson loads+dumps of the same "
        f"bytes: {f['baseline_us']} us ({f['ratio']}x)"
    )
    labels = {
        "read": "GET /v1/contacts/{id}, as of the read",
        "stored": "the stored bytes as they are (the read before)",
        "baseline": "baseline GET /readyz (204)",
    }
    for name, label in labels.items():
        p = h[name]
        print(
            f"{label}: p50 {p['p50_ms']} ms, p90 {p['p90_ms']} ms, p99 {p['p99_ms']} ms "
            f"({p['n']} requests)"
        )
    verdict = "meets" if h["read"]["p50_ms"] < 1.0 else "MISSES"
    print(
        f"read API p50 {h['read']['p50_ms']} ms: {verdict} the 1 ms target "
        f"({h['p50_ratio']}x the baseline, {h['p50_ratio_to_stored']}x the stored bytes)"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
