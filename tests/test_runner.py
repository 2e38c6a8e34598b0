"""``flows.runner`` and ``leadscore.inputs``: what ``leadscore run`` reports, computed in this
process (the command's own tests run it as a subprocess, tests/test_cli.py)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any
from unittest.mock import patch

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows import runner
from flows.config import FlowConfig
from flows.runner import (
    FileRunReport,
    read_jsonl,
    run_files,
    top_contacts,
    top_contacts_of_file,
)
from leadscore.generate import write_events
from leadscore.inputs import input_size, read_lines

RULES = str(Path(__file__).resolve().parent.parent / "examples" / "rules.yaml")


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    write_events(path, 40, 1500, seed=3, malformed_rate=0.01)
    return path


def _records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_a_file_run_reports_its_summary_and_top_contacts(events: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = FlowConfig(rules=RULES, events=[str(events)], out=str(out), shards=8)
    report = run_files(config, top=5)
    assert report.summary == _records(out / "summary.json")[0]
    lines = [line for line in events.read_bytes().splitlines() if line.strip()]
    assert report.read == len(lines)  # scored + rejected + duplicates: nothing lost
    assert report.summary["rejected"] > 0  # the malformed lines
    contacts = _records(out / "contacts.jsonl")
    ranked = sorted(contacts, key=lambda c: (-c["total"], c["contact"]))
    assert report.top == ranked[:5]
    assert report.rate > 0


def test_a_run_to_stdout_reports_what_it_wrote_there(
    events: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    config = FlowConfig(rules=RULES, events=[str(events)], out="-", shards=8)
    report = run_files(config, top=3)
    written = [orjson.loads(line) for line in capfdbinary.readouterr().out.splitlines()]
    summaries = [r for r in written if r["output"] == "summary"]
    assert len(summaries) == 1
    assert report.summary == summaries[0]  # as written, with its "output" label
    contacts = [r for r in written if r["output"] == "contacts"]
    assert report.top == sorted(contacts, key=lambda c: (-c["total"], c["contact"]))[:3]


def test_a_missing_events_file_fails_before_the_run(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    config = FlowConfig(rules=RULES, events=[str(missing)], out=str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        run_files(config)
    assert not (tmp_path / "out").exists()


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "contact": st.text(min_size=1, max_size=3),
                "total": st.one_of(st.none(), st.floats(-1e6, 1e6)),
            }
        ),
        max_size=40,
    ),
    st.integers(0, 10),
)
def test_top_contacts_are_the_highest_totals_ties_by_id(rows: list[dict], n: int) -> None:
    top = top_contacts(iter(rows), n)
    assert top == sorted(rows, key=lambda r: (-(r["total"] or 0.0), r["contact"]))[:n]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "contact": st.text(max_size=3),
                "total": st.one_of(st.none(), st.floats(-1e6, 1e6), st.sampled_from([0.0, 1.5])),
                "scores": st.dictionaries(st.text(max_size=2), st.floats(-9, 9), max_size=2),
            }
        ),
        max_size=40,
    ),
    st.integers(0, 10),
    st.sampled_from([1, 7, 64, 1 << 20]),
    st.booleans(),
)
def test_the_file_report_ranks_contacts_jsonl_as_top_contacts_does(
    tmp_path: Path, rows: list[dict], n: int, block: int, blank: bool
) -> None:
    """The run's table reads contacts.jsonl in blocks, only contact and total: the same rows in
    the same order as ranking every decoded line (ties by id, then line order)."""
    path = tmp_path / "contacts.jsonl"
    lines = [orjson.dumps(row) for row in rows]
    path.write_bytes(b"\n".join(lines) + (b"\n\n" if blank else b""))
    with patch.object(runner, "_RANK_BLOCK", block):
        assert top_contacts_of_file(path, n) == top_contacts(read_jsonl(path), n)


def test_the_report_counts_every_line_read() -> None:
    report = FileRunReport({"scored": 7, "rejected": 2, "duplicates": 1}, [], 2.0)
    assert (report.read, report.rate) == (10, 5.0)
    assert FileRunReport({}, [], 0.0).rate == 0.0


def test_inputs_read_plain_and_gzip_files_and_count_their_bytes(tmp_path: Path) -> None:
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b'{"n": 1}\n' * 150_000)  # more than 1 MiB: reported on the way
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"n": 2}\n{"n": 3}\n'))
    seen: list[int] = []
    lines = list(read_lines([str(plain), str(packed)], seen.append))
    assert lines[-2:] == [b'{"n": 2}\n', b'{"n": 3}\n']
    assert len(lines) == 150_002
    assert len(seen) >= 2  # a report once past 1 MiB, and the rest at the end
    assert sum(seen) == input_size(str(plain)) + input_size(str(packed)) == 150_000 * 9 + 18
