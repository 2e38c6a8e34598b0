"""The Bytewax scoring flow on files: real runs in-process and in subprocesses, no mocks.

What must hold whatever runs it: the same contacts and triggers for 1 worker, 2 workers and
2 processes; every input line accounted for (scored, rejected with its reason, or dropped as
a duplicate); decay timers firing at their exact due time without waiting for the contact's
next event; plain, gzip and standard input alike.
"""

from __future__ import annotations

import gc
import gzip
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.testing import cluster_main, run_main

import flows.io
from flows.scoring import FlowConfig, ShardLogic, build_flow
from leadscore.events import MAX_EVENT_BYTES, format_ts
from leadscore.generate import generate_events

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
FLOW_CMD = [sys.executable, "-m", "bytewax.run", "flows.scoring:flow"]

RULES = """\
version: 1
groups:
  engagement: {decay: {half_life: 1d}, max: 300}
  fit: {}
actions:
  - {id: pricing, name: Visited pricing, on: page.hit, where: {url: "*/pricing*"},
     points: 30, repeat: {cooldown: 1h}}
  - {id: blog, on: page.hit, where: {url: "*/blog/*"}, points: 2, repeat: true}
  - {id: form, on: form.submit, points: 25, repeat: true}
  - {id: download, on: asset.download, points: 10, repeat: {max: 3, per: 1d}}
  - {id: click, on: email.click, points: 5, repeat: true}
  - {id: open, on: email.open, points: 1, repeat: true}
  - {id: unsubscribe, on: email.unsubscribe, points: -40}
  - {id: cart, on: cart.add, points: 40, repeat: true}
fit:
  - {id: senior, trait: title, matches: "(?i)\\\\b(vp|head|director|chief)\\\\b", points: 20}
  - {id: mid-size, trait: company.size, between: [50, 5000], points: 10}
triggers:
  - {id: mql, score: total, at_least: 60, rearm_below: 30,
     actions: [{add_segment: mql}, {notify: sales}]}
  - {id: cooled, score: engagement, below: 15, after: mql,
     actions: [{remove_segment: mql}, {add_tag: cooled}]}
stages:
  order: [awareness, decision, action]
  rules:
    - {on: page.hit, where: {url: "*/blog/*"}, stage: awareness}
    - {on: page.hit, where: {url: "*/pricing*"}, stage: decision}
    - {on: cart.add, stage: action}
grades:
  fit: {group: fit, bands: {A: 30, B: 10}, otherwise: C}
  engagement: {group: engagement, bands: {"1": 60, "2": 20}, otherwise: "3"}
scale: {score: total, max: 100}
"""

# A decaying score with one `below` trigger: the crossing time has a closed form.
TIMER_RULES = """\
version: 1
groups:
  engagement: {decay: {half_life: 1d}}
actions:
  - {id: pricing, on: page.hit, where: {url: "*/pricing*"}, points: 60, repeat: true}
triggers:
  - {id: hot, score: engagement, at_least: 50, actions: [{add_segment: hot}]}
  - {id: cooled, score: engagement, below: 20, after: hot, actions: [{remove_segment: hot}]}
"""


# --------------------------------------------------------------------------- helpers


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def write_lines(path: Path, lines: list[bytes | dict[str, Any]]) -> Path:
    raw = [line if isinstance(line, bytes) else orjson.dumps(line) for line in lines]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(b"".join(line + b"\n" for line in raw))
    return path


def run_flow(rules: Path, events: list[Path], out: Path, workers: int = 1) -> Path:
    """Run the flow in this process, as `leadscore run` does."""
    flow = build_flow(FlowConfig(rules=str(rules), events=[str(p) for p in events], out=str(out)))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


