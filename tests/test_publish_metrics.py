"""What a Prometheus scrape of `leadscore publish --metrics-port` shows while a publish runs
(stopped at a step) and once it is done: partitions, entries and events replayed, the
rate, the ETA, the phase and the switch firings (a real publish process against a real
redis-server, scraped over HTTP)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis_server import free_port
from test_cli_redis import RULES
from test_publish_live import P, batch, drain, fired, new_rules, paused_publish, send

from state.keys import Keys, partition_of


def scrape(port: int) -> dict[str, float]:
    """Every ``leadscore_publish_*`` sample; the phase as ``leadscore_publish_phase:STATE``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("leadscore_publish"):
                continue
            state = sample.labels.get("leadscore_publish_phase")
            samples[sample.name + (f":{state}" if state else "")] = sample.value
    return samples


@pytest.mark.slow
def test_a_scrape_shows_the_progress_during_and_after_a_publish(
    redis_url: str, tmp_path: Path
) -> None:
    lines = batch(0)
    history = send(redis_url, tmp_path, lines, "history")
    drain(redis_url, RULES)
    new = new_rules(tmp_path)
    r = redis.Redis.from_url(redis_url)
    keys = Keys("ls", P)
    entries = [int(r.xlen(keys.input(p))) for p in range(P)]
    events = Counter(partition_of(orjson.loads(line)["contact"], P) for line in lines)

    # stopped after partitions 0 and 1 are rebuilt
    port = free_port()
    pub = paused_publish(
        redis_url, "--rules", str(new), "--yes", "--metrics-port", str(port), step="rebuilt:1"
    )
    try:
        during = scrape(port)
    finally:
        pub.kill()
        pub.wait(10)
    assert during["leadscore_publish_partitions"] == P
    assert during["leadscore_publish_partitions_done"] == 2
    assert during["leadscore_publish_entries"] == sum(entries)
    assert during["leadscore_publish_entries_replayed"] == entries[0] + entries[1]
    assert during["leadscore_publish_events_replayed"] == events[0] + events[1]
    assert during["leadscore_publish_events_per_second"] > 0
    eta = during["leadscore_publish_eta_seconds"]
    assert math.isfinite(eta) and eta > 0  # entries of partitions 2 and 3 are left
    assert during["leadscore_publish_phase:rebuild"] == 1
    assert during["leadscore_publish_phase:done"] == 0
    assert during["leadscore_publish_switch_firings"] == 0

    # run again, stopped once it is done: the resumed publish counts what was rebuilt before
    port = free_port()
    pub = paused_publish(
        redis_url, "--rules", str(new), "--yes", "--metrics-port", str(port), step="done"
    )
    try:
        after = scrape(port)
    finally:
        pub.kill()
        pub.wait(10)
    assert r.hget("ls:meta", "rules_version") == b"2" and r.exists("ls:publish") == 0
    assert after["leadscore_publish_partitions_done"] == P
    assert after["leadscore_publish_entries_replayed"] == sum(entries)
    assert after["leadscore_publish_events_replayed"] == len(lines)
    assert after["leadscore_publish_eta_seconds"] == 0
    assert after["leadscore_publish_phase:done"] == 1
    assert after["leadscore_publish_phase:rebuild"] == 0
    differences = fired(new, [history], tmp_path, "fn") - fired(RULES, [history], tmp_path, "fo")
    assert differences and after["leadscore_publish_switch_firings"] == len(differences)
    assert after["leadscore_publish_seconds"] > 0
