"""Input streams are trimmed once checkpointed, beyond a retention; sizes reach /metrics.

Before, nothing ever trimmed ``{prefix}:{p}:in``: a live deployment ran Redis out of memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from bytewax.testing import cluster_main
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from test_redis_flow import RULES, START, P, progress, send
from test_service import metric

from flows.scoring import FlowConfig, build_flow
from leadscore.generate import generate_events
from state.keys import Keys
from state.retention import (
    InputRetention,
    RetentionPolicy,
    after,
    format_id,
    parse_id,
    parse_retention,
)


@pytest.fixture(scope="module")
def events_3k() -> list[bytes]:
    return list(generate_events(300, 3000, seed=3, start=START, days=10))


def drain(url: str, **options: object) -> None:
    config = FlowConfig(
        rules=str(RULES),
        source="redis",
        redis_url=url,
        partitions=P,
        tail=False,
        stop=threading.Event(),
        **options,  # type: ignore[arg-type]
    )
    cluster_main(build_flow(config), [], 0, worker_count_per_proc=1)


def lengths(url: str) -> list[int]:
    client = redis.Redis.from_url(url)
    try:
        return [client.xlen(Keys("ls", P).input(p)) for p in range(P)]
    finally:
        client.close()


def test_with_retention_0_the_drained_input_streams_are_trimmed_to_nothing(
    redis_url: str, events_3k: list[bytes]
) -> None:
    entries = send(redis_url, events_3k, batch=5)
    assert sum(lengths(redis_url)) == entries
    drain(redis_url, retain_seconds=0.0)
    done = progress(redis_url)
    assert done.acked == entries and done.pending == 0
    assert lengths(redis_url) == [0] * P
    # and /metrics says so, per partition and kind
    for p in range(P):
        labels = {"stream": "in", "partition": str(p)}
        assert REGISTRY.get_sample_value("leadscore_stream_length", labels) == 0
        assert REGISTRY.get_sample_value("leadscore_stream_memory_bytes", labels) > 0
    triggers = REGISTRY.get_sample_value(
        "leadscore_stream_length", {"stream": "triggers", "partition": "0"}
    )
    assert triggers == redis.Redis.from_url(redis_url).xlen(Keys("ls", P).triggers(0))


def test_a_count_retention_keeps_that_many_newest_entries_readable(
    redis_url: str, events_3k: list[bytes]
) -> None:
    send(redis_url, events_3k, batch=5)
    client = redis.Redis.from_url(redis_url)
    keys = Keys("ls", P)
    before = {p: client.xrange(keys.input(p)) for p in range(P)}
    drain(redis_url, retain_seconds=0.0, retain_entries=7)
    for p in range(P):
        kept = client.xrange(keys.input(p))
        assert kept == before[p][-7:], p  # the newest 7, whole and in order


def test_the_default_retention_keeps_a_day_of_checkpointed_input(
    redis_url: str, events_3k: list[bytes]
) -> None:
    entries = send(redis_url, events_3k, batch=5)
    drain(redis_url)
    assert sum(lengths(redis_url)) == entries


def test_nothing_unacknowledged_is_trimmed_when_a_run_stops_part_way(
    redis_url: str, events_3k: list[bytes]
) -> None:
    """A live run stopped while entries are unread: every entry it did not acknowledge is
    still in the stream, however short the retention."""
    send(redis_url, events_3k, batch=5)
    stop = threading.Event()
    config = FlowConfig(
        rules=str(RULES),
        source="redis",
        redis_url=redis_url,
        partitions=P,
        stop=stop,
        retain_seconds=0.0,
        flush_events=50,
    )
    flow = build_flow(config)
    runner = threading.Thread(target=cluster_main, args=(flow, [], 0), daemon=True)
    runner.start()
    client = redis.Redis.from_url(redis_url)
    keys = Keys("ls", P)
    more = list(generate_events(300, 20_000, seed=4, start=START, days=10))
    send(redis_url, more, batch=5)  # a backlog the run cannot finish before it is stopped
    while progress(redis_url).acked == 0:
        pass
    stop.set()
    runner.join(60)
    assert not runner.is_alive()
    for p in range(P):
        group = client.xinfo_groups(keys.input(p))[0]
        assert group["pending"] == 0
        last = parse_id(group["last-delivered-id"])
        ids = [parse_id(i) for i, _ in client.xrange(keys.input(p))]
        # everything above the last delivered (so acknowledged) entry is still there
        unread = [i for i in ids if i > last]
        assert ids[len(ids) - len(unread) :] == unread
        assert len(ids) - len(unread) <= 1  # and what was acknowledged is gone


def test_parse_retention() -> None:
    assert parse_retention("0") == 0.0
    assert parse_retention("7d") == 7 * 86400
    with pytest.raises(ValueError, match="like 12h"):
        parse_retention("forever")


ack_batches = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=30)


@given(
    batches=ack_batches,
    keep=st.integers(min_value=0, max_value=60),
    seconds=st.sampled_from([0.0, 5.0, 1e9]),
)
def test_the_cut_never_passes_the_last_acknowledged_entry_and_keeps_the_count(
    batches: list[int], keep: int, seconds: float
) -> None:
    retention = InputRetention(RetentionPolicy(seconds=seconds, entries=keep))
    ids: list[str] = []
    ms = 1_000_000
    for n in batches:
        batch = []
        for _ in range(n):
            ms += 1
            batch.append(f"{ms}-0")
        ids += batch
        retention.acked(batch)
    cut = retention.cut(now_ms=ms + 10_000)
    if not ids:
        assert cut is None
        return
    if cut is None:
        assert len(ids) < keep  # the count retention cannot be met yet: keep everything
        return
    assert cut <= after(parse_id(ids[-1]))  # nothing unacknowledged: all ids above stay
    kept = [i for i in ids if parse_id(i) >= cut]
    assert kept == ids[len(ids) - len(kept) :]  # a suffix: the newest, in order
    assert len(kept) >= keep
    if seconds == 0:
        assert len(kept) < keep + retention.step or not keep
        if not keep:
            assert kept == []
    if seconds >= 1e9:
        assert kept == ids  # everything is younger than the age retention
    assert format_id(parse_id(ids[0])) == ids[0]


def test_the_service_metrics_show_each_streams_length_and_memory(
    redis_url: str, events_3k: list[bytes], serve: Callable[..., Any]
) -> None:
    send(redis_url, events_3k, batch=5)
    drain(redis_url, retain_entries=3, retain_seconds=0.0)
    live = serve()
    with httpx.Client(base_url=live.url) as http:
        text = http.get("/metrics").text
    client = redis.Redis.from_url(redis_url)
    keys = Keys("ls", P)
    for p in range(P):
        for stream, key in (("in", keys.input(p)), ("triggers", keys.triggers(p))):
            labels = {"stream": stream, "partition": str(p)}
            assert metric(text, "leadscore_stream_length", **labels) == client.xlen(key)
            memory = metric(text, "leadscore_stream_memory_bytes", **labels)
            assert memory is not None
            assert (memory > 0) == bool(client.exists(key))  # no stream, no memory
    assert metric(text, "leadscore_stream_length", stream="in", partition="0") == 3
