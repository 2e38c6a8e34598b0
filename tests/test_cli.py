"""The `leadscore` command end to end, in a subprocess, as a person or a script runs it.

Exit codes and stderr matter as much as stdout here: a bad rules file or a missing input must
end with a short message naming what to fix, never a traceback.
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml
from terminal import run_with_terminal_stderr

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_RULES = ROOT / "examples" / "rules.yaml"
_SCRIPT = Path(sys.executable).parent / "leadscore"
LEADSCORE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "leadscore.cli"]
T0 = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
HOUR = 3600.0

RULES = """\
version: 1
groups:
  engagement: {decay: {half_life: 7d}}
  fit: {}
actions:
  - id: pricing
    name: Visited pricing
    description: Someone comparing plans is close to buying
    on: page.hit
    where: {url: "*/pricing*"}
    points: 20
    repeat: {cooldown: 1h}
  - {id: form, name: Submitted a form, on: form.submit, points: 30, repeat: true}
  - {id: open, on: email.open, points: 1, repeat: true}
fit:
  - {id: senior, trait: title, matches: "(?i)\\\\bvp\\\\b", points: 15}
triggers:
  - {id: hot, score: total, at_least: 50, actions: [{add_segment: hot}, {notify: sales}]}
  - {id: cooled, score: engagement, below: 10, after: hot, actions: [{remove_segment: hot}]}
stages:
  order: [awareness, decision]
  rules:
    - {on: page.hit, where: {url: "*/pricing*"}, stage: decision}
grades:
  fit: {group: fit, bands: {A: 15}, otherwise: B}
  engagement: {group: engagement, bands: {"1": 50}, otherwise: "2"}
scale: {score: total, max: 100}
"""


def ev(contact: str, action: str, at: float, id: str, **props: Any) -> dict[str, Any]:
    return {"contact": contact, "action": action, "ts": at, "id": id, "props": props}


# alice: two pricing visits (the second inside the cooldown), a form and a VP title -> hot.
# bob: a pricing visit and an open. carol: one open. Plus a bad line and a producer retry.
EVENTS: list[dict[str, Any] | bytes] = [
    ev("alice", "page.hit", T0, "a1", url="https://acme.com/pricing"),
    ev("bob", "page.hit", T0 + 60, "b1", url="https://acme.com/pricing"),
    ev("alice", "page.hit", T0 + 120, "a2", url="https://acme.com/pricing"),
    b'{"contact": "dave", "action": ',
    {**ev("alice", "identify", T0 + 180, "a3"), "traits": {"title": "VP Sales"}},
    ev("alice", "form.submit", T0 + HOUR, "a4", form="demo"),
    ev("alice", "form.submit", T0 + HOUR, "a4", form="demo"),
    ev("bob", "email.open", T0 + 2 * HOUR, "b2"),
    ev("carol", "email.open", T0 + 3 * HOUR, "c1"),
]


def cli(
    *args: str, input: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `leadscore ARGS`; a wide terminal so report rows are not wrapped."""
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [*LEADSCORE, *args],
        input=input,
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def write_lines(path: Path, lines: list[dict[str, Any] | bytes]) -> Path:
    raw = b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def yaml_1_2(text: str) -> Any:
    """YAML as the rules loader reads it: PyYAML's 1.1 rules turn the key `on` into True."""

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {("on" if k is True else k): fix(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    return fix(yaml.safe_load(text))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def report_value(text: str, label: str) -> str:
    """The rest of the report line that starts with ``label``."""
    match = re.search(rf"^{re.escape(label)}\s+(.*)$", text, re.M)
    assert match, f"no {label!r} line in:\n{text}"
    return match.group(1).strip()


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


@pytest.fixture
def events(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "events.jsonl", EVENTS)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ((), ("run", "check", "explain", "generate", "schema")),
        (("run",), ("--rules", "--events", "--out", "--workers", "--shards", "dead_letter.jsonl")),
        (("check",), ("RULES", "problem")),
        (("explain",), ("--rules", "--events", "--contact", "--json", "decay")),
        (("generate",), ("--contacts", "--events", "--seed", "--out", ".gz")),
        (("schema",), ("--out", "JSON Schema")),
    ],
)
def test_every_command_has_useful_help(command: tuple[str, ...], expected: tuple[str, ...]) -> None:
    done = cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    for word in expected:
        assert word in done.stdout, f"{word!r} missing from `leadscore {' '.join(command)} --help`"


