"""Loading events files into the live flow's input streams (``leadscore send``).

The command shows progress and reports; this module opens the store, settles the partition
count and sends. Tests call it without a subprocess.
"""

from __future__ import annotations

from collections.abc import Callable

from leadscore.inputs import read_lines
from state.redis_store import NotInitialized, RedisStore, SendResult

DEFAULT_PARTITIONS = 16  # a first send into an empty Redis, as the flow's default


def send_files(
    url: str,
    paths: list[str],
    *,
    prefix: str = "ls",
    cluster: bool = False,
    partitions: int | None = None,
    batch: int = 100,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[int, SendResult]:
    """Send the events lines of ``paths`` (``-``: standard input) to their partitions.

    ``partitions`` defaults to the count in ``{prefix}:meta``, else 16; a different count
    than the stored one raises ``StoreError``. Returns the count used and what was sent.
    """
    with RedisStore(url, prefix=prefix, cluster=cluster) as store:
        if partitions is None:
            try:
                partitions = store.keys.partitions
            except NotInitialized:
                partitions = DEFAULT_PARTITIONS
        store.ensure(partitions)
        return partitions, store.send_events(read_lines(paths, on_bytes), batch=batch)
