"""`leadscore run --as-of/--max-future` and `leadscore explain`'s events and reasons, as a
user runs them (the installed command, real files)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
from test_cli import EVENTS, HOUR, RULES, T0, cli, read_jsonl, write_lines

from leadscore.events import format_ts

DAY = 86400.0


def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


def test_run_as_of_brings_every_contact_and_the_top_leads_there(tmp_path: Path) -> None:
    rules, events = rules_file(tmp_path), write_lines(tmp_path / "events.jsonl", EVENTS)
    week = T0 + 3 * HOUR + 7 * DAY  # one engagement half-life after the run's clock
    done = cli("run", "-r", str(rules), "-e", str(events), "-o", str(tmp_path / "out"),
               "--as-of", format_ts(week))  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert summary["as_of"] == format_ts(week)
    contacts = {c["contact"]: c for c in read_jsonl(tmp_path / "out" / "contacts.jsonl")}
    alice = contacts["alice"]
    assert alice["as_of"] == format_ts(week) and alice["updated_at"] == format_ts(T0 + HOUR)
    # 20 (3 h older than the clock) + 30 (2 h older), a half-life later: about half of 49.51.
    assert abs(alice["scores"]["engagement"] - 49.5066 / 2) < 1e-3
    assert "scores as of" in done.stdout and format_ts(week) in done.stdout
    row = next(line for line in done.stdout.splitlines() if "alice" in line)
    assert f"{alice['total']:.4g}" in row  # the report ranks the decayed totals


def test_run_as_of_before_the_clock_is_refused(tmp_path: Path) -> None:
    rules, events = rules_file(tmp_path), write_lines(tmp_path / "events.jsonl", EVENTS)
    done = cli("run", "-r", str(rules), "-e", str(events), "-o", str(tmp_path / "out"),
               "--as-of", format_ts(T0))  # fmt: skip
    assert done.returncode == 1
    assert f"--as-of {format_ts(T0)} is before the run's clock {format_ts(T0 + 3 * HOUR)}" in (
        done.stderr
    )
    assert "pick a time at or after it" in done.stderr
    bad = cli("run", "-r", str(rules), "-e", str(events), "--as-of", "2026-06-01 00:00")
    assert bad.returncode == 1 and "no time zone" in bad.stderr and "Traceback" not in bad.stderr


def test_run_max_future_sets_the_tolerance(tmp_path: Path) -> None:
    rules = rules_file(tmp_path)
    soon = {"contact": "s", "action": "email.open", "ts": time.time() + 1800, "id": "s1"}
    events = write_lines(tmp_path / "events.jsonl", [soon])
    default = cli("run", "-r", str(rules), "-e", str(events), "-o", str(tmp_path / "a"))
    assert default.returncode == 0, default.stderr
    (dead,) = read_jsonl(tmp_path / "a" / "dead_letter.jsonl")
    assert dead["code"] == "bad_ts" and "in the future" in dead["reason"]
    wider = cli("run", "-r", str(rules), "-e", str(events), "-o", str(tmp_path / "b"),
                "--max-future", "1h")  # fmt: skip
    assert wider.returncode == 0, wider.stderr
    assert read_jsonl(tmp_path / "b" / "dead_letter.jsonl") == []
    wrong = cli("run", "-r", str(rules), "-e", str(events), "--max-future", "soon")
    assert wrong.returncode == 1 and "--max-future" in wrong.stderr


def test_explain_lists_every_event_with_why_it_earned_nothing(tmp_path: Path) -> None:
    rules, events = rules_file(tmp_path), write_lines(tmp_path / "events.jsonl", EVENTS)
    done = cli("explain", "-r", str(rules), "-e", str(events), "-c", "alice")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = [line for line in lines if re.match(r"^ 2026-06-01T", line)]
    # Piped: one row per line, whole. The Events table has alice's 5 events (a retry too).
    events_rows = rows[:5]
    assert [r.split()[1] for r in events_rows] == [
        "page.hit", "page.hit", "identify", "form.submit", "form.submit",
    ]  # fmt: skip
    assert "pricing" in events_rows[0] and "+20" in events_rows[0]
    assert (
        f"pricing: cooldown until {format_ts(T0 + HOUR)} (awarded at {format_ts(T0)})"
        in events_rows[1]
    )
    assert "senior" in events_rows[2] and "+15" in events_rows[2]
    assert "duplicate id 'a4'" in events_rows[4]
    assert all(line == line.rstrip() for line in lines)  # no padding after the last column
    assert f"as of: {format_ts(T0 + 3 * HOUR)}" in done.stdout

    data = orjson.loads(
        cli("explain", "-r", str(rules), "-e", str(events), "-c", "alice", "--json").stdout
    )
    assert [e["earned"] for e in data["events"]] == [20.0, 0.0, 15.0, 30.0, 0.0]
    assert data["events"][1]["reasons"] == [
        {
            "rule": "pricing",
            "code": "cooldown",
            "text": f"pricing: cooldown until {format_ts(T0 + HOUR)} (awarded at {format_ts(T0)})",
        }
    ]
    assert data["final"]["as_of"] == format_ts(T0 + 3 * HOUR)


def test_explain_as_of_agrees_with_run_as_of_and_refuses_earlier(tmp_path: Path) -> None:
    rules, events = rules_file(tmp_path), write_lines(tmp_path / "events.jsonl", EVENTS)
    later = format_ts(T0 + 30 * DAY)
    run = cli("run", "-r", str(rules), "-e", str(events), "-o", str(tmp_path / "out"),
              "--as-of", later)  # fmt: skip
    assert run.returncode == 0, run.stderr
    contacts = {c["contact"]: c for c in read_jsonl(tmp_path / "out" / "contacts.jsonl")}
    explained = cli("explain", "-r", str(rules), "-e", str(events), "-c", "bob", "--json",
                    "--as-of", later)  # fmt: skip
    assert orjson.loads(explained.stdout)["final"] == contacts["bob"]
    early = cli("explain", "-r", str(rules), "-e", str(events), "-c", "bob", "--as-of",
                format_ts(T0))  # fmt: skip
    assert early.returncode == 1 and "before the replay's clock" in early.stderr