def test_version() -> None:
    done = cli("--version")
    assert done.returncode == 0
    assert re.fullmatch(r"leadscore \d+\.\d+\.\d+\S*\n", done.stdout)


# --------------------------------------------------------------------------- run


def test_run_writes_every_output_and_reports_what_happened(
    rules: Path, events: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = cli("run", "--rules", str(rules), "--events", str(events), "--out", str(out))
    assert done.returncode == 0, done.stderr
    for name in ("contacts.jsonl", "triggers.jsonl", "changes.jsonl", "dead_letter.jsonl"):
        assert (out / name).is_file()
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["scored"] == 7 and summary["duplicates"] == 1 and summary["rejected"] == 1

    report = done.stdout
    assert re.search(r"^9 events read in [\d.]+ s \([\d,]+ events/s\)$", report, re.M)
    assert report_value(report, "scored") == "7"
    assert report_value(report, "rejected") == "1  invalid_json 1"
    assert report_value(report, "duplicates") == "1"
    assert report_value(report, "contacts") == "3"
    assert report_value(report, "triggers fired") == "1  hot 1"
    # The top leads, highest total first, all as of the run's clock (carol's open, T0 + 3h).
    # alice: 20 (decayed for 3 h, 7d half-life) + 30 (for 2 h) + 15 fit = 64.51; engagement
    # 49.51 is under band 1 (50), so grade A2.
    rows = re.findall(r"^\W+(alice|bob|carol)\W+([\d.,]+)\W+([\d.,]+)\W+(\w+)", report, re.M)
    assert [r[0] for r in rows] == ["alice", "bob", "carol"]
    assert rows[0][1:] == ("64.51", "64.5", "A2")
    assert "hot" in next(line for line in report.splitlines() if "alice" in line)

    dead = read_jsonl(out / "dead_letter.jsonl")
    assert [(d["position"], d["code"]) for d in dead] == [(f"{events}:4", "invalid_json")]


def test_run_writes_empty_outputs_as_its_help_and_the_readme_say(
    rules: Path, tmp_path: Path
) -> None:
    """No dead letter and no trigger: their files are still written, empty, and `run --help`
    and the README both say so (a rerun leaves nothing stale)."""
    events = write_lines(tmp_path / "one.jsonl", [ev("carol", "email.open", T0, "c1")])
    out = tmp_path / "out"
    assert cli("run", "-r", str(rules), "-e", str(events), "-o", str(out)).returncode == 0
    assert (out / "dead_letter.jsonl").read_bytes() == b""
    assert (out / "triggers.jsonl").read_bytes() == b""
    help_text = " ".join(cli("run", "--help").stdout.replace("│", " ").split())
    assert "empty ones included" in help_text and "is not written" not in help_text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "Every run writes all five files, empty ones included" in readme


def test_run_takes_several_files_gzip_and_stdin(rules: Path, tmp_path: Path) -> None:
    first = write_lines(tmp_path / "a.jsonl", EVENTS[:3])
    second = write_lines(tmp_path / "b.jsonl.gz", EVENTS[3:6])
    rest = b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in EVENTS[6:])
    out = tmp_path / "out"
    args = ["run", "-r", str(rules), "--events", str(first), str(second), "-", "-o", str(out)]
    done = cli(*args, input=rest)
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["scored"] + summary["rejected"] + summary["duplicates"] == len(EVENTS)
    assert {c["contact"] for c in read_jsonl(out / "contacts.jsonl")} == {"alice", "bob", "carol"}


