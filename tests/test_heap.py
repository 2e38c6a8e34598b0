"""The garbage collector policy of running flows (flows.heap)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
from bytewax.testing import run_main

from flows import heap
from flows.scoring import FlowConfig, build_flow
from leadscore.generate import generate_events

EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "examples" / "rules.yaml"


class Node:
    """A cycle: only the collector frees it, never reference counting."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def released() -> object:
    heap.release_heap()
    yield
    heap.release_heap()


def test_a_run_freezes_survivors_and_hands_everything_back() -> None:
    thresholds = gc.get_threshold()
    heap.settle_heap()
    assert gc.get_threshold()[2] > 10**6  # no automatic full collections while it runs
    assert gc.get_threshold()[0] == max(thresholds[0], heap.YOUNG)  # fewer young ones
    assert gc.get_freeze_count() > 0
    heap.release_heap()
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0


def test_a_cycle_that_dies_frozen_is_collected_by_the_periodic_full_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(heap.time, "monotonic", lambda: clock[0])
    node = Node()
    ref = weakref.ref(node)
    heap.settle_heap()  # the run starts: node survives and is frozen
    del node
    clock[0] += heap.FREEZE_EVERY
    heap.settle_heap()  # a young collection does not see frozen objects
    assert ref() is not None
    clock[0] += heap.FULL_EVERY
    heap.settle_heap()  # FULL_EVERY has passed: the whole heap is collected once
    assert ref() is None
    assert gc.get_freeze_count() > 0  # and what survived is frozen again


def test_settling_more_often_than_freeze_every_does_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heap, "FREEZE_EVERY", 60.0)
    heap.settle_heap()
    frozen = gc.get_freeze_count()
    keep = [Node() for _ in range(100)]
    heap.settle_heap()
    assert gc.get_freeze_count() == frozen
    assert keep


def test_a_freeze_walks_nothing_until_full_every(monkeypatch: pytest.MonkeyPatch) -> None:
    """A freeze is a splice of the collector's lists: no collection, so no pause that grows
    with the objects alive (the batch in flight) every FREEZE_EVERY."""
    clock = [1000.0]
    monkeypatch.setattr(heap.time, "monotonic", lambda: clock[0])
    collected: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    heap.settle_heap()  # the run starts
    gc.callbacks.append(seen)
    try:
        for _ in range(3):
            keep = [Node() for _ in range(50)]
            clock[0] += heap.FREEZE_EVERY
            heap.settle_heap()
            assert keep
        assert collected == []
        clock[0] += heap.FULL_EVERY
        heap.settle_heap()
        assert collected == [2]  # the periodic full collection, once
    finally:
        gc.callbacks.remove(seen)


def test_a_file_run_parses_its_first_chunk_with_the_collector_held(tmp_path: Path) -> None:
    """The source settles the heap before the parse step sees a chunk: under CPython's own
    thresholds the first chunk's events (a dict each) were walked by young collections
    before the first batch reached a shard logic (8 of them here, ~30 at 16,384 lines)."""
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in generate_events(500, 5000, 3)))
    flow = build_flow(
        FlowConfig(rules=str(EXAMPLE_RULES), events=[str(events)], out=str(tmp_path / "out"))
    )
    collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    thresholds = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # CPython's defaults: the run holds the collector itself
    gc.callbacks.append(seen)
    try:
        run_main(flow)
    finally:
        gc.callbacks.remove(seen)
        gc.set_threshold(*thresholds)
    assert (tmp_path / "out" / "contacts.jsonl").stat().st_size > 0
    assert len(collections) <= 1  # 5,000 events' dicts at 700 a collection: 7 or more before
    assert gc.get_freeze_count() == 0  # and the run handed the heap back
