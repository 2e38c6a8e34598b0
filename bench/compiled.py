"""The compiled engine against the interpreted one and a baseline commit, in the same run.

``python -m bench.compiled [--events 1000000 --contacts 100000 --seed 7] [--rounds 2]
[--baseline REV] [--json bench/results/compiled.json]``

``python -m bench.compiled --callgrind [--events 100000 --contacts 10000]``: the same three
``leadscore run``s, once each under callgrind, counted in instructions per event (the whole
process, Bytewax included; minus a 1-line run of the same variant, which is start-up). On a
shared box CPU seconds swing by 20% between identical runs; instruction counts do not (they
do not see cache misses either: read both).

Three variants, interleaved round by round so a busy minute hurts each alike:

- ``baseline``: the tree of ``REV`` (default: the commit before the compiled engine),
  extracted with ``git archive``: plain Python, as main was;
- ``python``: this tree with ``LEADSCORE_ENGINE=python`` (the fallback);
- ``compiled``: this tree with ``LEADSCORE_ENGINE=compiled`` (needs ``make compiled``).

Two measurements per variant and round, each in a fresh process:

- ``leadscore run`` on the generated events with ``examples/rules.yaml``, 1 worker, the whole
  process timed from outside (start-up, reading, scoring, writing every output): events per
  wall-clock second and per CPU second (the CPU figure moves less on a shared box);
- ``Engine.apply`` over the hot-path mix (``bench/conftest.py``: 20,000 events, 2,000
  contacts, seed 7) from fresh states, the best of 7 loops, in µs per event (CPU time).

The outputs of ``python`` and ``compiled`` (and of the baseline, reported, not required) are
compared byte for byte on the first round: every file of ``--out``.

``python -m bench.compiled --builds TREE TREE... [--rounds N | --callgrind]``: builds of the
same source with other flags (setup.py's ``LEADSCORE_CFLAGS``, ``LEADSCORE_PGO``; each TREE a
copy of the sources built in place), compiled, against each other instead: ``--rounds``
alternates whole ``leadscore run`` processes (CPU seconds of each, every round printed);
``--callgrind`` counts each once with ``--cache-sim=yes``: instructions, L1 instruction-cache
misses and L1 data misses per event, and the L1i misses of each compiled module.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import RESULTS, ROOT, count_lines, events_file, machine_info, rules_path

VARIANTS = ("baseline", "python", "compiled")

APPLY = """
import sys, time
from bench.common import parsed_events, rules_path
from leadscore.engine import Engine
from leadscore.generate import generate_events
from leadscore.rules import load_rules
rules = load_rules(rules_path())
engine = Engine(rules)
events = parsed_events(iter(list(generate_events(2000, 20000, 7))), rules)
best = float("inf")
for _ in range(7):
    states = {}
    apply, new_state = engine.apply, engine.new_state
    t0 = time.process_time()
    for e in events:
        state = states.get(e.contact)
        if state is None:
            state = states[e.contact] = new_state()
        apply(state, e)
    best = min(best, time.process_time() - t0)