def flow_env(rules: Path, events: str, out: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(LEADSCORE_RULES=str(rules), LEADSCORE_EVENTS=events, LEADSCORE_OUT=out)
    return env


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_two_processes(rules: Path, events: Path, out: Path) -> Path:
    """2 processes x 1 worker, the documented `python -m bytewax.run -i/-a` way."""
    p1, p2 = free_ports(2)
    addresses = f"127.0.0.1:{p1};127.0.0.1:{p2}"
    env = flow_env(rules, str(events), str(out))
    procs = [
        subprocess.Popen(
            [*FLOW_CMD, "-w1", "-i", str(i), "-a", addresses],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 0, stderr.decode()
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def records_if_any(path: Path) -> list[dict[str, Any]]:
    """An output's records; the flow writes no file for an output that has none."""
    return read_jsonl(path) if path.exists() else []


def canon(records: list[dict[str, Any]]) -> list[bytes]:
    """Records as a sorted list: outputs from several shards interleave in any order."""
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)


def outputs(out: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        kind: canon(read_jsonl(out / f"{kind}.jsonl"))
        for kind in ("contacts", "triggers", "changes", "dead_letter")
    }
    result["summary"] = orjson.loads((out / "summary.json").read_bytes())
    return result


def nonblank_lines(path: Path) -> int:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def accounted(summary: dict[str, Any]) -> int:
    return summary["scored"] + summary["rejected"] + summary["duplicates"]


# --------------------------------------------------------------------------- workers


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """6,000 realistic events for 300 contacts (with some malformed lines) and RULES."""
    root = tmp_path_factory.mktemp("mixed")
    rules = write(root / "rules.yaml", RULES)
    events = root / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in generate_events(300, 6000, seed=3)))
    return rules, events


def test_results_do_not_depend_on_workers_or_processes(
    mixed: tuple[Path, Path], tmp_path: Path
) -> None:
    rules, events = mixed
    one = outputs(run_flow(rules, [events], tmp_path / "w1"))
    two = outputs(run_flow(rules, [events], tmp_path / "w2", workers=2))
    procs = outputs(run_two_processes(rules, events, tmp_path / "p2"))

    # The run is not trivial: every output kind has content.
    assert one["summary"]["contacts"] > 250
    assert one["summary"]["triggers"]["mql"] > 10
    assert one["summary"]["triggers"].get("cooled", 0) > 0
    assert len(one["dead_letter"]) == round(6000 * 0.001)
    for other in (two, procs):
        assert other["contacts"] == one["contacts"]
        assert other["triggers"] == one["triggers"]
        assert other["changes"] == one["changes"]
        assert other["dead_letter"] == one["dead_letter"]
        assert other["summary"] == one["summary"]
    assert accounted(one["summary"]) == nonblank_lines(events)


def test_shard_count_changes_nothing_but_the_layout(
    mixed: tuple[Path, Path], tmp_path: Path
) -> None:
    rules, events = mixed
    default = outputs(run_flow(rules, [events], tmp_path / "s64"))
    config = FlowConfig(rules=str(rules), events=[str(events)], out=str(tmp_path / "s3"), shards=3)
    run_main(build_flow(config))
    three = outputs(tmp_path / "s3")
    assert three["contacts"] == default["contacts"]
    assert three["triggers"] == default["triggers"]


# --------------------------------------------------------------------------- dead letters


