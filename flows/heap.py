"""The garbage collector while a flow runs: freeze what survives, no full collections.

Python's full (generation 2) collection walks every tracked object. A flow keeps tens of
thousands of contact states, so one took ~100 ms at 200k events (11 of them: 10% of a run),
and every event behind it waited: the periodic 100-300 ms stalls of the live flow, and ~15%
of a file replay's wall time. So while a flow runs, every ``FREEZE_EVERY`` seconds its
workers ``gc.freeze()`` the heap (a list splice: nothing is walked), and automatic full
collections are off: whatever is old enough to reach generation 2 is frozen within
``FREEZE_EVERY`` anyway. Young collections still run, every ``YOUNG`` allocations.

Frozen objects are still freed by reference counting (contact states hold no cycles); only a
cycle that dies after being frozen, or after the last young collection before a freeze,
waits (~25 objects over a 1M-event run). A run that
lasts, a live flow, gets one full collection of the whole heap every ``FULL_EVERY`` seconds,
so such cycles cannot pile up for days; each costs one pause of the length above. At the
end of a run (:func:`release_heap`) the collector gets its thresholds and the heap back.

One module for every flow (and the benchmark's plain loop), so a process holds one copy of
this state whichever flows it runs.
"""

from __future__ import annotations

import gc
import threading
import time

FREEZE_EVERY = 0.2
"""Seconds between two freezes of the surviving heap (see the module's docstring)."""

YOUNG = 100_000
"""The youngest generation's threshold while a run lasts (CPython's default is 700).

Most of what an event allocates (its dicts, effects, records) dies by reference counting
within its batch; a collection every 700 allocations walks those still alive and moves
them to generation 1, to be walked again. At 20,000 most of them are gone first: callgrind,
the file flow's shard logic over 30k lines, 1.35k fewer instructions per line (3%). With
16,384-line input chunks a collection still walks the chunk in flight; 100,000: young
collections 60-100 ms -> 13 ms of CPU on 1M events (gc callbacks), peak RSS unchanged.

Since freezes no longer collect first, it hardly matters: ``gc.freeze()`` zeroes the young
count, and a file run allocates far fewer than 100,000 surviving containers in one
``FREEZE_EVERY`` (~20k events), so no young collection runs after the first freeze. On
1M events (gc callbacks) every collection of the run came before it, while the first chunk
was parsed under CPython's 700 (32, ~4 ms; 220 instructions an event of a 100k-event
callgrind count); 1,000,000 gave the same 32 and the same peak RSS. The file source now
settles the heap before each chunk (``flows.io``), so a file run has none at all."""

FULL_EVERY = 600.0
"""Seconds between two full collections of the whole heap while a run lasts."""

_INF = float("inf")
_frozen_at = -_INF
_full_at = _INF  # set when a run starts to hold the collector
_thresholds: tuple[int, int, int] | None = None  # the collector's, while a run holds them
_lock = threading.Lock()  # worker threads of one process share the collector


def settle_heap() -> None:
    """Freeze the surviving heap at most every FREEZE_EVERY seconds; cheap to call often."""
    global _frozen_at, _full_at, _thresholds
    now = time.monotonic()
    if now - _frozen_at < FREEZE_EVERY:
        return
    with _lock:
        if now - _frozen_at < FREEZE_EVERY:
            return  # another worker thread settled it while this one waited
        _frozen_at = now
        if _thresholds is None:
            _thresholds = gc.get_threshold()
            # Fewer young collections, and no automatic full ones.
            gc.set_threshold(max(_thresholds[0], YOUNG), _thresholds[1], 1 << 30)
            _full_at = now + FULL_EVERY
        if now >= _full_at:
            _full_at = now + FULL_EVERY
            gc.unfreeze()
            gc.collect()
        # No young collection first: it walked every object alive since the last freeze,
        # the batch in flight included (its events' dicts), ~4.5 ms per freeze and ~4% of a
        # file run's CPU at 1M events. The young collections the threshold triggers free
        # almost all the cycles there are (620 of 644 objects in that run); one that dies
        # after the last of them is frozen and waits for FULL_EVERY (or the end).
        gc.freeze()


def release_heap() -> None:
    """Hand the frozen heap and the thresholds back to the collector (end of a run)."""
    global _frozen_at, _full_at, _thresholds
    with _lock:
        _frozen_at = -_INF
        _full_at = _INF
        if _thresholds is not None:
            gc.set_threshold(*_thresholds)
            _thresholds = None
        gc.unfreeze()
