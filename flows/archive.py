"""``--archive DIR``: the live flow's accepted input, kept as compressed JSONL files by day.

The input streams keep a retention (``--retain``) in Redis memory, ~240 MiB per million
events; history beyond that belongs on disk. Every checkpoint appends the events it accepted
(valid, with an action the rules know; dead letters are not archived) to
``DIR/YYYY-MM-DD.jsonl.gz`` (the UTC day of the checkpoint) as gzip members written with
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

**Where each line came from.** Every member carries an index in its gzip header's extra
field (subfield ``LS``, RFC 1952 ``FEXTRA``, which every gzip reader skips): zlib-compressed
JSON ``{"v": 1, "z": DEFLATE_BYTES, "parts": [[p, start, end, [[entry_id, lines], ...]],
...]}``,
for each partition of the checkpoint the byte range of its lines in the member's data and
every input stream entry it consumed, in stream order, with how many lines each gave (0: all
dead letters; -1: the flow's own hand-over messages, not archived). ``leadscore publish
--history DIR`` reads it (``leadscore/history.py``) to replay the archive up to where the
retained streams take over, drop the repeats of a crash's re-archiving by entry id, and tell
a complete archive from one with gaps. Members written before the index (no ``LS`` subfield)
read as before everywhere except there.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from flows import metrics
from leadscore.events import format_ts

INDEX_ID = b"LS"
"""The gzip extra subfield id (SI1 SI2) of leadscore's member index."""

INDEX_VERSION = 1

INDEX_MAX = 60_000
"""Bytes of index JSON per member (a gzip extra field holds at most 65,535): a checkpoint
whose index would be longer is written as several members (still one ``write``)."""

MESSAGES = -1
"""An index entry's line count for an entry of hand-over messages (not archived)."""

_FTEXT, _FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 1, 2, 4, 8, 16


class ArchiveError(ValueError):
    """An archive file that cannot be read (truncated, not gzip); the message names it."""


class Truncated(ArchiveError):
    """A member that ends before its end: cut by a power loss, or still being written."""


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


@dataclass
class Archived:
    """One partition's part of a checkpoint: every input entry it consumed, in stream order,
    with how many of ``lines`` each gave (``MESSAGES``: hand-over messages, none)."""

    p: int
    entries: list[tuple[str, int]] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)


def indexed_member(parts: Sequence[Archived], level: int = 6) -> bytes:
    """``parts``' lines as ONE gzip member whose header carries their index (see above)."""
    chunks: list[bytes] = []
    index: list[list[Any]] = []
    offset = 0
    for part in parts:
        data = b"\n".join(part.lines) + b"\n" if part.lines else b""
        chunks.append(data)
        index.append([part.p, offset, offset + len(data), part.entries])
        offset += len(data)
    data = b"".join(chunks)
    packer = zlib.compressobj(level, zlib.DEFLATED, -15)  # raw deflate: the header is ours
    body = packer.compress(data) + packer.flush()
    doc = zlib.compress(orjson.dumps({"v": INDEX_VERSION, "z": len(body), "parts": index}))
    extra = INDEX_ID + struct.pack("<H", len(doc)) + doc
    header = b"\x1f\x8b\x08" + bytes([_FEXTRA]) + b"\0\0\0\0\0\xff" + struct.pack("<H", len(extra))
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return header + extra + body + trailer


def _members_of(parts: Sequence[Archived]) -> Iterator[list[Archived]]:
    """``parts`` grouped into members whose index stays under INDEX_MAX (a part with more
    entries than fit is split, its lines going with their entries)."""
    if sum(len(part.entries) for part in parts) * 40 <= INDEX_MAX:  # the usual case
        yield list(parts)
        return
    group: list[Archived] = []
    size = 0
    for part in parts:
        start = cut = 0
        for i, (entry_id, _) in enumerate(part.entries):
            cost = len(entry_id) + 12
            if size + cost > INDEX_MAX:  # the entry does not fit: close the member
                if i > start:
                    n = sum(max(c, 0) for _, c in part.entries[start:i])
                    group.append(Archived(part.p, part.entries[start:i], part.lines[cut : cut + n]))
                    start, cut = i, cut + n
                if group:
                    yield group
                group, size = [], 0
            size += cost
        size += 40  # the part's own fields
        if start < len(part.entries):
            group.append(Archived(part.p, part.entries[start:], part.lines[cut:]))
    if group:
        yield group


