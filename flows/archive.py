"""``--archive DIR``: the live flow's accepted input, kept as compressed JSONL files by day.

The input streams keep a retention (``--retain``) in Redis memory, ~240 MiB per million
events; history beyond that belongs on disk. Every checkpoint appends the events it accepted
(valid, with an action the rules know; dead letters are not archived) to
``DIR/YYYY-MM-DD.jsonl.gz`` (the UTC day of the checkpoint) as ONE gzip member written with
ONE ``write`` on a file opened ``O_APPEND``: concurrent worker threads and processes of one
flow never interleave their members (Linux appends a write to a regular file at its end,
whole), and gzip readers (``gzip.open``, ``zcat``, leadscore's ``--events``) read every member
in turn, so a day's file is the concatenation of its checkpoints' input.

Lines are written as they arrived (an event without ``ts`` gets the time the flow read it,
the time it was scored at), before the checkpoint that consumes them commits:
a crash between the two archives them again when the input is replayed (at least once). A
replay drops the repeats of events that carry an ``id`` (the engine's ``recent_ids``), so give
events ids. A contact's events are in order across members and files (one partition, its
checkpoints in order; files by name). Nothing is fsynced: a killed flow loses nothing of the
archive, a power loss can lose the last checkpoints' members (Redis still has them for the
retention).
"""

from __future__ import annotations

import datetime as dt
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from flows import metrics
from leadscore.events import format_ts


def archive_line(raw: bytes, event: Any) -> bytes:
    """The line to archive for an accepted event: as it arrived, or, when it had no ``ts``
    (the flow stamped it with the time it read it), with that time, so a replay scores it at
    the same moment."""
    line = raw.strip()
    if b'"ts"' in line:
        return line
    doc = orjson.loads(line)
    if "ts" in doc:
        return line
    doc["ts"] = format_ts(event.ts)
    return orjson.dumps(doc)


def day_file(directory: Path, now: float) -> Path:
    """The archive file for the UTC day of ``now``."""
    return directory / f"{dt.datetime.fromtimestamp(now, dt.UTC):%Y-%m-%d}.jsonl.gz"


def gzip_member(data: bytes, level: int = 6) -> bytes:
    """``data`` as one complete gzip member (header, deflate stream, CRC and size)."""
    packer = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip container
    return packer.compress(data) + packer.flush()


class InputArchive:
    """Appends accepted input lines to the day's file, one gzip member per call."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def append(self, lines: Sequence[bytes], now: float) -> int:
        """Write ``lines`` (no trailing newlines) as one member; the bytes written."""
        if not lines:
            return 0
        member = gzip_member(b"\n".join(lines) + b"\n")
        fd = os.open(day_file(self.directory, now), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(member)
            while view:  # a regular file takes it in one write; loop only for safety
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        metrics.ARCHIVED_EVENTS.inc(len(lines))
        metrics.ARCHIVED_BYTES.inc(len(member))
        return len(member)


def archive_files(directory: str | Path) -> list[str]:
    """The archive's day files, oldest first (the order a replay must read them in)."""
    return sorted(str(p) for p in Path(directory).glob("*.jsonl.gz") if p.is_file())
