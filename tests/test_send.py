"""``state.send.send_files``: what ``leadscore send`` does, called in this process."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from state.keys import Keys
from state.redis_store import StoreError
from state.send import send_files


def test_send_files_takes_the_stored_partition_count_else_16(
    redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    lines = [f'{{"contact": "c-{i}", "action": "page.hit", "id": "e-{i}"}}' for i in range(30)]
    path.write_text("\n".join([*lines, "", "not json"]) + "\n")
    seen: list[int] = []
    partitions, result = send_files(redis_url, [str(path)], batch=7, on_bytes=seen.append)
    assert partitions == 16
    assert (result.events, result.blank, result.malformed) == (31, 1, 1)
    assert sum(seen) == path.stat().st_size
    client = redis.Redis.from_url(redis_url)
    keys = Keys("ls", 16)
    sent = [
        line
        for p in range(16)
        for _id, fields in client.xrange(keys.input(p))
        for line in fields[b"e"].split(b"\n")
    ]
    assert sorted(sent) == sorted(line.encode() for line in [*lines, "not json"])
    assert send_files(redis_url, [str(path)])[0] == 16  # from {prefix}:meta now
    with pytest.raises(StoreError, match="split into 16 partitions"):
        send_files(redis_url, [str(path)], partitions=8)
