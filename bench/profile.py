"""Where the time goes: py-spy over one benchmark run, summed by function and by line.

``python -m bench.profile c1 [--events 100000 --contacts 10000] [--rate 250] [--top 30]``

Targets: ``apply`` (Engine.apply over pre-parsed events, no I/O), ``e``, ``a``, ``c1``, ``d1``
(the designs of ``bench.throughput``; ``d1`` gets a private redis-server, pre-loaded first).
Only samples inside the measured part are counted (not imports or flow building), so the
percentages are shares of the run itself. py-spy is not a dependency: ``pip install py-spy``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import orjson

from bench.common import (
    RESULTS,
    ROOT,
    events_file,
    iter_lines,
    load_redis_server,
    rules_path,
    split_file,
)

# Frames that start the measured part of each target, and frames to leave out.
ROOT_FRAME = {"apply": "Engine.apply ("}
DEFAULT_ROOT = "run (bench/runner.py"
EXCLUDE = ("build (bench/runner.py",)

APPLY_LOOP = """
import sys
from pathlib import Path
from bench.common import iter_lines, parsed_events
from leadscore.engine import Engine
from leadscore.rules import load_rules
rules = load_rules(sys.argv[1])
engine = Engine(rules)
events = parsed_events(iter_lines(Path(sys.argv[2])), rules)
for _ in range(2):
    states = {}
    for e in events:
        state = states.get(e.contact)
        if state is None:
            state = states[e.contact] = engine.new_state()
        engine.apply(state, e)
"""


def summarize(raw: Path, root: str, top: int) -> str:
    """Inclusive share per function and self share per line, from py-spy's raw output."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        starts = [i for i, f in enumerate(frames) if f.startswith(root)]
        if not starts or any(f.startswith(EXCLUDE) for f in frames):
            continue
        stacks.append((frames[starts[0] :], int(count)))
    total = sum(n for _, n in stacks)
    if not total:
        return f"no samples under {root!r}"

    def function(frame: str) -> str:
        name, _, where = frame.partition(" (")
        return f"{name} ({where.split(':')[0]})" if where else name

    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in stacks:
        for name in {function(f) for f in frames}:
            inclusive[name] += n
        own[frames[-1]] += n
    lines = [f"{total} samples under {root!r}", "", "inclusive, by function:"]
    lines += [f"{n / total * 100:6.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "self, by line:"]
    lines += [f"{n / total * 100:6.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("target", choices=("apply", "a", "e", "c1", "d1"))
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rules", default=None)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    rules = str(rules_path(args.rules))
    single = events_file(args.events, args.contacts, args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / f"profile-{args.target}.txt"
    tmp = Path(tempfile.mkdtemp(prefix="leadscore-profile-"))
    server = None
    try:
        if args.target == "apply":
            command = [sys.executable, "-c", APPLY_LOOP, rules, str(single)]
        else:
            mode = {"a": "naive", "e": "engine", "c1": "files", "d1": "redis"}[args.target]
            spec: dict[str, object] = {"mode": mode, "rules": rules, "out": str(tmp / "out")}
            if mode == "engine":
                spec["events"] = [str(single)]
            elif mode in ("naive", "files"):
                spec["events"] = [str(p) for p in split_file(single, 2)]
            else:
                from state.redis_store import RedisStore

                server = load_redis_server().RedisServer(tmp / "redis").start()
                with RedisStore(server.url, partitions=16) as store:
                    store.ensure(16)
                    store.send_events(iter_lines(single), batch=100)
                spec.update(redis_url=server.url, partitions=16, tail=False, out=None)
            command = [sys.executable, "-m", "bench.runner", orjson.dumps(spec).decode()]
        subprocess.run(
            ["py-spy", "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--", *command],
            cwd=ROOT,
            check=True,
        )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(summarize(raw, ROOT_FRAME.get(args.target, DEFAULT_ROOT), args.top))


if __name__ == "__main__":
    main()
