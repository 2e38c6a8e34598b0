"""Identify with merge in the file flow: a visitor's history becomes the known contact's.

Real Bytewax runs over real files: the two ids sit in different shards (checked), the merge
lands in the known contact's, later events of the old id follow it, and the result equals
one contact doing both histories (rules whose awards add up exactly, docs/ARCHITECTURE.md
"Merging contacts").
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import patch

import orjson
import pytest
from bytewax.testing import cluster_main, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from scoring_helpers import DAY, HOUR, T0

from flows.config import FlowConfig
from flows.scoring import build_flow
from flows.shards import shard_of
from leadscore import identity
from leadscore.engine import Engine
from leadscore.events import Event
from leadscore.identity import Aliases, merge_groups
from leadscore.rules import load_rules_text

RULES = """
version: 1
groups:
  engagement: {decay: {half_life: 14d}}
  product: {decay: {expire_after: 30d}}
  fit: {}
actions:
  - {id: pricing, on: page.hit, where: {url: "*/pricing*"}, points: 10, repeat: true}
  - {id: clicks, on: email.click, points: 3, repeat: true}
  - {id: cart, on: cart.add, points: 8, group: product, repeat: true}
  - {id: form, on: form.submit, points: 5, group: fit, repeat: true}
triggers:
  - {id: mql, score: total, at_least: 50, actions: [{add_segment: mql}]}