class InputArchive:
    """Appends accepted input to the day's file: one write per call, of indexed members."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def append(self, parts: Sequence[Archived], now: float) -> int:
        """Write ``parts`` (one per partition of a checkpoint round); the bytes written."""
        parts = [part for part in parts if part.entries]
        if not parts:
            return 0
        data = b"".join(indexed_member(group) for group in _members_of(parts))
        fd = os.open(day_file(self.directory, now), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:  # a regular file takes it in one write; loop only for safety
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        metrics.ARCHIVED_EVENTS.inc(sum(len(part.lines) for part in parts))
        metrics.ARCHIVED_BYTES.inc(len(data))
        return len(data)


def archive_files(directory: str | Path) -> list[str]:
    """The archive's day files, oldest first (the order a replay must read them in)."""
    return sorted(str(p) for p in Path(directory).glob("*.jsonl.gz") if p.is_file())


# --------------------------------------------------------------------------- reading


@dataclass
class Part:
    """One partition's part of an indexed member."""

    p: int
    start: int
    end: int
    entries: list[tuple[str, int]]


@dataclass
class Member:
    """A gzip member of an archive file; ``parts`` None: written without an index."""

    path: str
    offset: int  # of the member's header in the file
    parts: list[Part] | None
    _fh: BinaryIO | None = None
    _body: tuple[int, int] = (0, 0)  # where its deflate data starts, and its length

    @property
    def end(self) -> int:
        """Where the next member starts."""
        return self._body[0] + self._body[1] + 8

    def data(self) -> bytes:
        """The member's uncompressed data (its CRC checked)."""
        assert self._fh is not None and self.parts is not None
        start, size = self._body
        self._fh.seek(start)
        raw = self._fh.read(size + 8)
        if len(raw) < size + 8:
            raise Truncated(f"{self.path}: the member at byte {self.offset} is truncated")
        try:
            data = zlib.decompress(raw[:size], -15)
        except zlib.error as err:
            raise ArchiveError(f"{self.path}: the member at byte {self.offset}: {err}") from err
        crc, length = struct.unpack("<II", raw[size:])
        if crc != zlib.crc32(data) or length != len(data) & 0xFFFFFFFF:
            raise ArchiveError(f"{self.path}: the member at byte {self.offset} is corrupt (CRC)")
        return data


def _skip_zero_terminated(fh: BinaryIO) -> None:
    while (byte := fh.read(1)) and byte != b"\0":
        pass


def read_members(path: str, start: int = 0) -> Iterator[Member]:
    """The members of one archive file from byte ``start`` in order, their data not read
    (``Member.data`` inflates one; the others are skipped unread). A member without an index
    ends the iteration (its end is not known without inflating)."""
    with open(path, "rb") as fh:
        fh.seek(start)
        while True:
            offset = fh.tell()
            head = fh.read(10)
            if not head:
                return
            if len(head) < 10:
                raise Truncated(f"{path}: the member at byte {offset} is truncated")
            if head[:3] != b"\x1f\x8b\x08":
                raise ArchiveError(f"{path}: byte {offset} does not start a gzip member")
            flags = head[3]
            index: dict[str, Any] | None = None
            if flags & _FEXTRA:
                raw = fh.read(2)
                (xlen,) = struct.unpack("<H", raw) if len(raw) == 2 else (1 << 17,)
                extra = fh.read(xlen)
                if len(extra) < xlen:
                    raise Truncated(f"{path}: the member at byte {offset} is truncated")
                i = 0
                while i + 4 <= len(extra):
                    (size,) = struct.unpack("<H", extra[i + 2 : i + 4])
                    if extra[i : i + 2] == INDEX_ID:
                        try:
                            index = orjson.loads(zlib.decompress(extra[i + 4 : i + 4 + size]))
                        except (zlib.error, orjson.JSONDecodeError) as err:
                            raise ArchiveError(
                                f"{path}: the member at byte {offset} has an unreadable index"
                            ) from err
                    i += 4 + size
            if index is None or index.get("v") != INDEX_VERSION:
                yield Member(path, offset, None)
                return
            if flags & _FNAME:
                _skip_zero_terminated(fh)
            if flags & _FCOMMENT:
                _skip_zero_terminated(fh)
            if flags & _FHCRC:
                fh.read(2)
            body = fh.tell()
            # entries stay [id, lines] lists as parsed: unpacked like tuples, not copied
            parts = [Part(p, a, b, ids) for p, a, b, ids in index["parts"]]
            yield Member(path, offset, parts, fh, (body, int(index["z"])))
            fh.seek(body + int(index["z"]) + 8)