def test_run_to_stdout_keeps_the_report_on_stderr(rules: Path, events: Path) -> None:
    done = cli(
        "run", "--rules", str(rules), "--events", "-", "--out", "-", input=events.read_bytes()
    )
    assert done.returncode == 0, done.stderr
    records = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert len(records) > 10  # changes, triggers, contacts, a dead letter, the summary
    summaries = [r for r in records if "scored" in r]
    assert len(summaries) == 1 and summaries[0]["scored"] == 7
    assert "9 events read" in done.stderr
    assert report_value(done.stderr, "triggers fired") == "1  hot 1"
    assert "alice" in done.stderr  # the top leads, read from stdout on the way out


def test_two_workers_or_two_processes_give_the_same_results(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    done = cli("generate", "-n", "300", "-m", "4000", "-s", "3", "-o", str(events))
    assert done.returncode == 0, done.stderr
    runs = {"1": ["-w", "1"], "2w": ["-w", "2"], "2p": ["--processes", "2"]}
    for name, how in runs.items():
        done = cli(
            "run", "-r", str(EXAMPLE_RULES), "-e", str(events), "-o", str(tmp_path / name), *how
        )
        assert done.returncode == 0, done.stderr
        assert re.search(r"^4,000 events read", done.stdout, re.M), done.stdout
    outputs = {
        name: {
            kind: sorted((tmp_path / name / f"{kind}.jsonl").read_bytes().splitlines())
            for kind in ("contacts", "triggers", "changes", "dead_letter")
        }
        for name in runs
    }
    assert len(outputs["1"]["contacts"]) > 200 and outputs["1"]["triggers"]
    assert outputs["2w"] == outputs["1"]
    assert outputs["2p"] == outputs["1"]


def test_processes_need_files_in_and_out(rules: Path, events: Path, tmp_path: Path) -> None:
    done = cli("run", "-r", str(rules), "-e", "-", "-o", str(tmp_path / "o"), "-p", "2", input=b"")
    assert done.returncode == 1
    assert "--processes needs events files and an --out directory" in done.stderr
    # (--source -p N is one supervised cluster now: tests/test_flow_lease.py)


def test_a_failing_process_fails_the_run_with_its_reason(rules: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip at all")
    done = cli("run", "-r", str(rules), "-e", str(bad), "-o", str(tmp_path / "o"), "-p", "2")
    assert done.returncode == 1
    assert "cannot read" in done.stderr and "gzip" in done.stderr, done.stderr
    # a file that goes bad past its first bytes: a peer fails mid-run, the run fails with it
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"contact": "a", "action": "email.open"}\n' * 5000)[:-40])
    done = cli("run", "-r", str(rules), "-e", str(broken), "-o", str(tmp_path / "o"), "-p", "2")
    assert done.returncode == 1
    assert re.search(r"^leadscore: process \d of 2 failed: .+", done.stderr, re.M), done.stderr
    done = cli("run", "-r", str(rules), "-e", str(broken), "-o", str(tmp_path / "o"))
    assert done.returncode == 1
    # one line, no panic or traceback from the worker that read it
    assert done.stderr.strip().splitlines() == [
        "leadscore: the run failed: Compressed file ended before the end-of-stream marker was "
        "reached"
    ], done.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_output_that_cannot_be_written_fails_the_run_in_one_line(
    rules: Path, events: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "changes.jsonl").symlink_to("/dev/full")  # a full disk under one output
    done = cli("run", "-r", str(rules), "-e", str(events), "-o", str(out))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "leadscore: the run failed: [Errno 28] No space left on device"
    ], done.stderr


def test_run_shows_a_progress_bar_on_a_terminal(rules: Path, events: Path, tmp_path: Path) -> None:
    done, seen = run_with_terminal_stderr(
        ["run", "-r", str(rules), "-e", str(events), "-o", str(tmp_path / "o")], timeout=120
    )
    assert done.returncode == 0
    assert b"scoring" in seen
    assert b"scoring" not in done.stdout  # the bar lives on stderr only


