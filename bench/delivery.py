"""Delivery: firing-to-receiver latency and one deliverer's throughput (`leadscore deliver`).

Everything is real and local: a private redis-server, a deliverer process, and a receiver
process (a minimal asyncio HTTP/1.1 server answering 200) on loopback.

- **Latency.** Firings are committed the way the flow commits them (one checkpoint script per
  firing, at a fixed rate, each record stamped with the wall time just before its commit),
  with one `notify` action to a json channel (signed). The receiver stamps each arrival;
  latency = arrival - commit start, p50/p99/max.
- **Throughput.** N firings are pre-loaded over many contacts, then one deliverer starts;
  deliveries per second between the first and the last arrival. The baseline, in the same run
  against the same receiver, is a bare httpx client POSTing the same bodies with the same
  concurrency (no Redis, no signature, no bookkeeping): the HTTP ceiling of this box.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import ROOT, load_redis_server, machine_info
from state.keys import partition_of
from state.redis_store import RedisStore

SECRET = "bench-secret"


# --------------------------------------------------------------------------- receiver


def _receiver(port_out: Any, log_path: str) -> None:
    """A keep-alive HTTP/1.1 server: records ``(n, arrival)`` of each body, answers 200."""
    arrivals: list[tuple[int, float]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                arrivals.append((orjson.loads(body).get("n", -1), time.time()))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        # IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the listener
        # says TCP; without it every keep-alive answer waits for Nagle (~40 ms)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(handle, sock=sock, backlog=1024)
        port_out.send(server.sockets[0].getsockname()[1])
        done = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(15, done.set)
        await done.wait()
        server.close()

    asyncio.run(main())
    Path(log_path).write_bytes(orjson.dumps(arrivals))


class Receiver:
    def __init__(self, tmp: Path, name: str) -> None:
        self.log = tmp / f"{name}.json"
        parent, child = mp.Pipe()
        self.proc = mp.get_context("fork").Process(target=_receiver, args=(child, str(self.log)))
        self.proc.start()
        self.url = f"http://127.0.0.1:{parent.recv()}"

    def finish(self) -> list[tuple[int, float]]:
        assert self.proc.pid is not None
        os.kill(self.proc.pid, 15)
        self.proc.join(30)
        return [(int(n), float(t)) for n, t in orjson.loads(self.log.read_bytes())]


# --------------------------------------------------------------------------- processes


def _deliverer(redis_url: str, rules: Path, concurrency: int) -> subprocess.Popen[bytes]:
    code = (
        "import os, sys\n"
        "from leadscore.deliverer import DeliverConfig, run_deliverer\n"
        "from leadscore.delivery import build_plan\n"
        "from leadscore.rules import load_rules\n"
        "config = DeliverConfig(sys.argv[1], name='bench', concurrency=int(sys.argv[3]))\n"
        "run_deliverer(config, build_plan(load_rules(sys.argv[2]), os.environ))\n"
    )
    env = {**os.environ, "BENCH_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, redis_url, str(rules), str(concurrency)], env=env, cwd=ROOT
    )


def _rules(tmp: Path, url: str) -> Path:
    path = tmp / "rules.yaml"
    path.write_text(
        "version: 1\n"
        f"channels: {{sales: {{webhook: '{url}/hook', secret_env: BENCH_SECRET}}}}\n"
        "triggers: [{id: mql, at_least: 50, actions: [{notify: sales}, {add_segment: mql}]}]\n"
    )
    return path


def _record(n: int, contact: str, t0: float) -> bytes:
    from leadscore.events import format_ts

    return orjson.dumps(
        {
            "contact": contact,
            "trigger": "mql",
            "score": 52.5,
            "at": format_ts(t0),
            "actions": [{"notify": "sales"}, {"add_segment": "mql"}],
            "cause": f"form.submit e-{n}: demo-request +30",
            "n": n,
            "t0": t0,
        }
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- runs


def latency(redis_url: str, tmp: Path, rate: float, seconds: float, contacts: int) -> dict:
    store = RedisStore(redis_url)
    store.r.flushall()
    keys = store.ensure(16)
    receiver = Receiver(tmp, "latency")
    proc = _deliverer(redis_url, _rules(tmp, receiver.url), 16)
    try:
        time.sleep(3.0)  # the deliverer imports, takes its leases and starts reading
        seq = [0] * keys.partitions
        sent: dict[int, float] = {}
        start = time.time()
        n = 0
        while n < rate * seconds:
            due = start + n / rate
            if (wait := due - time.time()) > 0:
                time.sleep(wait)
            contact = f"c-{n % contacts}"
            p = partition_of(contact, keys.partitions)
            seq[p] += 1
            t0 = time.time()
            store.checkpoint(p, seq[p], triggers=[_record(n, contact, t0)])
            sent[n] = t0
            n += 1
        time.sleep(3.0)
    finally:
        proc.terminate()
        proc.wait(30)
    arrivals = receiver.finish()
    first: dict[int, float] = {}
    for k, t in arrivals:
        first.setdefault(k, t)
    ms = [(first[k] - t0) * 1000 for k, t0 in sent.items() if k in first]
    return {
        "rate": rate,
        "seconds": seconds,
        "firings": len(sent),
        "arrived": len(ms),
        "duplicates": len(arrivals) - len(first),
        "p50_ms": round(_pct(ms, 0.5), 2),
        "p99_ms": round(_pct(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(redis_url: str, tmp: Path, firings: int, contacts: int, conc: int) -> dict:
    """Rates swing with the box's load; CPU per delivery is the steadier figure."""
    store = RedisStore(redis_url)
    store.r.flushall()
    keys = store.ensure(16)
    per: dict[int, list[bytes]] = {p: [] for p in range(keys.partitions)}
    bodies = []
    for n in range(firings):
        contact = f"c-{n % contacts}"
        record = _record(n, contact, time.time())
        per[partition_of(contact, keys.partitions)].append(record)
        bodies.append(record)

    receiver = Receiver(tmp, "throughput")
    proc = _deliverer(redis_url, _rules(tmp, receiver.url), conc)
    try:
        time.sleep(3.0)  # imports, leases: not what a delivery costs
        cpu0 = _cpu(proc.pid)
        for p, records in per.items():
            for i in range(0, len(records), 1000):
                store.checkpoint(p, i // 1000 + 1, triggers=records[i : i + 1000])
        deadline = time.time() + 600
        while time.time() < deadline:
            groups = [
                g
                for p in range(keys.partitions)
                for g in store.r.xinfo_groups(keys.triggers(p))
                if g["name"] == b"deliver"
            ]
            left = sum(g["pending"] + (g.get("lag") or 0) for g in groups)
            if len(groups) == keys.partitions and left == 0:
                break
            time.sleep(0.2)
        cpu = _cpu(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)
    arrivals = receiver.finish()
    times = sorted(t for _, t in arrivals)
    rate = (len(times) - 1) / (times[-1] - times[0])

    base = Receiver(tmp, "baseline")
    base_cpu0 = time.process_time()
    asyncio.run(_baseline(base.url + "/hook", bodies, conc))
    base_cpu = time.process_time() - base_cpu0
    base_times = sorted(t for _, t in base.finish())
    base_rate = (len(base_times) - 1) / (base_times[-1] - base_times[0])
    return {
        "firings": firings,
        "contacts": contacts,
        "concurrency": conc,
        "arrived": len({n for n, _ in arrivals}),
        "deliveries_per_s": round(rate),
        "baseline_posts_per_s": round(base_rate),
        "ratio": round(rate / base_rate, 3),
        "cpu_us_per_delivery": round(cpu / firings * 1e6),
        "baseline_cpu_us_per_post": round(base_cpu / firings * 1e6),
        "cpu_ratio": round(cpu / base_cpu, 3),
    }


async def _baseline(url: str, bodies: list[bytes], conc: int) -> None:
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        queue = iter(bodies)

        async def worker() -> None:
            for body in queue:
                await client.post(url, content=body, headers={"Content-Type": "application/json"})

        await asyncio.gather(*(worker() for _ in range(conc)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="firings/s in the latency run")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--firings", type=int, default=20_000, help="throughput run")
    parser.add_argument("--contacts", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="seconds: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.firings, args.rate = 1.0, 200, 50.0
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        server = load_redis_server().RedisServer(tmp / "redis").start()
        try:
            report = {
                "machine": machine_info(),
                "latency": latency(server.url, tmp, args.rate, args.seconds, args.contacts),
                "throughput": throughput(
                    server.url, tmp, args.firings, args.contacts, args.concurrency
                ),
            }
        finally:
            with contextlib.suppress(Exception):
                server.stop()
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
