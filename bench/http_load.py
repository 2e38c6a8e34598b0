"""Bounded HTTP load test of the service on loopback: ``python -m bench.http_load``.

Starts a private redis-server, the real service (``run_server``, one uvicorn process) and a
baseline app (trivial Starlette endpoints answering 204 on the same routes) and drives each
with the same load: wrk (Debian's ``wrk``) when installed, else a Python asyncio httpx
generator. Every run is bounded by duration (and, for the Python generator, by a request
count) and only ever targets 127.0.0.1. Throughput is reported as requests/s and as a ratio
to the baseline measured in the same run, because absolute figures say more about the
machine than about the code.

Scenarios: the pixel (GET /t.gif, a fresh contact per request), /v1/batch with 100 events
per call, and the pixel at light load (one connection) to show request latency, which bounds
the request-to-stream latency since a request returns only once its events are in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
WRITE_KEY = "bench-key"
BATCH_EVENTS = 100

BASELINE_APP = """
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def pixel(request):
    return Response(status_code=204)

async def batch(request):
    await request.body()
    return Response(status_code=204)

async def ready(request):
    return Response(status_code=204)

app = Starlette(routes=[
    Route("/t.gif", pixel), Route("/v1/batch", batch, methods=["POST"]), Route("/readyz", ready)
])
"""

PIXEL_LUA = """
math.randomseed(42)
request = function()
  local contact = "c-" .. math.random(1, 1000000)
  local query = "?contact=" .. contact .. "&url=https%3A%2F%2Facme.com%2Fpricing&title=Pricing"
  return wrk.format("GET", "/t.gif" .. query)
end
"""

BATCH_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic {auth}"
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
"""


@dataclass
class Result:
    scenario: str
    target: str
    connections: int
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_us: float = 0.0  # server process CPU per request: robust on a shared, busy machine

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux /proc), for CPU per request."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.05)


