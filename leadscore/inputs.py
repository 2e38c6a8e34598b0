"""Events inputs as the commands name them: a file, a ``.gz`` file or standard input (``-``).

``leadscore run`` (its progress bar), ``send`` and ``explain`` read their inputs through
here, so a path means the same to every command; the file flow's source uses ``open_input``.
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

STDIO = "-"


def open_input(path: str) -> IO[bytes]:
    """A binary stream over a file, a .gz file or standard input (``-``); the caller closes
    it (``close_input``). A missing file raises ``FileNotFoundError``."""
    if path == STDIO:
        return sys.stdin.buffer
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def expand_inputs(paths: list[str]) -> list[str]:
    """``paths`` with each directory replaced by its ``*.jsonl`` and ``*.jsonl.gz`` files in
    name order: an ``--archive`` directory (``YYYY-MM-DD.jsonl.gz``) reads oldest first."""
    out: list[str] = []
    for path in paths:
        if path != "-" and Path(path).is_dir():
            found = [p for p in Path(path).iterdir() if p.name.endswith((".jsonl", ".jsonl.gz"))]
            out += sorted(str(p) for p in found if p.is_file())
        else:
            out.append(path)
    return out


def close_input(stream: IO[bytes]) -> None:
    """Close what ``open_input`` opened; standard input stays open for whoever reads next."""
    if stream is not sys.stdin.buffer:
        stream.close()


def input_size(path: str) -> int:
    """Bytes the source will read: the file size, or a gzip file's uncompressed size."""
    if path.endswith(".gz"):
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)  # ISIZE: uncompressed length mod 2**32 of the last member
            return struct.unpack("<I", fh.read(4))[0]
    return Path(path).stat().st_size


def read_lines(paths: list[str], on_bytes: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The lines of every input in order; with ``on_bytes``, the bytes read are reported to
    it about every MiB and once at the end (a progress bar's feed)."""
    pending = 0
    for path in paths:
        stream = open_input(path)
        try:
            if on_bytes is None:
                yield from stream
                continue
            for line in stream:
                yield line
                pending += len(line)
                if pending >= 1 << 20:
                    on_bytes(pending)
                    pending = 0
        finally:
            close_input(stream)
    if on_bytes is not None:
        on_bytes(pending)
