"""The garbage collector policy of running flows (flows.heap)."""

from __future__ import annotations

import gc
import weakref

import pytest

from flows import heap


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
