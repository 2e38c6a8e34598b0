"""``--archive DIR``: the live flow's accepted input on disk by day, readable by the file flow
(flows/archive.py), against a real redis-server and the real CLI."""

from __future__ import annotations

import gzip
import json
import time
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli_redis import RULES, cli

from flows.archive import (
    MESSAGES,
    Archived,
    InputArchive,
    archive_files,
    day_file,
    gzip_member,
)
from leadscore.history import ArchiveHistory, HistoryError
from state.redis_store import RedisStore

T0 = time.time() - 3600  # recent: no decay crossing is due while the test runs


def ev(contact: str, n: int, action: str = "page.hit", url: str = "/pricing") -> bytes:
    return orjson.dumps(
        {
            "contact": contact,
            "action": action,
            "id": f"{contact}-{n}",
            "ts": T0 + n,
            "props": {"url": f"https://acme.com{url}"},
        }
    )


def canonical_triggers(records: list[dict]) -> list[tuple[str, str, str]]:
    return sorted((r["contact"], r["trigger"], str(r.get("at"))) for r in records)


def test_archive_holds_accepted_input_and_replays_to_the_live_result(
    redis_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    good = [
        ev(f"c-{i % 9}", i % 60, url=["/pricing", "/demo", "/blog/x"][i % 3]) for i in range(120)
    ] + [ev(f"c-{i % 3}", 30 + i // 3, action="email.click") for i in range(60)]
    bad = [b"not json", orjson.dumps({"contact": "x", "action": "never.used", "id": "u"})]
    rounds = [good[:100] + bad[:1], good[100:] + bad[1:]]
    for n, lines in enumerate(rounds):  # two live runs: two checkpoints' members at least
        path = tmp_path / f"round{n}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        assert cli("send", "--redis", redis_url, "--events", str(path)).returncode == 0
        done = cli(
            "run", "--rules", str(RULES), "--source", redis_url, "--drain",
            "--archive", str(archive),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    files = archive_files(archive)
    assert len(files) == 1 and Path(files[0]).name.endswith(".jsonl.gz")
    with gzip.open(files[0]) as fh:
        archived = fh.read().splitlines()
    # every accepted event once, dead letters not at all; per contact in the order sent
    assert sorted(archived) == sorted(good)
    for contact in {orjson.loads(line)["contact"] for line in good}:
        sent = [line for line in good if orjson.loads(line)["contact"] == contact]
        assert [line for line in archived if orjson.loads(line)["contact"] == contact] == sent

    # the file flow reads the archive directory (every gzip member) to the live result
    out = tmp_path / "out"
    done = cli("run", "--rules", str(RULES), "--events", str(archive), "--out", str(out))
    assert done.returncode == 0, done.stderr
    replayed = [json.loads(line) for line in (out / "triggers.jsonl").read_text().splitlines()]
    live = RedisStore(redis_url).read_triggers()
    assert replayed and canonical_triggers(replayed) == canonical_triggers(live)
    contacts = {
        c["contact"]: c for c in map(json.loads, (out / "contacts.jsonl").read_text().splitlines())
    }
    store = RedisStore(redis_url)
    for contact, view in contacts.items():
        model = store.read_model(contact)
        assert model is not None, contact
        # both views decay to the moment each was taken (seconds apart): equal up to that
        assert model["stage"] == view["stage"], contact
        assert model["scores"].keys() == view["scores"].keys()
        for name, value in view["scores"].items():
            assert model["scores"][name] == pytest.approx(value, rel=1e-3, abs=1e-3), contact


def test_an_event_without_ts_is_archived_with_the_time_it_was_scored_at(
    redis_url: str, tmp_path: Path
) -> None:
    stamped = {"contact": "c-1", "action": "page.hit", "id": "no-ts", "props": {"url": "/demo"}}
    path = tmp_path / "e.jsonl"
    path.write_bytes(orjson.dumps(stamped) + b"\n")
    assert cli("send", "--redis", redis_url, "--events", str(path)).returncode == 0
    before = time.time()
    done = cli(
        "run", "--rules", str(RULES), "--source", redis_url, "--drain",
        "--archive", str(tmp_path / "a"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with gzip.open(archive_files(tmp_path / "a")[0]) as fh:
        (line,) = fh.read().splitlines()
    archived = orjson.loads(line)
    ts = datetime.fromisoformat(archived.pop("ts").replace("Z", "+00:00")).timestamp()
    assert archived == stamped and before - 1 <= ts <= time.time()


def test_an_empty_archive_directory_is_refused_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = cli("run", "--rules", str(RULES), "--events", str(tmp_path / "empty"))
    assert done.returncode == 1 and "no .jsonl or .jsonl.gz files" in done.stderr


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_appended_members_read_back_as_their_concatenation(chunks: list[bytes]) -> None:
    data = b"".join(gzip_member(c) for c in chunks)
    assert gzip.decompress(data) == b"".join(chunks) if data else True


@st.composite
def checkpoints(draw: st.DrawFn) -> list[list[Archived]]:
    """Checkpoint rounds of up to 3 partitions: each partition's entries in stream order
    across rounds, each entry with 0-3 lines (or hand-over messages)."""
    clock = {p: 1_000 for p in range(3)}
    seq = dict.fromkeys(range(3), 0)
    rounds = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        parts = []
        for p in draw(st.lists(st.integers(0, 2), unique=True, max_size=3)):
            part = Archived(p)
            for _ in range(draw(st.integers(min_value=1, max_value=30))):
                clock[p] += draw(st.integers(min_value=0, max_value=2))
                seq[p] += draw(st.integers(min_value=1, max_value=2))
                entry_id = f"{clock[p]}-{seq[p]}"
                n = draw(st.sampled_from([0, 1, 2, 3, MESSAGES]))
                part.entries.append((entry_id, n))
                part.lines += [orjson.dumps({"e": entry_id, "k": k}) for k in range(max(n, 0))]
            parts.append(part)
        rounds.append(parts)
    return rounds


def merged(rounds: list[list[Archived]]) -> list[Archived]:
    """``rounds`` as one checkpoint (a restarted flow re-reads and batches differently)."""
    parts: dict[int, Archived] = {}
    for round_ in rounds:
        for part in round_:
            into = parts.setdefault(part.p, Archived(part.p))
            into.entries += part.entries
            into.lines += part.lines
    return list(parts.values())


@settings(deadline=None)  # gzip, spool files and zlib per example: 320 ms seen at load 13
@given(checkpoints(), st.sampled_from([150, 60_000]), st.data())
def test_indexed_members_read_as_lines_and_by_partition_each_entry_once(
    rounds: list[list[Archived]], index_max: int, data: st.DataObject
) -> None:
    """Every gzip reader reads the lines; the index gives each partition's entries in stream
    order with their lines, once, also when a crash after round ``crash`` archives rounds
    ``back..crash`` again with what follows in one bigger checkpoint, when a round's index
    needs several members, and when the archive grows between reads (the last round written
    in two halves)."""
    import tempfile

    from flows import archive as module

    crash = data.draw(st.integers(min_value=0, max_value=len(rounds) - 1))
    back = data.draw(st.integers(min_value=0, max_value=crash))
    written = [*rounds[: crash + 1], merged(rounds[back : crash + 2]), *rounds[crash + 2 :]]
    saved, module.INDEX_MAX = module.INDEX_MAX, index_max
    try:
        with tempfile.TemporaryDirectory() as tmp:
            archive = InputArchive(tmp)
            for parts in written[:-1]:
                archive.append(parts, T0)
            history = ArchiveHistory(tmp) if archive_files(tmp) else None
            for p in range(3 if history is not None else 0):
                list(history.entries(p))  # read before the last round is archived
            # the last round is archived while a publish reads: half of its bytes first
            InputArchive(Path(tmp) / "next").append(written[-1], T0)
            tail = b"".join(Path(f).read_bytes() for f in archive_files(Path(tmp) / "next"))
            if tail:
                with day_file(Path(tmp), T0).open("ab") as fh:
                    fh.write(tail[: len(tail) // 2])
                for p in range(3 if history is not None else 0):
                    list(history.entries(p))  # the member being written is left for later
                with day_file(Path(tmp), T0).open("ab") as fh:
                    fh.write(tail[len(tail) // 2 :])
            files = archive_files(tmp)
            if not any(part.entries for parts in rounds for part in parts):
                assert files == []
                return
            with gzip.open(files[0]) as fh:
                lines = fh.read().splitlines()
            assert lines == [line for parts in written for p in parts for line in p.lines]
            history = history or ArchiveHistory(tmp)
            assert history.unindexed() is None
            for p in range(3):
                want = [
                    (entry_id, n)
                    for parts in rounds
                    for part in parts
                    if part.p == p
                    for entry_id, n in part.entries
                ]
                got = list(history.entries(p))
                assert [(entry_id, n) for entry_id, n, _ in got] == want
                for entry_id, n, mine in got:
                    assert [orjson.loads(line)["e"] for line in mine] == [entry_id] * max(n, 0)
                if len(want) > 2:  # bounds: after, before, end
                    a, b = want[0][0], want[-1][0]
                    inner = [e for e, _, _ in history.entries(p, after=a, before=b)]
                    assert inner == [e for e, _ in want[1:-1]]
                    assert [e for e, _, _ in history.entries(p, end=a)] == [a]
    finally:
        module.INDEX_MAX = saved


def test_an_archive_without_entry_ids_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "2026-01-01.jsonl.gz").write_bytes(gzip_member(ev("c-1", 1) + b"\n"))
    refusal = ArchiveHistory(tmp_path).unindexed()
    assert refusal is not None and "before leadscore recorded input stream entry ids" in refusal
    with pytest.raises(HistoryError, match=r"2026-01-01\.jsonl\.gz holds gzip members written"):
        list(ArchiveHistory(tmp_path).entries(0))