def test_every_kind_of_bad_line_is_dead_lettered_and_nothing_is_lost(tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.yaml", RULES)
    good = {"contact": "c-1", "action": "page.hit", "ts": T0, "props": {"url": "/pricing"}}
    oversized = orjson.dumps({**good, "props": {"url": "/x", "pad": "x" * MAX_EVENT_BYTES}})
    lines: list[tuple[bytes | dict[str, Any], str | None]] = [
        ({**good, "id": "e1"}, None),
        (b"{not json", "invalid_json"),
        (b'{"contact": "c-1", "action": "page.hit", "ts": NaN}', "invalid_json"),
        (b'{"contact": "c-1", "action": "page.hit", "ts": 1e999}', "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"just a string"', "not_an_object"),
        (b"", None),  # blank lines carry nothing and are not counted
        ({"action": "page.hit", "ts": T0}, "missing_field"),
        ({"contact": "c-2", "ts": T0}, "missing_field"),
        ({"contact": 42, "action": "page.hit", "ts": T0}, "wrong_type"),
        ({"contact": "c-2", "action": "page.hit", "ts": T0, "props": [1]}, "wrong_type"),
        ({"contact": "c-2", "action": "page.hit", "ts": True}, "wrong_type"),
        ({"contact": "c-2", "action": "page.hit", "ts": "yesterday"}, "bad_ts"),
        ({"contact": "c-2", "action": "page.hit", "ts": -5}, "bad_ts"),
        (oversized, "too_large"),
        ({"contact": "c-2", "action": "page.hti", "ts": T0}, "unknown_action"),
        ({**good, "id": "e1"}, "duplicate"),  # a producer retry: dropped, counted
        ({**good, "contact": "c-2", "id": "e2", "ts": T0 + 60}, None),
        (b"   ", None),
    ]
    assert len(oversized) > MAX_EVENT_BYTES
    events = write_lines(tmp_path / "events.jsonl", [line for line, _ in lines])
    out = run_flow(rules, [events], tmp_path / "out")

    dead = {d["position"]: d for d in read_jsonl(out / "dead_letter.jsonl")}
    expected = {
        f"{events}:{number}": (line, code)
        for number, (line, code) in enumerate(lines, start=1)
        if code not in (None, "duplicate")
    }
    assert set(dead) == set(expected)
    for position, (line, code) in expected.items():
        raw = line if isinstance(line, bytes) else orjson.dumps(line)
        record = dead[position]
        assert record["code"] == code, record
        assert record["reason"].startswith(f"{code}: ") and len(record["reason"]) > len(code) + 3
        if code == "too_large":  # not copied whole: its first KiB and its size
            assert record["raw"] == raw[:1024].decode() and record["size"] == len(raw)
        else:
            assert record["raw"] == raw.decode() and "size" not in record

    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["rejected"] == len(expected)
    assert summary["rejected_by_reason"] == dict(Counter(code for _, code in expected.values()))
    assert summary["duplicates"] == 1
    assert summary["scored"] == 2
    assert accounted(summary) == nonblank_lines(events) == len(lines) - 2
    contacts = {c["contact"]: c for c in read_jsonl(out / "contacts.jsonl")}
    assert set(contacts) == {"c-1", "c-2"}
    # The duplicate added nothing; every contact is brought to the run's clock (c-2's T0 + 60).
    assert contacts["c-1"]["scores"]["engagement"] == round(30.0 * 2 ** (-60 / 86400), 4)
    assert contacts["c-1"]["updated_at"] == format_ts(T0)
    assert contacts["c-1"]["as_of"] == contacts["c-2"]["as_of"] == format_ts(T0 + 60)
    assert summary["as_of"] == format_ts(T0 + 60)


def test_line_ends_are_not_part_of_an_event_or_a_dead_letter(tmp_path: Path) -> None:
    # The source hands lines with their line ends (no copy per line); the parse step decides
    # on the line without them: CRLF files score, a line at the size limit is not too large
    # for its line end, dead letters and their sizes do not show it.
    rules = write(tmp_path / "rules.yaml", RULES)
    good = orjson.dumps({"contact": "c-1", "action": "page.hit", "ts": T0, "id": "e1"})
    head = b'{"contact":"c-2","action":"page.hit","ts":' + str(T0).encode() + b',"pad":"'
    at_limit = head + b"x" * (MAX_EVENT_BYTES - len(head) - 2) + b'"}'
    over = head + b"x" * (MAX_EVENT_BYTES - len(head) - 1) + b'"}'
    assert len(at_limit) == MAX_EVENT_BYTES and len(over) == MAX_EVENT_BYTES + 1
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        good + b"\r\n" + b"{not json\r\n" + at_limit + b"\r\n" + over + b"\n \r\n" + b"[1]"
    )
    out = run_flow(rules, [events], tmp_path / "out")
    dead = {d["position"]: d for d in read_jsonl(out / "dead_letter.jsonl")}
    assert {p: (d["code"], d["raw"]) for p, d in dead.items() if d["code"] != "too_large"} == {
        f"{events}:2": ("invalid_json", "{not json"),
        f"{events}:6": ("not_an_object", "[1]"),
    }
    assert dead[f"{events}:4"]["size"] == MAX_EVENT_BYTES + 1
    assert len(dead) == 3  # line 3, at the limit, is the event; line 5 is blank
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["scored"] == 2 and summary["rejected"] == 3


def test_a_rerun_into_the_same_directory_leaves_no_stale_output(tmp_path: Path) -> None:
    """Every output of a directory belongs to its latest run.

    Fails today: ResultsSink opens an output file only when records for it arrive, so after
    a clean rerun the first run's dead_letter.jsonl is still there next to a summary that
    says nothing was rejected (reported in /tmp/engine_bugs.md). `leadscore run` works
    around it by removing old outputs first; `python -m bytewax.run` does not.
    """
    rules = write(tmp_path / "rules.yaml", RULES)
    out = tmp_path / "out"
    first = [
        b"nope",
        {"contact": "a", "action": "cart.add", "ts": T0},
        {"contact": "a", "action": "form.submit", "ts": T0 + 60},  # 40 + 25: mql fires
    ]
    run_flow(rules, [write_lines(tmp_path / "first.jsonl", first)], out)
    assert records_if_any(out / "dead_letter.jsonl") and records_if_any(out / "triggers.jsonl")
    second = [{"contact": "b", "action": "email.open", "ts": T0}]
    run_flow(rules, [write_lines(tmp_path / "second.jsonl", second)], out)
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["rejected"] == 0 and summary["triggers"] == {}
    assert records_if_any(out / "dead_letter.jsonl") == []
    assert records_if_any(out / "triggers.jsonl") == []
    assert [c["contact"] for c in records_if_any(out / "contacts.jsonl")] == ["b"]


def test_a_bad_line_never_stops_the_run(tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.yaml", RULES)
    lines: list[bytes | dict[str, Any]] = []
    for i in range(3000):
        lines.append({"contact": f"c-{i % 50}", "action": "email.open", "ts": T0 + i, "id": str(i)})
        if i % 100 == 0:
            lines.append(b"\xff\xfe garbage \x00")
    events = write_lines(tmp_path / "events.jsonl", lines)
    summary = orjson.loads(
        (run_flow(rules, [events], tmp_path / "out") / "summary.json").read_bytes()
    )
    assert summary == {
        "scored": 3000,
        "duplicates": 0,
        "rejected": 30,
        "rejected_by_reason": {"invalid_json": 30},
        "contacts": 50,
        "triggers": {},
        "as_of": format_ts(T0 + 2999),
    }


# --------------------------------------------------------------------------- timers


def timer_events() -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Contact `a` scores once and goes quiet while `b` sends an event a minute for a week.

    `a` must cool down at its closed-form crossing time with no event of its own. `c` crosses
    shortly before the last event (only end-of-input can fire it); `d` would cross after the
    last event, so it must not. `b` crosses `hot` with the very last event.
    """
    hits = {"a": T0, "c": T0 + 5.3 * DAY, "d": T0 + 6.5 * DAY}
    events: list[dict[str, Any]] = [
        {
            "contact": who,
            "action": "page.hit",
            "ts": at,
            "id": f"{who}-1",
            "props": {"url": "/pricing"},
        }
        for who, at in hits.items()
    ]
    week = int(7 * DAY / MINUTE)
    for i in range(1, week):
        events.append(
            {"contact": "b", "action": "email.send", "ts": T0 + i * MINUTE, "id": f"b{i}"}
        )
    end = T0 + week * MINUTE
    events.append(
        {
            "contact": "b",
            "action": "page.hit",
            "ts": end,
            "id": "b-last",
            "props": {"url": "/pricing"},
        }
    )
    events.sort(key=lambda e: e["ts"])
    # 60 points halve daily: they reach 20 after log2(60 / 20) days.
    due = {who: at + DAY * math.log2(60 / 20) for who, at in hits.items()}
    assert due["a"] < due["c"] < end < due["d"]
    return events, {**due, "end": end}


@pytest.mark.parametrize("workers", [1, 2])
def test_decay_timer_fires_at_its_due_time_without_a_new_event(
    tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = write(tmp_path / "rules.yaml", TIMER_RULES)
    lines, due = timer_events()
    events = write_lines(tmp_path / "events.jsonl", lines)
    # Timers fire between input chunks: chunks of 2,048 lines put a's crossing (line ~2,300)
    # and b's last event (line ~10,000) in different ones.
    monkeypatch.setattr(flows.io, "LINES_PER_CHUNK", 2048)
    out = run_flow(rules, [events], tmp_path / "out", workers=workers)

    triggers = read_jsonl(out / "triggers.jsonl")
    cooled = {t["contact"]: t for t in triggers if t["trigger"] == "cooled"}
    assert set(cooled) == {"a", "c"}  # d's crossing lies after the last event time
    for who in ("a", "c"):
        assert cooled[who]["at"] == format_ts(due[who])
        assert cooled[who]["cause"] == "decay"
        assert cooled[who]["score"] == pytest.approx(20.0)
    hot = {t["contact"] for t in triggers if t["trigger"] == "hot"}
    assert hot == {"a", "b", "c", "d"}

    contacts = {c["contact"]: c for c in read_jsonl(out / "contacts.jsonl")}
    assert contacts["a"]["segments"] == [] and contacts["c"]["segments"] == []
    assert contacts["d"]["segments"] == ["hot"]
    assert contacts["a"]["updated_at"] == format_ts(due["a"])

    if workers == 1:
        # The timer fired while b's events streamed in, not at end of input: a's cooling is
        # written before b's last-event trigger, which comes thousands of lines later.
        order = [(t["contact"], t["trigger"]) for t in triggers]
        assert order.index(("a", "cooled")) < order.index(("b", "hot"))


# --------------------------------------------------------------------------- inputs


def test_gzip_input_scores_like_plain_text(mixed: tuple[Path, Path], tmp_path: Path) -> None:
    rules, events = mixed
    packed = tmp_path / "events.jsonl.gz"
    packed.write_bytes(gzip.compress(events.read_bytes()))
    plain = outputs(run_flow(rules, [events], tmp_path / "plain"))
    gz = outputs(run_flow(rules, [packed], tmp_path / "gz"))
    assert gz["contacts"] == plain["contacts"]
    assert gz["triggers"] == plain["triggers"]
    assert gz["summary"] == plain["summary"]
    positions = [orjson.loads(d)["position"] for d in gz["dead_letter"]]
    assert positions and all(p.startswith(f"{packed}:") for p in positions)


def test_several_files_are_read_as_one_stream(tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.yaml", RULES)
    first = write_lines(
        tmp_path / "a.jsonl",
        [{"contact": "x", "action": "form.submit", "ts": T0, "id": "1"}, b"oops"],
    )
    second = write_lines(
        tmp_path / "b.jsonl.gz",
        [{"contact": "y", "action": "cart.add", "ts": T0 + 5, "id": "2"}, b"[]"],
    )
    out = run_flow(rules, [first, second], tmp_path / "out")
    contacts = {c["contact"]: c["total"] for c in read_jsonl(out / "contacts.jsonl")}
    # Both at the run's clock, T0 + 5: x's engagement (half-life 1d) has decayed a little.
    assert contacts == {"x": round(25.0 * 2 ** (-5 / 86400), 4), "y": 40.0}
    positions = {d["position"] for d in read_jsonl(out / "dead_letter.jsonl")}
    assert positions == {f"{first}:2", f"{second}:2"}


def bytewax_stdio(rules: Path, data: bytes) -> subprocess.CompletedProcess[bytes]:
    """`python -m bytewax.run flows.scoring:flow` reading stdin and writing stdout."""
    return subprocess.run(
        FLOW_CMD,
        cwd=ROOT,
        env=flow_env(rules, "-", "-"),
        input=data,
        capture_output=True,
        timeout=60,
        check=True,
    )


OUTPUT_NAMES = frozenset({"changes", "contacts", "dead_letter", "summary", "triggers"})


def strict_loads(line: bytes) -> dict[str, Any]:
    """json.loads that refuses duplicate keys, which other parsers silently collapse."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        assert len(keys) == len(set(keys)), f"duplicate keys in {line!r}"
        return dict(items)

    return json.loads(line, object_pairs_hook=pairs)


def split_label(record: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The output names a stdout line is labelled with, and the record without the label."""
    label_keys = [k for k, v in record.items() if isinstance(v, str) and v in OUTPUT_NAMES]
    return [record[k] for k in label_keys], {k: v for k, v in record.items() if k not in label_keys}


def test_stdin_input_scores_like_a_file(mixed: tuple[Path, Path], tmp_path: Path) -> None:
    rules, events = mixed
    done = bytewax_stdio(rules, events.read_bytes())
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for line in done.stdout.splitlines():
        labels, record = split_label(orjson.loads(line))
        if labels:
            by_kind.setdefault(labels[0], []).append(record)
    summary = by_kind["summary"][0]
    from_file = outputs(run_flow(rules, [events], tmp_path / "file"))
    assert summary == from_file["summary"]
    assert canon(by_kind["contacts"]) == from_file["contacts"]
    assert canon(by_kind["triggers"]) == from_file["triggers"]
    assert all(d["position"].startswith("-:") for d in by_kind["dead_letter"])
    assert len(by_kind["dead_letter"]) == summary["rejected"]


def test_stdin_to_stdout_labels_every_line_once(tmp_path: Path) -> None:
    """On stdout every line says which output it belongs to, once, without clobbering a field.

    Fails today: change records already have a `kind` (points, stage, ...) and the stdout
    sink prepends `"kind":"changes"`, so those lines hold a duplicate key and parsers keep
    only the last one (reported in /tmp/engine_bugs.md).
    """
    rules = write(tmp_path / "rules.yaml", RULES)
    event = {"contact": "c-1", "action": "page.hit", "ts": T0, "props": {"url": "/pricing"}}
    done = bytewax_stdio(rules, orjson.dumps(event) + b"\n")
    labels: Counter[str] = Counter()
    changes: list[dict[str, Any]] = []
    for line in done.stdout.splitlines():
        names, record = split_label(strict_loads(line))
        assert len(names) == 1, line
        labels[names[0]] += 1
        if names[0] == "changes":
            changes.append(record)
    assert labels == {"changes": 2, "contacts": 1, "summary": 1}
    assert sorted(c["kind"] for c in changes) == ["points", "stage"]


# --- the parser's per-shard grouping and the record format, in-process ----------------------


def test_parser_sends_one_list_per_shard_in_line_order() -> None:
    from flows.scoring import DeadLetter, Parser, Tick, shard_of
    from leadscore.events import Event
    from leadscore.rules import load_rules_text

    rules = load_rules_text(RULES)
    lines = [
        orjson.dumps({"contact": f"c{i % 5}", "action": "page.hit", "ts": T0 + i, "id": f"e{i}"})
        for i in range(40)
    ]
    lines[7] = b"{not json"
    out = Parser(rules, 8)((0, "in.jsonl", 1, lines))
    keys = [key for key, _ in out]
    assert len(keys) == len(set(keys)) == 8  # one item per shard, and every shard ticks
    for key, items in out:
        *body, tick = items
        assert type(tick) is Tick and tick.mark == tick.high == T0 + 39
        events = [x for x in body if type(x) is Event]
        assert all(shard_of(e.contact, 8) == int(key) for e in events)
        assert [e.ts for e in events] == sorted(e.ts for e in events)  # line order kept
        for x in body:
            if type(x) is DeadLetter:
                assert x.position == "in.jsonl:8" and x.reject.code == "invalid_json"
    seen = sorted(x.id for _, items in out for x in items if type(x) is Event)
    assert seen == sorted(f"e{i}" for i in range(40) if i != 7)
    done = Parser(rules, 8)((0, "in.jsonl", 41, None))
    assert [type(v) for _, v in done] == [Tick] * 8


def test_shard_logic_scores_lists_like_single_items() -> None:
    from flows.scoring import Parser
    from leadscore.engine import Engine
    from leadscore.rules import load_rules_text

    rules = load_rules_text(RULES)
    lines = [
        orjson.dumps(
            {"contact": "a", "action": "page.hit", "ts": T0 + i, "props": {"url": "/pricing"}}
        )
        for i in range(3)
    ] + [b"[]"]
    chunk = Parser(rules, 1)((0, "x", 1, lines))
    grouped = ShardLogic(Engine(rules), 1, live=False)
    single = ShardLogic(Engine(rules), 1, live=False)
    assert (
        grouped.on_batch([items for _, items in chunk])[0]
        == single.on_batch([x for _, items in chunk for x in items])[0]
    )
    assert grouped.summary() == single.summary()
    assert grouped.scored == 3 and dict(grouped.rejected) == {"not_an_object": 1}


def test_a_timer_set_at_a_bound_waits_for_the_exact_crossing() -> None:
    """Points that only raise a score leave the timer at the last crossing's floor (nothing is
    solved per batch). Waking there must not advance the contact, only re-arm at the exact
    time, where the crossing fires as if the timer had been exact all along."""
    from leadscore.engine import Engine
    from leadscore.events import Event
    from leadscore.rules import load_rules_text
    from state.codec import decode, encode

    engine = Engine(load_rules_text(RULES))
    logic = ShardLogic(engine, 1, live=False)
    logic.on_batch([Event("a", "cart.add", T0), Event("a", "form.submit", T0 + MINUTE)])  # mql
    logic.on_batch([Event("a", "email.click", T0 + HOUR)])  # +5 only delays every crossing
    logic.drain()
    state = logic.contacts["a"]
    reference = decode(encode(state))  # no cached floor: its timer would be exact
    exact = engine.next_due(reference)
    bound = logic.due_of["a"]
    assert exact is not None and bound < exact

    assert logic.fire_due(bound) == []
    assert logic.drain() == [] and state.last_ts == T0 + HOUR  # not advanced to the bound
    assert logic.due_of["a"] == exact

    logic.fire_due(T0 + 10 * DAY)
    fired = [
        orjson.loads(line)
        for kind, chunk in logic.drain()
        if kind == "triggers"
        for line in chunk.splitlines()
    ]
    expected = [e for e in engine.advance(reference, T0 + 10 * DAY) if hasattr(e, "trigger")]
    assert [(f["trigger"], f["at"]) for f in fired] == [
        (e.trigger, format_ts(e.at)) for e in expected
    ]
    assert [f["trigger"] for f in fired] == ["cooled"]


def test_a_bound_the_clock_has_passed_is_solved_at_once() -> None:
    """Live, event times trail the wall clock: a bound already behind the clock would wake the
    contact at once only to re-arm it, so the flow sets the exact time instead."""
    from flows.scoring import Tick
    from leadscore.engine import Engine
    from leadscore.events import Event
    from leadscore.rules import load_rules_text
    from state.codec import decode, encode

    engine = Engine(load_rules_text(RULES))
    logic = ShardLogic(engine, 1, live=False)
    logic.on_batch([Event("a", "cart.add", T0), Event("a", "form.submit", T0 + MINUTE)])  # mql
    first = logic.due_of["a"]  # exact: the crossing was solved after the firing
    # The clock passes that crossing while a late +5 arrives: the old floor is behind it.
    logic.on_batch([Tick(0, first + 1.0, first + 1.0), Event("a", "email.click", T0 + HOUR)])
    exact = engine.next_due(decode(encode(logic.contacts["a"])))
    assert exact is not None and exact > first + 1.0
    assert logic.due_of["a"] == exact


def test_output_records_keep_their_exact_bytes() -> None:
    # explain.effect_record is THE output format: key order and renderings must not drift.
    from flows.scoring import effect_record
    from leadscore.engine import (
        PointChange,
        SegmentChanged,
        StageChanged,
        TagChanged,
        TriggerFired,
    )
    from leadscore.explain import effect_record as record_of

    at = 1793491736.0175
    expect = [
        (
            PointChange("r", "g", 5.0, 2.5, 12.345678, "e1", at, True),
            "changes",
            b'{"contact":"c","kind":"points","rule":"r","group":"g","delta":5.0,"applied":2.5,'
            b'"score_after":12.3457,"capped":true,"event_id":"e1","at":"2026-11-01T00:08:56.017Z"}',
        ),
        (
            TriggerFired("mql", 61.5, at, [{"notify": "sales"}], "why"),
            "triggers",
            b'{"contact":"c","trigger":"mql","score":61.5,"at":"2026-11-01T00:08:56.017Z",'
            b'"actions":[{"notify":"sales"}],"cause":"why"}',
        ),
        (
            StageChanged("decision", None, at, "page.hit"),
            "changes",
            b'{"contact":"c","kind":"stage","stage":"decision","previous":null,'
            b'"cause":"page.hit","at":"2026-11-01T00:08:56.017Z"}',
        ),
        (
            SegmentChanged("mql", False, at, "t"),
            "changes",
            b'{"contact":"c","kind":"segment","segment":"mql","added":false,"cause":"t",'
            b'"at":"2026-11-01T00:08:56.017Z"}',
        ),
        (
            TagChanged("hot", True, at, "t"),
            "changes",
            b'{"contact":"c","kind":"tag","tag":"hot","added":true,"cause":"t",'
            b'"at":"2026-11-01T00:08:56.017Z"}',
        ),
    ]
    for effect, kind, line in expect:
        assert effect_record("c", effect) == (kind, line)
    point = expect[0][0]
    assert record_of("c", point, "page.hit")["action"] == "page.hit"  # type: ignore[index]
    assert list(record_of("c", point, "page.hit"))[-1] == "action"  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_leaves_the_garbage_collector_as_it_found_it(
    mixed: tuple[Path, Path], tmp_path: Path, workers: int
) -> None:
    """A file flow freezes its heap and turns automatic full collections off while it runs
    (flows.heap); a process that goes on after the run gets both back."""
    rules, events = mixed
    thresholds = gc.get_threshold()
    out = run_flow(rules, [events], tmp_path / "out", workers=workers)
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0
    assert outputs(out)["summary"]["scored"] > 0


def test_dead_letters_keep_input_order_within_a_file(tmp_path: Path) -> None:
    """Two files, mostly bad lines of every kind, two workers: each file's dead letters come
    out in line order (a person reads dead_letter.jsonl next to the input)."""
    rules = write(tmp_path / "rules.yaml", RULES)
    kinds = [
        b"{not json",
        b"[1, 2]",
        b'{"contact": "c-%d", "action": "page.hti", "ts": 1780000000}',
        b'{"contact": "c-%d", "action": "page.hit", "ts": "yesterday"}',
        b'{"action": "page.hit"}',
    ]
    files = []
    for f in range(2):
        lines: list[bytes | dict[str, Any]] = []
        for i in range(3000):
            if i % 10 == 0:
                lines.append({"contact": f"c-{i % 97}", "action": "page.hit", "ts": T0 + i})
            else:
                kind = kinds[(i * 7 + f) % len(kinds)]
                lines.append(kind.replace(b"%d", str(i).encode()))
        files.append(write_lines(tmp_path / f"events{f}.jsonl", lines))
    out = run_flow(rules, files, tmp_path / "out", workers=2)
    dead = read_jsonl(out / "dead_letter.jsonl")
    for path in files:
        numbers = [
            int(d["position"].rsplit(":", 1)[1])
            for d in dead
            if d["position"].rsplit(":", 1)[0] == str(path)
        ]
        assert len(numbers) == 2700
        assert numbers == sorted(numbers)


def test_an_oversized_line_is_dead_lettered_with_its_first_kib_and_its_size(
    tmp_path: Path,
) -> None:
    rules = write(tmp_path / "rules.yaml", RULES)
    huge = b'{"contact": "c-1", "action": "page.hit", "props": {"pad": "' + "é".encode() * 300_000
    huge += b'"}}'
    events = write_lines(tmp_path / "events.jsonl", [huge, {"contact": "c-1", "action": "x"}])
    out = run_flow(rules, [events], tmp_path / "out", workers=2)
    dead = read_jsonl(out / "dead_letter.jsonl")
    assert [d["position"] for d in dead] == [f"{events}:1", f"{events}:2"]
    assert dead[0]["code"] == "too_large" and dead[0]["size"] == len(huge)
    assert dead[0]["raw"] == huge[:1024].decode("utf-8", "replace")
    assert (out / "dead_letter.jsonl").stat().st_size < 2048 + 512