def batch_body() -> bytes:
    """100 track events for 100 contacts (spread over the partitions), as Segment sends."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    batch = [
        {
            "type": "track",
            "userId": f"c-{i}",
            "event": "Email Opened",
            "messageId": f"m-{i}",
            "timestamp": now,
            "properties": {"campaign": "spring", "subject": "Pricing update", "n": i},
        }
        for i in range(BATCH_EVENTS)
    ]
    return orjson.dumps({"batch": batch, "sentAt": now})


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"cannot read latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(
    url: str, script: str, connections: int, duration: int, scenario: str, target: str
) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        f.name,
        url,
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 60, check=True
    ).stdout
    os.unlink(f.name)
    requests = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: .*timeout (\d+)"):
        m = re.search(pattern, out)
        errors += int(m.group(1)) if m else 0
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    return Result(scenario, target, connections, requests, requests / rps, errors, p50, p99)


async def _python_load(
    url: str,
    method: str,
    body: bytes | None,
    headers: dict[str, str],
    connections: int,
    duration: float,
    max_requests: int,
) -> tuple[int, int, float, list[float]]:
    latencies: list[float] = []
    errors = 0
    issued = 0
    stop_at = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=5.0) as client:

        async def worker(n: int) -> None:
            nonlocal errors, issued
            i = 0
            while time.perf_counter() < stop_at and issued < max_requests:
                issued += 1
                i += 1
                target = url if body is not None else f"{url}?contact=c-{n}-{i}&url=x"
                started = time.perf_counter()
                try:
                    response = await client.request(method, target, content=body, headers=headers)
                    if response.status_code >= 400:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(connections)))
        elapsed = time.perf_counter() - started
    return len(latencies), errors, elapsed, latencies


def run_python(
    url: str,
    body: bytes | None,
    connections: int,
    duration: int,
    scenario: str,
    target: str,
    max_requests: int,
) -> Result:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    method = "POST" if body is not None else "GET"
    n, errors, elapsed, latencies = asyncio.run(
        _python_load(url, method, body, headers, connections, duration, max_requests)
    )
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0.0
    p99 = (
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else 0.0
    )
    return Result(scenario, target, connections, n, elapsed, errors, p50, p99)


class Processes:
    """redis-server, the service and the baseline app, each its own process, all loopback."""

    def __init__(self, workdir: Path, flush_ms: float) -> None:
        self.workdir = workdir
        self.flush_ms = flush_ms
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, int] = {}
        self.redis_port = free_port()
        self.service_port = free_port()
        self.baseline_port = free_port()

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is required (apt-get install redis-server)")
        self._spawn(
            [
                exe,
                *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
            ]
        )
        redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.redis_port).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        service = textwrap.dedent(
            f"""
            import logging
            from leadscore.service import ServiceConfig, run_server
            logging.disable(logging.INFO)
            config = ServiceConfig(
                redis_url={redis_url!r},
                partitions=16,
                write_keys=({WRITE_KEY!r},),
                flush_interval_ms={self.flush_ms!r},
            )
            run_server(config, "127.0.0.1", {self.service_port})
            """
        )
        self.pids["service"] = self._spawn([sys.executable, "-c", service])
        baseline = self.workdir / "baseline_app.py"
        baseline.write_text(BASELINE_APP)
        self.pids["baseline"] = self._spawn(
            [
                *(sys.executable, "-m", "uvicorn", "baseline_app:app"),
                *("--host", "127.0.0.1", "--port", str(self.baseline_port)),
                *("--no-access-log", "--log-level", "warning"),
            ],
            cwd=self.workdir,
        )
        wait_http(f"http://127.0.0.1:{self.service_port}/readyz")
        wait_http(f"http://127.0.0.1:{self.baseline_port}/readyz")

    def _spawn(self, command: list[str], cwd: Path | None = None) -> int:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            command,
            cwd=cwd or ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc.pid

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stored_events(client: redis.Redis) -> int:
    total = 0
    for p in range(16):
        for _id, fields in client.xrange(f"ls:{{{p}}}:in"):
            total += fields[b"e"].count(b"\n") + 1
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--max-requests", type=int, default=500_000, help="python tool bound")
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--flush-ms", type=float, default=2.0, help="the service's collector linger (default 2)"
    )
    parser.add_argument("--write", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"

    body = batch_body()
    auth = __import__("base64").b64encode(f"{WRITE_KEY}:".encode()).decode()
    results: list[Result] = []
    stored: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        procs = Processes(Path(tmp), args.flush_ms)
        procs.start()
        client = redis.Redis(port=procs.redis_port)
        body_path = Path(tmp) / "batch.json"
        body_path.write_bytes(body)
        batch_lua = BATCH_LUA.replace("{auth}", auth).replace("{body}", str(body_path))
        try:
            plan = [
                ("pixel", "/t.gif", PIXEL_LUA, None, args.connections),
                ("batch x100", "/v1/batch", batch_lua, body, max(4, args.connections // 4)),
                ("pixel, 1 connection", "/t.gif", PIXEL_LUA, None, 1),
            ]
            for scenario, path, lua, payload, connections in plan:
                for target, port in (
                    ("baseline", procs.baseline_port),
                    ("service", procs.service_port),
                ):
                    client.flushall()
                    url = f"http://127.0.0.1:{port}{path}"
                    cpu_before = cpu_seconds(procs.pids[target])
                    if tool == "wrk":
                        result = run_wrk(url, lua, connections, args.duration, scenario, target)
                    else:
                        if payload is not None and target == "service":
                            url = url.replace("http://", f"http://{WRITE_KEY}:@")
                        result = run_python(
                            url,
                            payload,
                            connections,
                            args.duration,
                            scenario,
                            target,
                            args.max_requests,
                        )
                    used = cpu_seconds(procs.pids[target]) - cpu_before
                    result.cpu_us = used / max(result.requests, 1) * 1e6
                    results.append(result)
                    print(
                        f"{scenario:22} {target:8} {result.rps:10.0f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"cpu {result.cpu_us:6.0f} us/req  errors {result.errors}",
                        flush=True,
                    )
                    if target == "service":
                        per_request = BATCH_EVENTS if payload is not None else 1
                        stored[scenario] = (stored_events(client), result.requests * per_request)
        finally:
            procs.stop()

    table = render(results, stored, tool, args)
    print()
    print(table)
    if args.write:
        args.write.write_text(table)
    return 0


def render(
    results: list[Result],
    stored: dict[str, tuple[int, int]],
    tool: str,
    args: argparse.Namespace,
) -> str:
    by = {(r.scenario, r.target): r for r in results}
    lines = [
        "| scenario | conns | baseline req/s | service req/s | ratio | service events/s "
        "| service p50 / p99 | baseline p50 / p99 | server CPU per request (service / "
        "baseline) | errors | events stored / acknowledged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in dict.fromkeys(r.scenario for r in results):
        base, svc = by[(scenario, "baseline")], by[(scenario, "service")]
        per = BATCH_EVENTS if scenario.startswith("batch") else 1
        kept, sent = stored.get(scenario, (0, 0))
        lines.append(
            f"| {scenario} | {svc.connections} | {base.rps:,.0f} | {svc.rps:,.0f} "
            f"| {svc.rps / base.rps:.2f} | {svc.rps * per:,.0f} "
            f"| {svc.p50_ms:.2f} / {svc.p99_ms:.2f} ms | {base.p50_ms:.2f} / {base.p99_ms:.2f} ms "
            f"| {svc.cpu_us:,.0f} / {base.cpu_us:,.0f} µs | {svc.errors} | {kept:,} / {sent:,} |"
        )
    header = (
        f"`python -m bench.http_load --duration {args.duration} --connections "
        f"{args.connections} --flush-ms {args.flush_ms:g}` ({tool}), {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end, "
        f"Python {platform.python_version()}, one uvicorn process each, redis-server on the "
        "same machine.\n\n"
    )
    return header + "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
