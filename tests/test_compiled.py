"""The compiled engine (Cython, from the same .py files) against the interpreted one.

Both must give the same bytes: every output file of ``leadscore run`` on generated events and
on the real data in ``../shared/data``, and, in process, every effect, stored state and view
of the engine event by event. ``LEADSCORE_ENGINE`` picks which one a process loads
(``leadscore/accel.py``); the suite itself runs compiled when it is built. Without a build
these tests skip, except under ``LEADSCORE_ENGINE=compiled`` (``make test``, CI), where the
suite would already have failed to import.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from conftest import SHARED_DATA

import leadscore.accel
import leadscore.engine
import leadscore.matchers
from leadscore.accel import COMPILED, decide
from leadscore.events import Event, parse_events
from leadscore.generate import generate_events, write_events
from leadscore.rules import load_rules
from state.codec import encode

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "rules.yaml"
DATA = Path(os.environ.get("LEADSCORE_SHARED_DATA", SHARED_DATA))
BUILT = decide()[0]
LEADSCORE = (sys.executable, "-m", "leadscore.cli")
IMPORT_OPTIONS = ("--id", "Prospect ID", "--exclude", "Converted", "--out")

needs_build = pytest.mark.skipif(
    not BUILT, reason=f"the compiled engine is {decide()[1]}: `make compiled` builds it"
)


def run(engine: str, rules: Path, events: Path, out: Path, *extra: str) -> dict[str, bytes]:
    """``leadscore run`` in a fresh process on one engine; every output file's bytes."""
    env = {**os.environ, "LEADSCORE_ENGINE": engine, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*LEADSCORE, "run", "-r", str(rules), "-e", str(events), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "compiled engine" not in done.stderr  # a chosen engine runs without the notice
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def assert_same_outputs(rules: Path, events: Path, tmp: Path, *extra: str) -> dict[str, bytes]:
    python = run("python", rules, events, tmp / "python", *extra)
    compiled = run("compiled", rules, events, tmp / "compiled", *extra)
    assert python.keys() == compiled.keys()
    for name in python:
        assert python[name] == compiled[name], f"{name} differs between the two engines"
    return python


# --------------------------------------------------------------------------- which one loads


@needs_build
def test_the_compiled_engine_is_the_one_loaded_when_built() -> None:
    assert os.environ["LEADSCORE_ENGINE"] == "compiled"  # conftest's choice when built
    path = Path(leadscore.engine.__file__ or "")
    assert path.parent.name == "_compiled"
    assert any(path.name.endswith(suffix) for suffix in EXTENSION_SUFFIXES)
    assert isinstance(leadscore.engine.__loader__, ExtensionFileLoader)
    # The rules' `where` tests run as C types (leadscore.matchers compiled).
    assert Path(leadscore.matchers.__file__ or "").parent.name == "_compiled"
    assert isinstance(load_rules(RULES).matchers["page.hit"], leadscore.matchers.Where)
    # Cython types, not Python classes: a Python class would take a new attribute.
    state = leadscore.engine.ContactState()
    with pytest.raises(AttributeError):
        state.not_a_field = 1  # type: ignore[attr-defined]


# Every module the build compiles: the engine, the rules, the event contract (parse_ts,
# format_ts, round4), typed decoding, the output records, the shard logic, the parse step,
# the Redis flow's partition logic, its read model, its state codec and its command packer.
MODULES = [f"{package}.{module}" for package, module in COMPILED]
LOADED = (
    "import importlib, sys, leadscore.accel as a\n"
    "for name in sys.argv[1:]: print(importlib.import_module(name).__file__)\n"
    "print(a.is_compiled())"
)


def loaded_files(engine: str) -> list[str]:
    """Which file each compiled module loads from, in a fresh process on ``engine``."""
    env = {**os.environ, "LEADSCORE_ENGINE": engine, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", LOADED, *MODULES],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return done.stdout.splitlines()


def test_every_hot_path_module_is_in_the_build() -> None:
    assert set(MODULES) >= {
        "leadscore.engine",
        "leadscore.rules",
        "leadscore.matchers",
        "leadscore.events",
        "leadscore.typed",
        "leadscore.records",
        "flows.shards",
        "flows.parse",
        "flows.redis_flow",
        "leadscore.readmodel",
        "state.codec",
        "state.resp",
    }


@needs_build
def test_compiled_loads_every_module_as_an_extension() -> None:
    *files, compiled = loaded_files("compiled")
    for name, file in zip(MODULES, files, strict=True):
        path = Path(file)
        assert path.parent.name == "_compiled", name
        assert any(path.name.endswith(suffix) for suffix in EXTENSION_SUFFIXES), name
    assert compiled == "True"


def test_python_loads_the_py_files() -> None:
    *files, compiled = loaded_files("python")
    expected = [str(ROOT / package / f"{module}.py") for package, module in COMPILED]
    assert files == expected
    assert compiled == "False"


def test_the_py_files_load_without_cython() -> None:
    # a plain `pip install` without Cython: leadscore/_pure.py stands in for its decorators
    env = {**os.environ, "LEADSCORE_ENGINE": "python", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['cython'] = None\n" + LOADED, *MODULES],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    *files, compiled = done.stdout.splitlines()
    assert files == [str(ROOT / package / f"{module}.py") for package, module in COMPILED]
    assert compiled == "False"


PICKLED = (
    "import pickle, sys\n"
    "from flows.shards import DeadLetter, Tick\n"
    "from leadscore.events import Event, Reject\n"
    "items = [Tick(3, 1.5, float('inf')), DeadLetter('f:1', b'x' * 70_000, Reject('a', 'b')),\n"
    "         Event('c', 'page.hit', 2.0, 'e1', {'p': 1}, None, ('v',))]\n"
    "sys.stdout.buffer.write(pickle.dumps(items))"
)
UNPICKLED = (
    "import pickle, sys\n"
    "tick, dead, event = pickle.loads(sys.stdin.buffer.read())\n"
    "print(type(tick).__module__, tick.part, tick.mark, tick.high)\n"
    "print(dead.position, dead.size, len(dead.raw), dead.reject.reason)\n"
    "print(event)\n"
    "print(event.to_dict())"
)


@needs_build
@pytest.mark.parametrize(("sender", "receiver"), [("compiled", "python"), ("python", "compiled")])
def test_what_crosses_processes_unpickles_on_either_engine(sender: str, receiver: str) -> None:
    """Bytewax pickles events, ticks and dead letters between workers: either build reads
    what the other wrote (their classes stay Python classes with __reduce__)."""

    def env(engine: str) -> dict[str, str]:
        return {**os.environ, "LEADSCORE_ENGINE": engine, "PYTHONPATH": str(ROOT)}

    sent = subprocess.run(
        [sys.executable, "-c", PICKLED], capture_output=True, env=env(sender), check=True
    )
    got = subprocess.run(
        [sys.executable, "-c", UNPICKLED],
        input=sent.stdout,
        capture_output=True,
        env=env(receiver),
        check=True,
    )
    assert got.stdout.decode().splitlines() == [
        "flows.shards 3 1.5 inf",
        "f:1 70000 1024 a: b",
        "Event('c', 'page.hit', ts=2.0, id='e1')",
        "{'contact': 'c', 'action': 'page.hit', 'ts': 2.0, 'id': 'e1', 'props': {'p': 1}, "
        "'merge': ['v']}",
    ]


def test_without_a_build_run_says_so_once_and_scores(tmp_path: Path) -> None:
    """What `pip install` without a compiler gives: plain Python, one line saying so."""
    tree = tmp_path / "tree"
    for package in ("leadscore", "flows", "state"):
        shutil.copytree(
            ROOT / package, tree / package, ignore=shutil.ignore_patterns("_compiled", "*.c")
        )
    events = tmp_path / "events.jsonl"
    write_events(events, 50, 400, 5)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("LEADSCORE_ENGINE")
    done = subprocess.run(
        [*LEADSCORE, "run", "-r", str(RULES), "-e", str(events), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "compiled engine" in line]
    assert notices == [
        "leadscore: the compiled engine is not built, so scoring runs as plain Python "
        "(about 2x slower); build it with `make` (or `pip install .` with a C compiler and "
        "the Python headers, e.g. `apt-get install gcc python3-dev`), or set "
        "LEADSCORE_ENGINE=python to silence this"
    ]
    assert b'"scored":400' in (tmp_path / "out" / "summary.json").read_bytes()


WITHOUT_CYTHON = (
    "import pickle, sys\n"
    "sys.modules['cython'] = None  # what a plain `pip install` has: no Cython at all\n"
    "from leadscore.events import Event, parse_event\n"
    "from leadscore.typed import parse_events\n"
    'line = b\'{"contact": "c", "action": "page.hit", "ts": "2026-03-02T09:00:00Z"}\'\n'
    "event, = parse_events([line], -1.0)\n"
    "assert event == parse_event(line, -1.0) == pickle.loads(pickle.dumps(event))\n"
    "print(type(event).__module__, event)"
)


def test_the_interpreted_events_need_no_cython() -> None:
    """events.py's Cython class decorators do nothing, and import, without Cython."""
    env = {**os.environ, "LEADSCORE_ENGINE": "python", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_CYTHON], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "leadscore.events Event('c', 'page.hit', ts=1772442000.0, id=None)\n"


@needs_build
def test_compiled_events_are_a_c_type_made_without_init() -> None:
    """The parsers make events by Event.__new__, which both builds accept (object.__new__
    refuses a C type); compiled, ts is a C double, so an int given is kept as a float."""
    assert leadscore.accel.is_c_type(Event)
    with pytest.raises(TypeError):
        object.__new__(Event)
    event = Event.__new__(Event)
    event.contact, event.action, event.ts = "c", "page.hit", 5
    assert repr(event) == "Event('c', 'page.hit', ts=5.0, id=None)"
    assert Event("c", "page.hit", 2).to_dict() == {"contact": "c", "action": "page.hit", "ts": 2.0}


# --------------------------------------------------------------------------- same bytes


@needs_build
def test_run_outputs_are_byte_identical_on_generated_events(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_events(events, 2_000, 40_000, 19)
    outputs = assert_same_outputs(RULES, events, tmp_path)
    assert outputs["changes.jsonl"].count(b"\n") > 10_000
    assert outputs["triggers.jsonl"].count(b"\n") > 100
    assert outputs["dead_letter.jsonl"]  # the generator's malformed lines


def _retailrocket_events(tmp: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "retailrocket", ROOT / "examples" / "retailrocket.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with (DATA / "retailrocket" / "events_sample.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = tmp / "retailrocket.jsonl"
    out.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in module.convert(rows)))
    return out


@needs_build
@pytest.mark.skipif(
    not (DATA / "retailrocket" / "events_sample.csv").is_file(),
    reason=f"RetailRocket sample not present under {DATA} (see shared/data)",
)
def test_run_outputs_are_byte_identical_on_retailrocket(tmp_path: Path) -> None:
    events = _retailrocket_events(tmp_path)
    outputs = assert_same_outputs(ROOT / "examples" / "retailrocket.yaml", events, tmp_path)
    assert outputs["contacts.jsonl"].count(b"\n") == 5_000


@needs_build
@pytest.mark.skipif(
    not (DATA / "xeducation" / "leads_train.csv").is_file(),
    reason=f"X Education leads not present under {DATA} (see shared/data)",
)
def test_run_outputs_are_byte_identical_on_xeducation(tmp_path: Path) -> None:
    """Real CRM rows as identify events: fit rules, grades and the model's likelihood."""
    events = tmp_path / "leads.jsonl"
    table = DATA / "xeducation" / "leads_train.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [*LEADSCORE, "import", "--table", str(table), *IMPORT_OPTIONS, str(events)],
        check=True,
        capture_output=True,
        env=env,
        cwd=ROOT,
    )
    rules = ROOT / "examples" / "xeducation" / "rules.yaml"
    outputs = assert_same_outputs(rules, events, tmp_path)
    assert outputs["contacts.jsonl"].count(b"\n") == 6_449


# --------------------------------------------------------------------------- in process


def python_engine() -> ModuleType:
    """leadscore/engine.py loaded as plain Python beside the compiled module."""
    spec = importlib.util.spec_from_file_location(
        "leadscore_engine_py", ROOT / "leadscore" / "engine.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def effect_bits(effects: list[Any]) -> list[tuple[str, str]]:
    """Each effect's kind and its fields' reprs (a float's repr is its exact bits)."""
    return [
        (type(e).__name__, repr([getattr(e, f.name) for f in dataclasses.fields(e)]))
        for e in effects
    ]


def replay(engine: Any, events: list[Event]) -> Iterator[tuple[str, Any, list[Any]]]:
    states: dict[str, Any] = {}
    for event in events:
        state = states.get(event.contact)
        if state is None:
            state = states[event.contact] = engine.new_state()
        effects = engine.apply(state, event)
        yield event.contact, state, effects
        due = engine.next_due(state)
        if due is not None and due <= event.ts + 86_400.0:  # a timer firing within the day
            yield event.contact, state, engine.advance(state, due)


@needs_build
def test_engine_effects_states_and_views_are_identical_event_by_event() -> None:
    rules = load_rules(RULES)
    lines = list(generate_events(500, 20_000, 23))
    events = [e for e in parse_events(lines, -1.0) if type(e) is Event]
    py = python_engine()
    assert py.Engine is not leadscore.engine.Engine
    compiled = replay(leadscore.engine.Engine(rules), events)
    interpreted = replay(py.Engine(rules), events)
    n = 0
    for (contact, c_state, c_effects), (_, p_state, p_effects) in zip(
        compiled, interpreted, strict=True
    ):
        assert effect_bits(c_effects) == effect_bits(p_effects), contact
        assert encode(c_state) == encode(p_state), contact
        timer = (c_state.due, c_state.floor, c_state.idle)
        assert timer == (p_state.due, p_state.floor, p_state.idle), contact
        n += 1
    assert n >= len(events)
    c_engine, p_engine = leadscore.engine.Engine(rules), py.Engine(rules)
    c_states = {c: s for c, s, _ in replay(c_engine, events)}
    p_states = {c: s for c, s, _ in replay(p_engine, events)}
    at = max(e.ts for e in events) + 30 * 86_400.0
    for contact, state in c_states.items():
        assert orjson.dumps(c_engine.view(contact, state, at)) == orjson.dumps(
            p_engine.view(contact, p_states[contact], at)
        )


def redis_contents(url: str) -> dict[str, Any]:
    """Every key the flow wrote, by value: strings as bytes, streams as their entries' fields
    in order, sorted sets and hashes whole. What depends on when it ran is left out: input
    streams, the flow lease, the clocks (a drained run ends at the wall clock), the rules'
    publication time, and the entry ids (times) that dead letters' positions name."""
    import re

    import redis

    client = redis.Redis.from_url(url)
    out: dict[str, Any] = {}
    for raw in client.scan_iter(count=10_000):
        name = raw.decode()
        if name.endswith((":in", ":clock")) or "lease" in name:
            continue
        kind = client.type(raw).decode()
        if kind == "string":
            out[name] = client.get(raw)
        elif kind == "stream":
            out[name] = [
                {k: re.sub(rb"/\d+-\d+/", b"/ID/", v) for k, v in fields.items()}
                for _, fields in client.xrange(raw)
            ]
        elif kind == "zset":
            out[name] = client.zrange(raw, 0, -1, withscores=True)
        elif kind == "hash":
            out[name] = client.hgetall(raw)
            out[name].pop(b"rules_published", None)
        else:
            out[name] = (kind, sorted(client.smembers(raw)) if kind == "set" else None)
    client.close()
    return out


@needs_build
@pytest.mark.slow
def test_the_redis_flow_leaves_the_same_bytes_in_redis_on_either_engine(
    redis_url: str, tmp_path: Path
) -> None:
    """The Redis flow (its partition logic, the codec and the read model compile too): the
    same input drained by each build leaves the same states, read models, timers, clocks,
    checkpoints and record streams, byte for byte."""
    from test_redis_flow import FlowProcess, send, with_db

    lines = list(generate_events(400, 12_000, 29))  # with a few malformed lines
    got = {}
    for db, engine in ((1, "python"), (2, "compiled")):
        url = with_db(redis_url, db)
        send(url, lines, batch=50)
        flow = FlowProcess(
            tmp_path / f"{engine}.log",
            url,
            tail=False,
            LEADSCORE_ENGINE=engine,
            PYTHONPATH=str(ROOT),
            LEADSCORE_FLUSH_EVENTS="2000",
        )
        assert flow.finish() == 0, flow.output()[-3000:]
        got[engine] = redis_contents(url)
    python, compiled = got["python"], got["compiled"]
    assert sum(":s:" in name for name in python) >= 300  # states were written
    assert any(name.endswith(":triggers") and python[name] for name in python)
    assert python.keys() == compiled.keys()
    differ = sorted(name for name in python if python[name] != compiled[name])
    assert not differ, f"{len(differ)} keys differ, e.g. {differ[:5]}"
