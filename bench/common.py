"""What every benchmark shares: the cached input, the rules, the machine description.

Inputs are generated once per (seed, contacts, events) and cached under ``bench/results/``
(gitignored), because generating 1M events takes longer than scoring them.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from leadscore.events import Event, parse_event
from leadscore.generate import write_events
from leadscore.rules import Rules

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = RESULTS / "cache"
DEFAULT_RULES = ROOT / "examples" / "rules.yaml"
# Fixed "now" for parsing: events without `ts` get it, so runs stay deterministic.
PARSE_NOW = 1_800_000_000.0


def rules_path(given: str | Path | None = None) -> Path:
    """The rules file to benchmark: ``given``, ``$LEADSCORE_BENCH_RULES`` or the example."""
    path = Path(given or os.environ.get("LEADSCORE_BENCH_RULES") or DEFAULT_RULES)
    if not path.is_file():
        raise FileNotFoundError(
            f"rules file not found: {path} (benchmarks use examples/rules.yaml by default; "
            "set LEADSCORE_BENCH_RULES or pass --rules)"
        )
    return path


def events_file(events: int, contacts: int, seed: int, cache: Path = CACHE) -> Path:
    """The generated JSONL input, written once and reused (atomic rename, safe to share)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"events-s{seed}-c{contacts}-e{events}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        write_events(tmp, contacts, events, seed)
        tmp.replace(path)
    return path


def split_file(path: Path, parts: int) -> list[Path]:
    """``path`` split into ``parts`` files by contact (crc32 % parts), order kept per file.

    One input file is one Bytewax input partition, read by one worker; several workers only
    share parsing when there are several files. Splitting by contact keeps each contact's
    events in order, as a partitioned log would.
    """
    if parts == 1:
        return [path]
    outs = [path.with_name(f"{path.stem}.part{i}of{parts}.jsonl") for i in range(parts)]
    if all(p.exists() for p in outs):
        return outs
    tmps = [p.with_suffix(f".tmp{os.getpid()}") for p in outs]
    handles = [t.open("wb") for t in tmps]
    try:
        with path.open("rb") as src:
            for line in src:
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    obj = None
                contact = obj.get("contact") if type(obj) is dict else None
                p = zlib.crc32(contact.encode()) % parts if type(contact) is str else 0
                handles[p].write(line)
    finally:
        for h in handles:
            h.close()
    for tmp, out in zip(tmps, outs, strict=True):
        tmp.replace(out)
    return outs


def count_lines(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with path.open("rb") as fh:
            total += sum(block.count(b"\n") for block in iter(lambda fh=fh: fh.read(1 << 20), b""))
    return total


def iter_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def parsed_events(lines: Iterator[bytes], rules: Rules) -> list[Event]:
    """The valid, known events of ``lines``, parsed once (what the engine sees)."""
    out: list[Event] = []
    known = rules.known_actions
    for line in lines:
        event = parse_event(line, PARSE_NOW)
        if type(event) is Event and event.action in known:
            out.append(event)
    return out


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare our numbers with theirs."""
    from importlib.metadata import version

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "bytewax": version("bytewax"),
        "redis_py": version("redis"),
        "orjson": version("orjson"),
        "msgpack": version("msgpack"),
    }


def load_redis_server() -> ModuleType:
    """``tests/redis_server.py`` (the tests' private redis-server helper), without importing
    the tests package: it is not installed, and bench must not depend on pytest."""
    path = ROOT / "tests" / "redis_server.py"
    spec = importlib.util.spec_from_file_location("leadscore_bench_redis_server", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