import leadscore.engine as module
print(best / len(events) * 1e6, module.__file__)
"""


def default_baseline() -> str:
    """The commit before the one that added setup.py (the compiled engine's first)."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "setup.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        raise SystemExit("no commit adds setup.py here: pass --baseline REV")
    return f"{added[-1]}~1"


def extract(rev: str, into: Path) -> str:
    """``rev``'s tree in ``into`` (git archive); returns its short commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return commit


def env_for(variant: str, tree: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env["LEADSCORE_ENGINE"] = "python" if variant == "baseline" else variant
    return env


def timed_run(variant: str, tree: Path, events: Path, out: Path, rules: Path) -> dict[str, Any]:
    """``leadscore run`` in a fresh process: wall-clock and CPU seconds of the whole process."""
    command = [sys.executable, "-m", "leadscore.cli", "run", "-r", str(rules), "-e", str(events)]
    command += ["--out", str(out), "--workers", "1", "--no-progress"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env_for(variant, tree), capture_output=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{variant}: leadscore run failed:\n{done.stderr.decode()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu_seconds": cpu}


def instructions(variant: str, tree: Path, events: Path, out: Path, rules: Path) -> int:
    """Instructions callgrind counts for ``leadscore run`` on ``events`` (the whole process)."""
    report = out.with_suffix(".callgrind")
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={report}"]
    command += [sys.executable, "-m", "leadscore.cli", "run", "-r", str(rules), "-e", str(events)]
    command += ["--out", str(out), "--workers", "1", "--no-progress"]
    done = subprocess.run(command, cwd=tree, env=env_for(variant, tree), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"{variant}: leadscore run failed:\n{done.stderr.decode()[-3000:]}")
    for line in report.read_text().splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"{variant}: no totals in {report}")


def callgrind_main(args: argparse.Namespace, rules: Path, events: Path, lines: int) -> None:
    """Instructions per event of each variant's whole run, start-up subtracted."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind: apt-get install valgrind")
    tmp = Path(tempfile.mkdtemp(prefix="leadscore-callgrind-"))
    trees = {"python": ROOT, "compiled": ROOT}
    one = tmp / "one.jsonl"
    with events.open("rb") as source:
        one.write_bytes(source.readline())
    table: dict[str, dict[str, Any]] = {}
    try:
        baseline = extract(args.baseline or default_baseline(), tmp / "baseline")
        trees["baseline"] = tmp / "baseline"
        for variant in VARIANTS:
            start = instructions(variant, trees[variant], one, tmp / f"one-{variant}", rules)
            total = instructions(variant, trees[variant], events, tmp / f"out-{variant}", rules)
            per_event = (total - start) / lines
            table[variant] = {"startup": start, "total": total, "per_event": per_event}
            print(f"{variant}: {per_event:,.0f} instructions per event", flush=True)
        same = {
            "compiled_vs_python": compare(
                outputs(tmp / "out-compiled"), outputs(tmp / "out-python")
            ),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = table["baseline"]["per_event"]
    print(f"\n{lines:,} lines, baseline {baseline}, whole process under callgrind:")
    print(f"{'variant':<10}{'instr./event':>14}{'x base':>8}")
    for variant, row in table.items():
        row["ratio"] = base / row["per_event"]
        print(f"{variant:<10}{row['per_event']:>14,.0f}{row['ratio']:>8.2f}")
    print(f"outputs byte-identical: {same}")
    report = {"baseline": baseline, "lines": lines, "identical": same, "variants": table}
    report["machine"] = machine_info()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"report: {args.json}")


def apply_us(variant: str, tree: Path) -> tuple[float, str]:
    done = subprocess.run(
        [sys.executable, "-c", APPLY],
        cwd=tree,
        env=env_for(variant, tree),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant}: apply loop failed:\n{done.stderr[-3000:]}")
    us, module = done.stdout.split()
    return float(us), module


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def compare(a: dict[str, bytes], b: dict[str, bytes]) -> dict[str, str]:
    """Per output file: identical bytes, the same lines in another order, or different."""
    result = {}
    for name in sorted(a.keys() | b.keys()):
        x, y = a.get(name), b.get(name)
        if x == y:
            result[name] = "identical"
        elif x is not None and y is not None and sorted(x.split(b"\n")) == sorted(y.split(b"\n")):
            result[name] = "same lines, other order"
        else:
            result[name] = "different"
    return result


CACHE_EVENTS = ("Ir", "I1mr", "D1mr", "D1mw")


def cache_counts(report: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(totals, L1i misses per shared object) of a ``--cache-sim=yes`` callgrind report.

    Self costs only: the line after a ``calls=`` line is the call's inclusive cost, skipped.
    """
    names: dict[str, str] = {}
    per_object: dict[str, int] = {}
    totals: dict[str, int] = {}
    events: list[str] = []
    obj = ""
    skip = False
    with report.open() as lines:
        for line in lines:
            if skip:
                skip = False
                continue
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("totals:", "summary:")):
                values = [int(v) for v in line.split()[1:]]
                totals = {e: v for e, v in zip(events, values, strict=False) if e in CACHE_EVENTS}
            elif line.startswith(("ob=", "cob=")):  # an object's name comes with its first id
                key, _, rest = line.partition("=")
                ref, _, name = rest.strip().partition(" ")
                if name:
                    names[ref] = name
                if key == "ob":
                    obj = ref
            elif line.startswith("calls="):
                skip = True
            elif (line[:1].isdigit() or line[:1] in "+-*") and "I1mr" in events:
                values = line.split()  # the position, then one value per event (trailing 0s cut)
                at = 1 + events.index("I1mr")
                if len(values) > at:
                    per_object[obj] = per_object.get(obj, 0) + int(values[at])
    return totals, {names.get(ref, ref): n for ref, n in per_object.items()}


def cache_run(tree: Path, events: Path, out: Path, rules: Path) -> tuple[dict[str, int], dict]:
    report = out.with_suffix(".callgrind")
    command = ["valgrind", "--tool=callgrind", "--cache-sim=yes"]
    command += [f"--callgrind-out-file={report}", sys.executable, "-m", "leadscore.cli", "run"]
    command += ["-r", str(rules), "-e", str(events), "--out", str(out), "--workers", "1"]
    command += ["--no-progress"]
    env = {**env_for("compiled", tree), "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: leadscore run failed:\n{done.stderr.decode()[-3000:]}")
    return cache_counts(report)


def builds_main(args: argparse.Namespace) -> None:
    """Compiled builds of one source (other flags) against each other, in CPU s or cache misses."""
    os.environ["LEADSCORE_ENGINE"] = "compiled"
    trees = [tree.resolve() for tree in args.builds]
    for tree in trees:  # each must load compiled (checks its sources.json) before any timing
        check = "import leadscore.accel as a; assert a.decide()[0], a.decide()"
        env = env_for("compiled", tree)
        subprocess.run([sys.executable, "-c", check], cwd=tree, env=env, check=True)
    rules = rules_path()
    events = events_file(args.events, args.contacts, args.seed)
    lines = count_lines([events])
    tmp = Path(tempfile.mkdtemp(prefix="leadscore-builds-"))
    report: dict[str, Any] = {"lines": lines, "trees": [str(t) for t in trees]}
    try:
        if args.callgrind:
            one = tmp / "one.jsonl"
            with events.open("rb") as source:
                one.write_bytes(source.readline())
            rows = {}
            for n, tree in enumerate(trees):
                start, _ = cache_run(tree, one, tmp / f"one-{n}", rules)
                total, objects = cache_run(tree, events, tmp / f"out-{n}", rules)
                per = {k: (total[k] - start.get(k, 0)) / lines for k in total}
                compiled = {
                    Path(o).name.split(".")[0]: v / lines
                    for o, v in objects.items()
                    if "/_compiled/" in o
                }
                rows[str(tree)] = {"per_event": per, "compiled_l1i_per_event": compiled}
                cells = "  ".join(f"{k} {v:,.1f}" for k, v in per.items())
                mods = ", ".join(f"{k} {v:.1f}" for k, v in sorted(compiled.items()))
                print(f"{tree}: per event {cells}\n  L1i misses by module: {mods}", flush=True)
            first = outputs(tmp / "out-0")
            report["identical"] = {
                str(t): compare(first, outputs(tmp / f"out-{n}")) for n, t in enumerate(trees)
            }
            report["callgrind"] = rows
        else:
            runs: dict[str, list[float]] = {str(t): [] for t in trees}
            for round_no in range(args.rounds):
                order = trees if round_no % 2 == 0 else list(reversed(trees))
                for tree in order:
                    out = tmp / f"out-{round_no}-{trees.index(tree)}"
                    result = timed_run("compiled", tree, events, out, rules)
                    runs[str(tree)].append(result["cpu_seconds"])
                    print(
                        f"round {round_no + 1} {tree}: {lines / result['cpu_seconds']:,.0f} "
                        f"events per CPU s ({result['cpu_seconds']:.2f} s, wall "
                        f"{result['seconds']:.2f} s, load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
                    shutil.rmtree(out, ignore_errors=True)
            for tree, cpu in runs.items():
                print(f"{tree}: median {lines / statistics.median(cpu):,.0f} events per CPU s")
            report["cpu_seconds"] = runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"identical: {report.get('identical', 'not compared')}")
    report["machine"] = machine_info()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"report: {args.json}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compiled", description=__doc__)
    parser.add_argument("--events", type=int, default=None, help="default 1M (callgrind 100k)")
    parser.add_argument("--contacts", type=int, default=None, help="default 100k (callgrind 10k)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", default=None, help="git revision (default: see above)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--callgrind", action="store_true", help="instructions per event under callgrind, once"
    )
    parser.add_argument(
        "--builds", type=Path, nargs="+", default=None, help="compiled trees to compare (above)"
    )
    args = parser.parse_args(argv)
    small = args.callgrind
    args.events = args.events or (100_000 if small else 1_000_000)
    args.contacts = args.contacts or (10_000 if small else 100_000)
    name = "compiled-builds" if args.builds else "compiled"
    args.json = args.json or RESULTS / (f"{name}-callgrind.json" if small else f"{name}.json")

    if args.builds:
        builds_main(args)
        return
    os.environ["LEADSCORE_ENGINE"] = "compiled"  # fail here, not mid-run, if it is not built
    from leadscore.accel import decide

    decide()
    rules = rules_path()
    events = events_file(args.events, args.contacts, args.seed)
    lines = count_lines([events])
    if args.callgrind:
        callgrind_main(args, rules, events, lines)
        return
    tmp = Path(tempfile.mkdtemp(prefix="leadscore-compiled-"))
    trees = {"python": ROOT, "compiled": ROOT}
    try:
        baseline = extract(args.baseline or default_baseline(), tmp / "baseline")
        trees["baseline"] = tmp / "baseline"
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        same: dict[str, bool] = {}
        modules: dict[str, str] = {}
        for round_no in range(args.rounds):
            order = VARIANTS if round_no % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                out = tmp / f"out-{variant}-{round_no}"
                result = timed_run(variant, trees[variant], events, out, rules)
                result["apply_us"], modules[variant] = apply_us(variant, trees[variant])
                runs[variant].append(result)
                print(
                    f"round {round_no + 1} {variant}: {lines / result['seconds']:,.0f} events/s, "
                    f"{lines / result['cpu_seconds']:,.0f} per CPU s, apply "
                    f"{result['apply_us']:.2f} µs",
                    flush=True,
                )
            if round_no == 0:
                first = {v: outputs(tmp / f"out-{v}-0") for v in VARIANTS}
                same = {
                    "compiled_vs_python": compare(first["compiled"], first["python"]),
                    "python_vs_baseline": compare(first["python"], first["baseline"]),
                }
            for variant in VARIANTS:
                shutil.rmtree(tmp / f"out-{variant}-{round_no}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def median(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[variant])

    table = {}
    for variant in VARIANTS:
        table[variant] = {
            "events_per_s": lines / median(variant, "seconds"),
            "events_per_cpu_s": lines / median(variant, "cpu_seconds"),
            "apply_us": median(variant, "apply_us"),
            "engine_module": modules[variant],
            "rounds": runs[variant],
        }
    base = table["baseline"]
    print(f"\n{lines:,} lines, {args.rounds} rounds, baseline {baseline}, medians:")
    print(
        f"{'variant':<10}{'events/s':>12}{'x base':>8}{'per CPU s':>12}{'x base':>8}"
        f"{'apply µs':>10}{'x base':>8}"
    )
    for variant, row in table.items():
        row["run_ratio"] = row["events_per_s"] / base["events_per_s"]
        row["cpu_ratio"] = row["events_per_cpu_s"] / base["events_per_cpu_s"]
        row["apply_ratio"] = base["apply_us"] / row["apply_us"]
        print(
            f"{variant:<10}{row['events_per_s']:>12,.0f}{row['run_ratio']:>8.2f}"
            f"{row['events_per_cpu_s']:>12,.0f}{row['cpu_ratio']:>8.2f}"
            f"{row['apply_us']:>10.2f}{row['apply_ratio']:>8.2f}"
        )
    print(f"outputs byte-identical: {same}")
    report = {
        "baseline": baseline,
        "lines": lines,
        "rounds": args.rounds,
        "identical": same,
        "variants": table,
        "machine": machine_info(),
        "load": os.getloadavg(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"report: {args.json}")


if __name__ == "__main__":
    main()