"""

VISITOR, KNOWN = "anon-7", "jane@acme.com"
CLI = [sys.executable, "-m", "leadscore.cli"]
PRICING = {"url": "https://acme.com/pricing"}


def write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def run(tmp: Path, files: list[list[dict[str, Any]]], workers: int = 1, **kw: Any) -> Path:
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    paths = [str(write(tmp / f"events-{i}.jsonl", events)) for i, events in enumerate(files)]
    out = tmp / "out"
    flow = build_flow(FlowConfig(rules=str(rules), events=paths, out=str(out), **kw))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


def hit(contact: str, t: float, action: str = "page.hit", **extra: Any) -> dict[str, Any]:
    props = PRICING if action == "page.hit" else {}
    return {"contact": contact, "action": action, "ts": t, "props": props, **extra}


def identify(contact: str, t: float, *merged: str) -> dict[str, Any]:
    return {"contact": contact, "action": "identify", "ts": t, "merge": list(merged)}


def one_contact(events: list[dict[str, Any]], at: float) -> dict[str, Any]:
    """The view of ONE contact doing every event (all ids renamed), in time order."""
    engine = Engine(load_rules_text(RULES, "rules.yaml"))
    state = engine.new_state()
    for e in sorted(events, key=lambda e: e["ts"]):
        engine.apply(state, Event(KNOWN, e["action"], e["ts"], props=e.get("props")))
    engine.advance(state, at)
    return engine.view(KNOWN, state, at)


def by_contact(out: Path) -> dict[str, dict[str, Any]]:
    return {row["contact"]: row for row in read(out / "contacts.jsonl")}


def test_the_two_ids_of_these_tests_live_in_different_shards() -> None:
    assert shard_of(VISITOR, 64) != shard_of(KNOWN, 64)
    assert shard_of(VISITOR, 3) != shard_of(KNOWN, 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_visitors_history_merges_into_the_known_contact_as_one_contact(
    tmp_path: Path, workers: int
) -> None:
    # The visitor browses for two weeks (its own file), then identifies; later events for the
    # old id (still coming from the pixel's file) are the known contact's.
    visitor = [hit(VISITOR, T0 + d * DAY) for d in range(10, 14)]
    visitor += [hit(VISITOR, T0 + 20 * DAY), hit(VISITOR, T0 + 21 * DAY, "cart.add")]
    known = [hit(KNOWN, T0 + 5 * DAY, "email.click"), hit(KNOWN, T0 + 15 * DAY, "form.submit")]
    known += [hit(KNOWN, T0 + 15 * DAY), hit(KNOWN, T0 + 15.5 * DAY)]
    known += [identify(KNOWN, T0 + 16 * DAY, VISITOR), hit(KNOWN, T0 + 22 * DAY)]
    out = run(tmp_path, [visitor, known], workers)
    contacts = by_contact(out)
    assert VISITOR not in contacts  # its state went to the known contact
    expected = one_contact(visitor + known, T0 + 22 * DAY)
    got = contacts[KNOWN]
    assert got["scores"] == pytest.approx(expected["scores"], abs=1e-3)
    assert got["total"] == pytest.approx(expected["total"], abs=1e-3)
    # Neither side reached MQL (50) alone; together they do: it fires once, for the known
    # contact. With one worker the files are read in turn, so the visitor's history is in
    # place when the identify merges it, and the merge is the cause; with two, the identify
    # may come first and the visitor's events then follow the alias (one of them the cause).
    triggers = read(out / "triggers.jsonl")
    assert [(t["contact"], t["trigger"]) for t in triggers] == [(KNOWN, "mql")]
    if workers == 1:
        assert triggers[0]["cause"] == "merge"
    changes = read(out / "changes.jsonl")
    merges = [c for c in changes if c.get("kind") == "merge"]
    assert merges == [
        {"contact": KNOWN, "kind": "merge", "from": VISITOR, "at": "2026-06-17T00:00:00.000Z"}
    ]
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["merged"] == 1
    assert summary["rejected"] == 0


def test_chains_self_merges_and_ids_that_never_existed(tmp_path: Path) -> None:
    # A into B, then B into C: A's later events go to C. A self-merge and a never-seen id
    # change nothing but are accepted; re-merging A elsewhere is refused with a dead letter.
    a, b, c = "a-1", "b-2", "c-3"
    events = [
        hit(a, T0),
        hit(b, T0 + HOUR),
        identify(b, T0 + 2 * HOUR, a),
        hit(c, T0 + 3 * HOUR, "email.click"),
        identify(c, T0 + 4 * HOUR, b, c, "ghost-9"),
        hit(a, T0 + 5 * HOUR),  # to C, through B
        identify("d-4", T0 + 6 * HOUR, a),  # A was merged into B: refused, the identify scores
        hit("d-4", T0 + 7 * HOUR, "email.click"),
    ]
    out = run(tmp_path, [events], shards=7)
    contacts = by_contact(out)
    assert set(contacts) == {c, "d-4"}
    expected = one_contact([e for e in events if e["contact"] != "d-4"], T0 + 7 * HOUR)
    assert contacts[c]["total"] == pytest.approx(expected["total"], abs=1e-3)
    assert contacts["d-4"]["total"] == 3
    merges = [(r["contact"], r["from"]) for r in read(out / "changes.jsonl") if "from" in r]
    assert merges == [(b, a), (c, b), (c, "ghost-9")]
    dead = read(out / "dead_letter.jsonl")
    assert [d["code"] for d in dead] == ["merge_refused"]
    assert "'a-1' was merged into 'c-3' before" in dead[0]["reason"]
    assert orjson.loads(dead[0]["raw"])["merge"] == [a]


def test_hostile_merge_lists_are_dead_lettered_with_a_reason(tmp_path: Path) -> None:
    events = [
        identify(KNOWN, T0, *[f"v-{i}" for i in range(17)]),
        {"contact": KNOWN, "action": "page.hit", "ts": T0, "merge": [VISITOR]},
        {"contact": KNOWN, "action": "identify", "ts": T0, "merge": VISITOR},
        {"contact": KNOWN, "action": "identify", "ts": T0, "merge": [7]},
        identify(KNOWN, T0, KNOWN),  # itself: accepted, changes nothing
    ]
    out = run(tmp_path, [events])
    dead = read(out / "dead_letter.jsonl")
    assert [d["code"] for d in dead] == ["bad_merge", "bad_merge", "wrong_type", "wrong_type"]
    assert "at most 16" in dead[0]["reason"]
    assert "only allowed on action 'identify'" in dead[1]["reason"]
    assert "merged" not in orjson.loads((out / "summary.json").read_bytes())


def test_merges_from_standard_input_are_dead_lettered_saying_what_to_do(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    lines = [hit(VISITOR, T0), identify(KNOWN, T0 + DAY, VISITOR)]
    proc = subprocess.run(
        [*CLI, "run", "-r", str(rules), "-e", "-", "-o", str(tmp_path / "out")],
        input=b"".join(orjson.dumps(e) + b"\n" for e in lines),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    dead = read(tmp_path / "out" / "dead_letter.jsonl")
    assert [d["code"] for d in dead] == ["merge_unsupported"]
    assert "give the events as files" in dead[0]["reason"]


@settings(max_examples=60, deadline=None)
@given(
    edges=st.lists(
        st.tuples(st.sampled_from("abcdef"), st.lists(st.sampled_from("abcdef"), max_size=3)),
        max_size=8,
    )
)
def test_every_merge_the_aliases_make_is_inside_one_first_pass_group(
    edges: list[tuple[str, list[str]]],
) -> None:
    # Whatever order identifies come in, a merge the flow makes joins ids the first pass put
    # in one group (so one shard), and every id resolves to a root that is not an alias.
    lines = [orjson.dumps(identify(k, T0, *m)) for k, m in edges]
    groups = merge_groups(lines)
    aliases = Aliases()
    for known, merged in edges:
        root = aliases.resolve(known)
        for step in aliases.plan(root, [m for m in merged if m != known]):
            if step.merge:
                assert groups[step.visitor] == groups[root]
    for x in "abcdef":
        assert aliases.resolve(x) not in aliases.into


def test_explain_shows_the_merge_and_the_id_each_point_was_earned_under(tmp_path: Path) -> None:
    visitor = [hit(VISITOR, T0 + d * DAY) for d in range(10, 13)]
    known = [hit(KNOWN, T0 + 14 * DAY, "form.submit"), identify(KNOWN, T0 + 15 * DAY, VISITOR)]
    known += [hit(VISITOR, T0 + 16 * DAY, "email.click")]  # after the merge: the known's
    out = run(tmp_path, [visitor, known])
    flow_view = by_contact(out)[KNOWN]
    for asked in (KNOWN, VISITOR):
        files = [str(tmp_path / "events-0.jsonl"), str(tmp_path / "events-1.jsonl")]
        done = subprocess.run(
            [
                *CLI,
                "explain",
                "-r",
                str(tmp_path / "rules.yaml"),
                "-c",
                asked,
                "--json",
                "-e",
                *files,
            ],
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        story = orjson.loads(done.stdout)
        assert story["contact"] == KNOWN  # the old id's history is the known contact's
        assert story["final"]["total"] == flow_view["total"]
        assert [(m["from"], m["at"]) for m in story["merges"]] == [
            (VISITOR, "2026-06-16T00:00:00.000Z")
        ]
        assert story["merges"][0]["points"]["engagement"] > 0
        earned = [(p["rule"], p.get("earned_as"), p["applied"]) for p in story["points"]]
        assert earned == [
            ("pricing", VISITOR, 10.0),
            ("pricing", VISITOR, 10.0),
            ("pricing", VISITOR, 10.0),
            ("form", None, 5.0),
            ("clicks", None, 3.0),
        ]
        # Points applied plus decay give the final score, as for any contact.
        assert story["applied_total"] + story["decay_total"] == pytest.approx(
            story["final"]["total"], abs=1e-3
        )
        assert [e.get("contact") for e in story["events"]] == [VISITOR] * 3 + [None, None, VISITOR]


_IDS = st.one_of(
    st.text(max_size=3),
    st.integers(-2, 2),
    st.none(),
    st.sampled_from([KNOWN, VISITOR, "x" * 257]),
)


@settings(max_examples=200, deadline=None)
@given(
    action=st.sampled_from(["identify", "page.hit", ""]),
    merge=st.one_of(st.lists(_IDS, max_size=20), _IDS, st.dictionaries(st.text(max_size=2), _IDS)),
    ts=st.sampled_from([T0, "2026-06-01T00:00:00Z", None, "bad"]),
)
def test_every_parser_decides_merge_lines_alike(action: str, merge: object, ts: object) -> None:
    # The typed decoder, the chunk parser and the one-line parser accept and refuse the same
    # identify lines with the same reasons, and agree on the ids merged.
    from leadscore.events import parse_event
    from leadscore.events import parse_events as reference
    from leadscore.typed import parse_events as typed

    line = orjson.dumps({"contact": KNOWN, "action": action, "ts": ts, "merge": merge})
    results = [typed([line], T0)[0], reference([line], T0)[0], parse_event(line, T0)]
    decided = [
        (type(r).__name__, r.merge if isinstance(r, Event) else (r.code, r.detail)) for r in results
    ]
    assert decided[0] == decided[1] == decided[2]
    if isinstance(results[0], Event) and results[0].merge is not None:
        assert KNOWN not in results[0].merge and len(set(results[0].merge)) == len(results[0].merge)
        assert action == "identify" and len(results[0].merge) <= 16


@settings(max_examples=80)
@given(
    st.lists(
        st.sampled_from([b'{"merge":["a"]}', b'{"x":"merg"}', b'"merge"', b"merge", b"", b"ab"]),
        max_size=30,
    ),
    st.integers(1, 40),
    st.booleans(),
)
def test_merge_lines_finds_every_line_with_the_word_whatever_the_blocks(
    parts: list[bytes], block: int, newline_at_end: bool
) -> None:
    """The first pass reads blocks and searches each where it lies: a word cut by a block's
    end, or in the line a block cut, is still found, and only lines holding it come back."""
    data = b"\n".join(p + q for p, q in zip(parts, reversed(parts), strict=True))
    data += b"\n" if newline_at_end else b""
    expected = [line for line in data.split(b"\n") if b'"merge"' in line]
    with patch.object(identity, "_BLOCK", block):
        assert list(identity._merge_lines(io.BytesIO(data), b'"merge"')) == expected
