"""`leadscore publish --history DIR`: a deployment whose streams lost their oldest entries
(short retention) is rebuilt from its `--archive` directory up to where the streams take
over, then from the streams, through the real CLI against a real redis-server. The oracle is
`leadscore run` on the whole history; events carry no ids, so an event applied twice would
count twice."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis
from test_cli_redis import RULES, cli
from test_publish_live import T0, P, assert_live_equals, batch, new_rules, oracle, publish

from flows.archive import archive_files, gzip_member
from state.generations import removed_entries
from state.keys import Keys


def send(url: str, tmp_path: Path, lines: list[bytes], name: str) -> Path:
    """``lines`` as entries of 5 events: several entries per partition, so some are trimmed."""
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    done = cli(
        "send", "--redis", url, "--events", str(path), "--partitions", str(P), "--batch", "5"
    )
    assert done.returncode == 0, done.stderr
    return path


def drain(url: str, archive: Path) -> None:
    """A live run that archives its input and keeps only the 2 newest entries per stream."""
    done = cli(
        "run", "--rules", str(RULES), "--source", url, "--drain", "--partitions", str(P),
        "--archive", str(archive), "--retain", "0", "--retain-entries", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def webinar_rules(tmp_path: Path) -> Path:
    """NEW (test_publish_live) that also scores an action the live rules do not know."""
    path = new_rules(tmp_path)
    text = path.read_text()
    assert text.count("\nactions:\n") == 1
    rule = "  - id: webinar\n    on: webinar.attended\n    points: 20\n    repeat: true\n\n"
    path.write_text(text.replace("\nactions:\n", "\nactions:\n" + rule))
    return path


@pytest.mark.slow
def test_publish_from_the_archive_then_the_streams_scores_every_event_once(
    redis_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    first = send(redis_url, tmp_path, batch(0, ids=False), "first")
    drain(redis_url, archive)
    (day,) = archive_files(archive)
    first_run = Path(day).read_bytes()
    # the last line is in its partition's newest entry, which the stream keeps: the live
    # rules reject it (unknown action), so only the stream has it, and NEW scores it
    webinar = orjson.dumps({"contact": "c-23", "action": "webinar.attended", "ts": T0 + 2000})
    second = send(redis_url, tmp_path, [*batch(1000, ids=False), webinar], "second")
    drain(redis_url, archive)
    r = redis.Redis.from_url(redis_url)
    keys = Keys("ls", P)
    trimmed = [removed_entries(r, keys, p) for p in range(P)]
    assert all(n > 0 for n in trimmed) and all(r.xlen(keys.input(p)) > 0 for p in range(P))
    new = webinar_rules(tmp_path)

    # the streams alone cannot rebuild: refused, nothing left in progress
    done = publish(redis_url, "--rules", str(new), "--yes")
    assert done.returncode == 1 and "--history DIR" in done.stderr, done.stderr
    assert r.exists("ls:publish") == 0 and r.hget("ls:meta", "rules_version") == b"1"

    # an archive without the first run has a gap: refused, nothing left in progress
    rest = Path(day).read_bytes()[len(first_run) :]
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / Path(day).name).write_bytes(rest)
    done = publish(redis_url, "--rules", str(new), "--history", str(tmp_path / "partial"), "--yes")
    assert done.returncode == 1 and "it has a gap" in " ".join(done.stderr.split())
    assert r.exists("ls:publish") == 0 and r.hget("ls:meta", "rules_version") == b"1"

    # a crash re-archives its last checkpoints (at least once): here the whole first run
    Path(day).write_bytes(first_run + first_run + rest)

    # the preview reads the archive, then the streams
    done = publish(redis_url, "--rules", str(new), "--history", str(archive))
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())  # the console wraps long lines
    assert f"on the archive {archive} (526 events the streams no longer hold), then" in said
    assert "run again with --yes" in said

    done = publish(redis_url, "--rules", str(new), "--history", str(archive), "--yes")
    assert done.returncode == 0, done.stderr
    lines = sum(len(f.read_text().splitlines()) for f in (first, second))
    assert f"({lines:,} events replayed" in done.stdout
    assert r.hget("ls:meta", "rules_version") == b"4"  # v2 and v3 went to the refused ones
    assert_live_equals(redis_url, oracle(new, [first, second], tmp_path, "oracle"))


def test_an_archive_without_entry_ids_is_refused_saying_what_to_do(
    redis_url: str, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "2026-01-01.jsonl.gz").write_bytes(gzip_member(b"\n".join(batch(0)) + b"\n"))
    new = new_rules(tmp_path)
    done = publish(redis_url, "--rules", str(new), "--history", str(old), "--yes")
    assert done.returncode == 1
    assert "written before leadscore recorded input stream entry ids" in done.stderr
    assert "score it into a new deployment" in done.stderr
    assert redis.Redis.from_url(redis_url).exists("ls:publish") == 0