def test_an_empty_input_is_a_run_with_nothing_in_it(rules: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    done = cli("run", "-r", str(rules), "-e", str(empty), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert re.search(r"^0 events read", done.stdout, re.M)
    assert report_value(done.stdout, "contacts") == "0"


def test_a_new_run_replaces_every_output_of_the_previous_one(
    rules: Path, events: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli("run", "-r", str(rules), "-e", str(events), "-o", str(out)).returncode == 0
    assert read_jsonl(out / "dead_letter.jsonl") and read_jsonl(out / "triggers.jsonl")
    clean = write_lines(tmp_path / "clean.jsonl", [ev("erin", "email.open", T0, "e1")])
    done = cli("run", "-r", str(rules), "-e", str(clean), "-o", str(out))
    assert done.returncode == 0, done.stderr
    outputs = {p.name for p in out.iterdir()}
    # Every output is rewritten, empty when this run has no records for it: nothing stale.
    assert outputs == {
        "contacts.jsonl",
        "changes.jsonl",
        "summary.json",
        "dead_letter.jsonl",
        "triggers.jsonl",
    }
    assert read_jsonl(out / "dead_letter.jsonl") == [] and read_jsonl(out / "triggers.jsonl") == []
    assert [c["contact"] for c in read_jsonl(out / "contacts.jsonl")] == ["erin"]
    assert "results in" in done.stdout


def test_out_must_not_be_a_file(rules: Path, events: Path, tmp_path: Path) -> None:
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    done = cli("run", "-r", str(rules), "-e", str(events), "-o", str(target))
    assert done.returncode == 1
    assert done.stderr.startswith(f"leadscore: --out {target} is a file")
    assert target.read_text() == "keep me"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_run_with_one_line(rules: Path, tmp_path: Path) -> None:
    line = orjson.dumps(ev("x", "email.open", T0, "")) + b"\n"
    events = tmp_path / "many.jsonl"
    events.write_bytes(line * 2_000_000)  # far more than the run gets through before the signal
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*LEADSCORE, "run", "-r", str(rules), "-e", str(events), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Ctrl-C reaches a terminal's foreground job; a suite started in the background
        # (`pytest &`, nohup) ignores SIGINT and its children would inherit that
        preexec_fn=_default_sigint,
    )
    try:
        while not (out / "changes.jsonl").exists():  # opened when the flow is built
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert stderr.decode().strip() == f"leadscore: interrupted; the outputs in {out} are incomplete"


def test_a_bad_rules_file_names_file_rule_and_field(events: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("repeat: {cooldown: 1h}", "repeat: sometimes"))
    out = tmp_path / "out"
    done = cli("run", "--rules", str(bad), "--events", str(events), "--out", str(out))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(bad) in lines[0]
    assert "actions[0] (pricing)" in lines[0]
    assert "field 'repeat'" in lines[0]
    assert "sometimes" in lines[0]
    assert not out.exists()  # nothing was scored


def test_a_missing_events_file_says_which(rules: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    done = cli("run", "--rules", str(rules), "--events", str(missing), "--out", str(tmp_path / "o"))
    assert done.returncode != 0
    assert done.stderr.strip() == f"leadscore: events file not found: {missing}"


def test_a_missing_rules_file_says_which(events: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    done = cli("run", "--rules", str(missing), "--events", str(events))
    assert done.returncode != 0
    assert done.stderr.strip() == f"{missing}: file not found"


def test_stdin_can_be_read_only_once(rules: Path) -> None:
    done = cli("run", "--rules", str(rules), "--events", "-", "-", input=b"")
    assert done.returncode != 0
    assert "only once" in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- check


def test_check_summarises_a_valid_file(rules: Path) -> None:
    done = cli("check", str(rules))
    assert done.returncode == 0, done.stderr
    assert "3 point actions" in done.stdout and "2 triggers" in done.stdout
    pricing = next(line for line in done.stdout.splitlines() if "pricing" in line)
    assert "Visited pricing" in pricing and "+20" in pricing and "cooldown 1h" in pricing
    hot = next(line for line in done.stdout.splitlines() if " hot " in line)
    assert "total >= 50" in hot and "add_segment hot" in hot
    cooled = next(line for line in done.stdout.splitlines() if "cooled" in line)
    assert "engagement < 10, after hot" in cooled


def test_check_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        RULES.replace("points: 20", "points: lots").replace("at_least: 50", "at_least: high")
    )
    done = cli("check", str(bad))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{bad}: actions[0] (pricing): field 'points': ")
    assert lines[1].startswith(f"{bad}: triggers[0] (hot): ")
    assert lines[2] == f"{bad}: 2 problems; fix them and check again"
    assert "nothing was scored" not in done.stderr


def test_check_warns_of_an_action_outside_the_vocabulary(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        RULES.replace("on: email.open", "on: emial.open").replace("{notify: sales}", "{add_tag: x}")
    )
    done = cli("check", str(typo))
    assert done.returncode == 0, done.stderr
    assert "3 point actions" in done.stdout
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"{typo}: warning: actions[2] (open): field 'on': 'emial.open'")
    assert "did you mean 'email.open'?" in lines[0]
    assert lines[-1] == f"{typo}: valid, 1 warning"
    strict = cli("check", "--strict", str(typo))
    assert strict.returncode == 1
    assert strict.stderr == done.stderr
    assert cli("check", "--strict", str(EXAMPLE_RULES)).returncode == 0


# --------------------------------------------------------------------------- explain


def test_explain_shows_each_point_with_its_rule(rules: Path, events: Path) -> None:
    done = cli("explain", "--rules", str(rules), "--events", str(events), "--contact", "alice")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "alice: 5 events, duplicates dropped: 1" in text
    assert "Visited pricing" in text and "Someone comparing plans" in text
    points = text[text.index("\nPoints") :]  # the Events table lists a2 with its reason
    assert "a1" in points and "a4" in points and "a2" not in points  # a2: inside the cooldown
    assert "a2" in text and "pricing: cooldown until" in text
    assert "form.submit" in text and "identify" in text
    hot = next(line for line in text.splitlines() if re.search(r"\bhot\b", line))
    assert "2026-06-01T01:00:00.000Z" in hot  # the form pushed alice over 50
    assert "segment +hot" in text and "stage (none) -> decision" in text
    # As of the run's clock (carol's open, T0 + 3h): two to three hours of decay.
    assert re.search(r"^ total\s+64\.51\s+65\s+-0\.49", text, re.M)
    assert "grade: A2" in text


def test_explain_json_agrees_with_the_flow(rules: Path, events: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli("run", "-r", str(rules), "-e", str(events), "-o", str(out)).returncode == 0
    for contact in ("alice", "bob", "carol"):
        done = cli("explain", "-r", str(rules), "-e", str(events), "-c", contact, "--json")
        assert done.returncode == 0, done.stderr
        story = orjson.loads(done.stdout)
        changes = [c for c in read_jsonl(out / "changes.jsonl") if c["contact"] == contact]
        points = [c for c in changes if c["kind"] == "points"]
        keys = ("rule", "group", "applied", "score_after", "capped", "event_id", "at")
        assert [[p[k] for k in keys] for p in story["points"]] == [
            [p[k] for k in keys] for p in points
        ]
        assert all(p["action"] for p in story["points"])  # explain also names the action
        view = next(c for c in read_jsonl(out / "contacts.jsonl") if c["contact"] == contact)
        assert story["final"] == view
        fired = [t for t in read_jsonl(out / "triggers.jsonl") if t["contact"] == contact]
        keys = ("trigger", "score", "at", "actions", "cause")
        assert story["triggers"] == [{k: t[k] for k in keys} for t in fired]
        applied = sum(p["applied"] for p in points)
        assert story["decay_total"] == pytest.approx(view["total"] - applied, abs=1e-3)


def test_explain_from_the_flows_outputs_tells_the_same_story(
    rules: Path, events: Path, tmp_path: Path
) -> None:
    """What the HTTP service will do: explain from stored change and trigger records."""
    from leadscore.explain import explain
    from leadscore.rules import load_rules

    out = tmp_path / "out"
    assert cli("run", "-r", str(rules), "-e", str(events), "-o", str(out)).returncode == 0
    records = read_jsonl(out / "changes.jsonl") + read_jsonl(out / "triggers.jsonl")
    view = next(c for c in read_jsonl(out / "contacts.jsonl") if c["contact"] == "alice")
    stored = explain("alice", records, view, load_rules(rules)).to_dict()
    done = cli("explain", "-r", str(rules), "-e", str(events), "-c", "alice", "--json")
    replayed = orjson.loads(done.stdout)
    for p in replayed["points"]:
        p["action"] = None  # the change log does not record the action; the replay does
    assert len(replayed.pop("events")) == 5  # only a replay sees the events that earned nothing
    assert stored.pop("events") == []
    assert stored == replayed
    assert [p["name"] for p in stored["points"]][:2] == ["Visited pricing", "fit: title"]
    assert stored["by_rule"][0] == {
        "rule": "form",
        "name": "Submitted a form",
        "count": 1,
        "applied": 30.0,
    }


def test_explain_fires_the_cooling_timer_like_the_flow(rules: Path, tmp_path: Path) -> None:
    # alice goes hot, then only bob writes for a month: her engagement decays below 10.
    lines = [*EVENTS, ev("bob", "email.open", T0 + 40 * 24 * HOUR, "b9")]
    events = write_lines(tmp_path / "events.jsonl", lines)
    out = tmp_path / "out"
    assert cli("run", "-r", str(rules), "-e", str(events), "-o", str(out)).returncode == 0
    done = cli("explain", "-r", str(rules), "-e", str(events), "-c", "alice", "--json")
    story = orjson.loads(done.stdout)
    cooled = [t for t in read_jsonl(out / "triggers.jsonl") if t["trigger"] == "cooled"]
    assert len(cooled) == 1 and cooled[0]["contact"] == "alice"
    assert [t["trigger"] for t in story["triggers"]] == ["hot", "cooled"]
    assert story["triggers"][1]["at"] == cooled[0]["at"]
    assert story["final"]["segments"] == []


def test_explain_an_unknown_contact_fails_clearly(rules: Path, events: Path) -> None:
    done = cli("explain", "-r", str(rules), "-e", str(events), "-c", "zoe")
    assert done.returncode == 1
    assert "no accepted events for contact 'zoe'" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- generate


def test_generate_is_deterministic_and_gzips(tmp_path: Path) -> None:
    args = ("generate", "--contacts", "50", "--events", "2000", "--seed", "11")
    first, second = cli(*args), cli(*args)
    assert first.returncode == 0 and first.stdout == second.stdout
    lines = first.stdout.splitlines()
    assert len(lines) == 2000
    assert "wrote 2,000 events for 50 contacts to standard output" in first.stderr
    packed = tmp_path / "deep" / "events.jsonl.gz"
    done = cli(*args, "--out", str(packed))
    assert done.returncode == 0, done.stderr
    assert gzip.decompress(packed.read_bytes()).decode() == first.stdout
    assert cli("generate", "--contacts", "50", "--events", "2000", "--seed", "12").stdout != (
        first.stdout
    )


def test_generated_events_score_under_the_example_rules(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    done = cli(
        "generate", "--contacts", "400", "--events", "20000", "--seed", "5", "--out", str(events)
    )
    assert done.returncode == 0, done.stderr
    malformed = int(re.search(r"([\d,]+) malformed on purpose", done.stderr)[1].replace(",", ""))
    assert malformed == 20
    out = tmp_path / "out"
    done = cli("run", "--rules", str(EXAMPLE_RULES), "--events", str(events), "--out", str(out))
    assert done.returncode == 0, done.stderr
    dead = read_jsonl(out / "dead_letter.jsonl")
    assert len(dead) == malformed
    assert {d["code"] for d in dead} <= {
        "invalid_json",
        "not_an_object",
        "missing_field",
        "wrong_type",
        "bad_ts",
    }
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["scored"] == 20000 - malformed and summary["duplicates"] == 0
    assert sum(summary["triggers"].values()) > 0


# --------------------------------------------------------------------------- schema


def test_schema_prints_a_json_schema_that_accepts_valid_rules(tmp_path: Path) -> None:
    done = cli("schema")
    assert done.returncode == 0, done.stderr
    schema = orjson.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml_1_2(RULES), schema)
    target = tmp_path / "rules.schema.json"
    done = cli("schema", "--out", str(target))
    assert done.returncode == 0
    assert orjson.loads(target.read_bytes()) == schema
