"""A replay clock that bad input cannot move, and scores brought to one time at the end.

Real Bytewax runs of the file flow (flows/scoring.py) and the explain replay
(leadscore/explain.py), which must agree. Before: one event dated 2099, or one without ts (it
took the wall clock), became every shard's clock and fired decay triggers on unrelated
contacts; and each contact's scores were as of its own last event.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.testing import run_main
from test_flow import RULES, read_jsonl, write, write_lines

from flows.scoring import FlowConfig, build_flow
from leadscore.events import format_ts
from leadscore.explain import AsOfTooEarly, replay
from leadscore.rules import load_rules

M0 = datetime(2026, 3, 2, 9, tzinfo=UTC).timestamp()  # a March file
HOUR = 3600.0
DAY = 86400.0

# a reaches mql (65 >= 60) at M0; its engagement (half-life 1d) falls under 15 about 2.1 days
# later, which fires `cooled`, but only if the clock gets there.
MARCH = [
    {"contact": "a", "action": "cart.add", "ts": M0, "id": "a1"},
    {"contact": "a", "action": "form.submit", "ts": M0, "id": "a2"},
    {"contact": "b", "action": "email.open", "ts": M0 + HOUR, "id": "b1"},
]


def run(tmp_path: Path, lines: list[Any], **config: Any) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rules = write(tmp_path / "rules.yaml", RULES)
    events = write_lines(tmp_path / "events.jsonl", lines)
    out = tmp_path / "out"
    flow_config = FlowConfig(rules=str(rules), events=[str(events)], out=str(out), **config)
    run_main(build_flow(flow_config))
    return {
        "contacts": {c["contact"]: c for c in read_jsonl(out / "contacts.jsonl")},
        "triggers": read_jsonl(out / "triggers.jsonl"),
        "dead": read_jsonl(out / "dead_letter.jsonl"),
        "summary": orjson.loads((out / "summary.json").read_bytes()),
        "events": events,
        "rules": rules,
    }


def explained(got: dict[str, Any], contact: str, **kw: Any) -> Any:
    lines = got["events"].read_bytes().splitlines()
    return replay(load_rules(str(got["rules"])), [lines], contact, time.time(), **kw)


def test_an_event_dated_2099_is_rejected_and_fires_nothing_elsewhere(tmp_path: Path) -> None:
    future = {"contact": "z", "action": "page.hit", "ts": "2099-01-01T00:00:00Z", "id": "z1"}
    got = run(tmp_path, [*MARCH, future])
    assert [t["trigger"] for t in got["triggers"]] == ["mql"]  # no `cooled` for a
    (dead,) = got["dead"]
    assert dead["code"] == "bad_ts" and "in the future" in dead["reason"]
    assert dead["position"].endswith(":4")
    assert set(got["contacts"]) == {"a", "b"}
    assert got["summary"]["as_of"] == format_ts(M0 + HOUR)
    assert got["contacts"]["a"]["segments"] == ["mql"]
    # explain replays the same way: a's final view is the run's, at the same clock.
    result = explained(got, "a")
    assert result.view == got["contacts"]["a"]


def test_an_event_without_ts_takes_the_files_clock_not_the_wall_clock(tmp_path: Path) -> None:
    undated = {"contact": "w", "action": "email.open", "id": "w1"}
    got = run(tmp_path, [*MARCH, undated])
    assert [t["trigger"] for t in got["triggers"]] == ["mql"]  # no `cooled` for a
    assert got["dead"] == []
    assert got["contacts"]["w"]["updated_at"] == format_ts(M0 + HOUR)  # b's, the latest so far
    assert got["summary"]["as_of"] == format_ts(M0 + HOUR)
    assert explained(got, "w").view == got["contacts"]["w"]


def test_an_event_without_ts_and_nothing_before_it_is_dead_lettered(tmp_path: Path) -> None:
    undated = {"contact": "w", "action": "email.open", "id": "w1"}
    got = run(tmp_path, [undated, *MARCH])
    (dead,) = got["dead"]
    assert dead["position"].endswith(":1") and dead["code"] == "bad_ts"
    assert "missing" in dead["reason"] and "add a ts" in dead["reason"]
    assert set(got["contacts"]) == {"a", "b"}


def test_a_naive_timestamp_is_rejected_with_what_to_add(tmp_path: Path) -> None:
    naive = {"contact": "n", "action": "email.open", "ts": "2026-03-02 09:00:00"}
    got = run(tmp_path, [*MARCH, naive])
    (dead,) = got["dead"]
    assert dead["code"] == "bad_ts" and "no time zone" in dead["reason"]
    assert "add Z" in dead["reason"]


def test_max_future_sets_the_tolerance(tmp_path: Path) -> None:
    soon = {"contact": "s", "action": "email.open", "ts": time.time() + 600}
    assert run(tmp_path / "default", [soon])["dead"][0]["code"] == "bad_ts"  # 5 min default
    assert run(tmp_path / "wider", [soon], max_future=3600.0)["dead"] == []


def test_every_contact_is_brought_to_the_runs_clock(tmp_path: Path) -> None:
    got = run(tmp_path, MARCH)
    a = got["contacts"]["a"]
    assert a["updated_at"] == format_ts(M0)  # its own last event
    assert a["as_of"] == format_ts(M0 + HOUR)  # the run's clock: b's event
    assert a["scores"]["engagement"] == round(65 * 2 ** (-HOUR / DAY), 4)


def test_as_of_later_brings_every_contact_there(tmp_path: Path) -> None:
    later = M0 + 3 * DAY
    got = run(tmp_path, MARCH, as_of=later)
    a = got["contacts"]["a"]
    assert a["as_of"] == got["summary"]["as_of"] == format_ts(later)
    assert a["updated_at"] == format_ts(M0)
    assert a["scores"]["engagement"] == a["total"] == 8.125  # 65 after three half-lives
    assert a["normalized"] == 8.1
    assert a["grade"] == "C3"  # follows the decayed scores (engagement band 3 under 20)
    assert [t["trigger"] for t in got["triggers"]] == ["mql"]  # reading fires nothing
    assert explained(got, "a", as_of=later).view == a


def test_as_of_before_the_clock_is_refused(tmp_path: Path) -> None:
    got = run(tmp_path, MARCH, as_of=M0)
    assert got["summary"]["as_of_refused"] == format_ts(M0)
    assert got["summary"]["as_of"] == format_ts(M0 + HOUR)  # the outputs stay at the clock
    assert got["contacts"]["a"]["as_of"] == format_ts(M0 + HOUR)
    with pytest.raises(AsOfTooEarly, match="before the replay's clock"):
        explained(got, "a", as_of=M0)


def test_flow_config_reads_max_future_and_as_of_from_the_environment() -> None:
    env = {"LEADSCORE_RULES": "r.yaml", "LEADSCORE_MAX_FUTURE": "1h", "LEADSCORE_AS_OF": ""}
    assert FlowConfig.from_env(env).max_future == 3600.0
    assert FlowConfig.from_env(env).as_of is None
    env.update(LEADSCORE_MAX_FUTURE="90", LEADSCORE_AS_OF="2026-03-31T00:00:00Z")
    config = FlowConfig.from_env(env)
    assert config.max_future == 90.0
    assert config.as_of == datetime(2026, 3, 31, tzinfo=UTC).timestamp()
    env["LEADSCORE_AS_OF"] = "2026-03-31 00:00"
    with pytest.raises(ValueError, match="no time zone"):
        FlowConfig.from_env(env)
