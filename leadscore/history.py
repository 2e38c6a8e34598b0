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

The archive is read once: each member's index routes its partitions' entries (repeats
dropped) to one spool file per partition (gzip level 1, in a temporary directory deleted with
the object), and a partition's replay reads only its spool. Reading the archive once per
partition instead inflated every member P times (a live flow's members hold most
partitions): 0.67x the streams' rebuild rate against 0.93x (bench/README.md). A later read
first adds what the archive gained since (files are append-only: each is read on from where
the last read stopped; a member still being written is left for the next read).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from flows.archive import ArchiveError, Truncated, archive_files, read_members
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


SPOOL_BYTES = 1 << 20
"""Bytes a partition's spool buffer holds before it is written (memory: P such buffers)."""


class HistoryError(PublishError):
    """The archive cannot serve a replay (no index, a gap, unreadable); says what to do."""


class ArchiveHistory:
    """An ``--archive`` directory read by partition and entry id (see the module doc)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = str(directory)
        self._dir: Path | None = None  # the spool, made at the first read
        self._cleanup: Callable[[], Any] = lambda: None
        self._read: dict[str, int] = {}  # archive file -> the byte its read reached
        self._last: dict[int, tuple[int, int]] = {}  # partition -> its last entry spooled
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
        flows.archive.MESSAGES, its lines)``. Read from the spool, which is brought up to
        date first unless it already reaches the bound."""
        high = id_tuple(after) if after is not None else (-1, -1)
        below = id_tuple(before) if before is not None else None
        top = id_tuple(end) if end is not None else None
        bound = below if below is not None else top
        last = self._last.get(p)
        if bound is None or last is None or last < bound:
            self._extend()
        path = self._spool_path(p)
        if not path.exists():
            return
        with gzip.open(path, "rb") as fh:
            for head in iter(fh.readline, b""):
                entries, size = orjson.loads(head[1:])
                data = fh.read(size)
                first, last = id_tuple(entries[0][0]), id_tuple(entries[-1][0])
                if last <= high:
                    continue
                lines = data.split(b"\n")
                inside = first > high and (below is None or last < below)
                if inside and (top is None or last <= top):  # the whole record
                    i = 0
                    for entry_id, n in entries:
                        k = n if n > 0 else 0
                        yield entry_id, n, lines[i : i + k]
                        i += k
                    continue
                i = 0
                for entry_id, n in entries:
                    k = n if n > 0 else 0
                    mine = lines[i : i + k]
                    i += k
                    at = id_tuple(entry_id)
                    if at <= high:
                        continue
                    if (below is not None and at >= below) or (top is not None and at > top):
                        return
                    yield entry_id, n, mine

    def _spool_path(self, p: int) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="leadscore-history-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)
        return self._dir / f"{p}.gz"

    def _extend(self) -> None:
        """Read what the archive gained since the last call (every file from where it was
        left; new files), once, into one spool file per partition: its entries in stream
        order, each once (a repeat, an id not above the partition's last, is dropped). A
        member still being written ends the file's read until the next call."""
        buffers: dict[int, tuple[list[tuple[str, int]], list[bytes]]] = {}
        sizes: dict[int, int] = {}
        try:
            for path in archive_files(self.directory):
                start = self._read.get(path, 0)
                if start and start >= os.path.getsize(path):
                    continue
                try:
                    for member in read_members(path, start):
                        if member.parts is None:
                            raise HistoryError(self._no_index(path, member.offset))
                        data: bytes | None = None
                        for part in member.parts:
                            p, entries = part.p, part.entries
                            if not entries:
                                continue
                            last = self._last.get(p, (-1, -1))
                            high = id_tuple(entries[-1][0])
                            if high <= last:
                                continue  # all repeats: not even inflated
                            if data is None:
                                data = member.data()
                            chunk = data[part.start : part.end]
                            if len(entries) > 1 and id_tuple(entries[0][0]) <= last:
                                entries, chunk = _newer(entries, chunk, last)
                            self._last[p] = high
                            ids, chunks = buffers.setdefault(p, ([], []))
                            ids += entries
                            chunks.append(chunk)
                            sizes[p] = sizes.get(p, 0) + len(chunk)
                            if sizes[p] >= SPOOL_BYTES:
                                self._write(p, *buffers.pop(p))
                                sizes[p] = 0
                        self._read[path] = member.end
                except Truncated:
                    pass  # being written (or cut by a power loss): read again next time
            for p, (ids, chunks) in buffers.items():
                self._write(p, ids, chunks)
        except ArchiveError as err:
            raise HistoryError(f"--history {self.directory}: {err}") from err

    def _write(self, p: int, ids: list[tuple[str, int]], chunks: list[bytes]) -> None:
        """One spool record: its entries and their lines' bytes (a line, then the lines)."""
        data = b"".join(chunks)
        with gzip.open(self._spool_path(p), "ab", compresslevel=1) as fh:
            fh.write(b"#" + orjson.dumps([ids, len(data)]) + b"\n" + data)

    def close(self) -> None:
        """Delete the spool (also done when the object goes, or at exit)."""
        if self._dir is not None:
            self._cleanup()
            self._dir = None

    def older_lines(self, r: Any, keys: Keys, p: int) -> Iterator[bytes]:
        """The archived lines of ``p``'s entries the stream no longer holds (a preview's
        history: none if nothing was trimmed)."""
        if removed_entries(r, keys, p) == 0:
            return
        for _, _, lines in self.entries(p, before=oldest_retained(r, keys, p)):
            yield from lines


def _newer(
    entries: list[tuple[str, int]], chunk: bytes, last: tuple[int, int]
) -> tuple[list[tuple[str, int]], bytes]:
    """The entries of a part above ``last`` and their lines (a crash archived the others
    again)."""
    lines = chunk.split(b"\n")
    kept: list[tuple[str, int]] = []
    out: list[bytes] = []
    i = 0
    for entry_id, n in entries:
        k = n if n > 0 else 0
        if id_tuple(entry_id) > last:
            kept.append((entry_id, n))
            out += lines[i : i + k]
        i += k
    return kept, b"".join(line + b"\n" for line in out)


def oldest_retained(r: Any, keys: Keys, p: int) -> str | None:
    """The id of ``p``'s oldest retained input entry (None: the stream holds none)."""
    first = r.xrange(keys.input(p), count=1)
    return first[0][0].decode() if first else None
