"""A live deployment's history for publish: the ``--archive`` directory, then the streams.

The retained input streams (``--retain``) hold a deployment's newest input entries; an
``--archive DIR`` (``flows/archive.py``) holds everything the flow accepted, on disk, each gzip
member indexed by partition and input stream entry id. ``leadscore publish --history DIR``
replays, partition by partition, the archived entries the streams no longer hold (below the
oldest retained entry), then the streams: the seam is an entry id, so no event is lost or
scored twice there. A crash archives its last checkpoint's entries again (at least once): an
entry whose id is not above the last one replayed is a repeat and is dropped, whole.

An archive is complete for a partition when it holds every entry the stream lost: the stream
counts them (``entries-added`` minus ``length``), and the index lists every entry a
checkpoint consumed, even those that gave no line (dead letters only), so the two counts
compare. Members written before the index existed cannot be placed: publish refuses them
(``run --events``, ``backtest`` and ``calibrate`` still read them, as lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flows.archive import ArchiveError, archive_files, read_members
from state.generations import PublishError, id_tuple, removed_entries
from state.keys import Keys

NO_INDEX = (
    "{path} holds gzip members written before leadscore recorded input stream entry ids in "
    "the archive (the first at byte {offset}): publish cannot tell which of their events the "
    "retained streams still hold, nor drop the repeats a crash archived. `leadscore run "
    "--events`, backtest and calibrate still read it. To publish from history, score it into "
    "a new deployment (`leadscore send --events {directory} --prefix NEW`, then `leadscore "
    "run --source ... --prefix NEW --archive NEWDIR` with this leadscore), or keep --retain "
    "long enough for the streams to hold the whole history"
)


class HistoryError(PublishError):
    """The archive cannot serve a replay (no index, a gap, unreadable); says what to do."""


class ArchiveHistory:
    """An ``--archive`` directory read by partition and entry id (see the module doc)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = str(directory)
        if not Path(directory).is_dir():
            raise HistoryError(f"--history {directory}: no such directory")
        self.files = archive_files(directory)
        if not self.files:
            raise HistoryError(
                f"--history {directory}: no archive files (YYYY-MM-DD.jsonl.gz) in it; it is "
                "the directory a live flow was given with --archive"
            )

    def unindexed(self) -> str | None:
        """The message refusing the archive if a file starts with a member written without an
        index (before entry ids were archived), else None."""
        for path in self.files:
            try:
                first = next(read_members(path), None)
            except ArchiveError as err:
                return str(err)
            if first is not None and first.parts is None:
                return self._no_index(path, first.offset)
        return None

    def _no_index(self, path: str, offset: int) -> str:
        return NO_INDEX.format(path=path, offset=offset, directory=self.directory)

    def entries(
        self,
        p: int,
        *,
        after: str | None = None,
        before: str | None = None,
        end: str | None = None,
    ) -> Iterator[tuple[str, int, list[bytes]]]:
        """Partition ``p``'s archived input entries above ``after``, below ``before`` and up
        to ``end`` (None: no bound), in stream order, each once: ``(entry id, lines it gave or
        flows.archive.MESSAGES, its lines)``. Memory holds one member."""
        high = id_tuple(after) if after is not None else (-1, -1)
        below = id_tuple(before) if before is not None else None
        top = id_tuple(end) if end is not None else None
        try:
            for path in self.files:
                for member in read_members(path):
                    if member.parts is None:
                        raise HistoryError(self._no_index(path, member.offset))
                    data: bytes | None = None
                    for part in member.parts:
                        if part.p != p or not part.entries:
                            continue
                        if id_tuple(part.entries[-1][0]) <= high:
                            continue  # all repeats: not even inflated
                        if data is None:
                            data = member.data()
                        lines = data[part.start : part.end].split(b"\n")
                        i = 0
                        for entry_id, n in part.entries:
                            mine = lines[i : i + n] if n > 0 else []
                            i += max(n, 0)
                            at = id_tuple(entry_id)
                            if at <= high:
                                continue  # archived again after a crash: replayed already
                            if (below is not None and at >= below) or (
                                top is not None and at > top
                            ):
                                return  # the partition's entries are in order: none follows
                            high = at
                            yield entry_id, n, mine
        except ArchiveError as err:
            raise HistoryError(f"--history {self.directory}: {err}") from err

    def older_lines(self, r: Any, keys: Keys, p: int) -> Iterator[bytes]:
        """The archived lines of ``p``'s entries the stream no longer holds (a preview's
        history: none if nothing was trimmed)."""
        if removed_entries(r, keys, p) == 0:
            return
        for _, _, lines in self.entries(p, before=oldest_retained(r, keys, p)):
            yield from lines


def oldest_retained(r: Any, keys: Keys, p: int) -> str | None:
    """The id of ``p``'s oldest retained input entry (None: the stream holds none)."""
    first = r.xrange(keys.input(p), count=1)
    return first[0][0].decode() if first else None
