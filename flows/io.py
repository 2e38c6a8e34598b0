"""File and standard-stream sources and sinks for the embedded default.

The source hands out raw lines with their position, so a line that fails to parse can be
dead-lettered with where it came from. The sink has one partition per output kind, so each
output file has exactly one writer however many workers or processes run the flow.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from flows.heap import settle_heap
from leadscore.inputs import open_input

STDIO = "-"
# Sorted: Bytewax routes by index into the sorted list of partitions.
OUTPUT_KINDS = ("changes", "contacts", "dead_letter", "summary", "triggers")

# Called with the number of bytes read, from whichever worker read them; flows.runner sets it
# for `leadscore run`'s progress bar. Module-level because Bytewax builds partitions itself.
progress_hook: Callable[[int], None] | None = None


@dataclass
class RunControl:
    """How a run with its one worker in the main thread ends early (``flows.runner``).

    There Bytewax turns an exception raised inside a step into a Rust panic on standard
    error, so while ``active`` the file partitions do not raise: Ctrl-C sets ``stop``, an
    input or output error is kept in ``failure`` (and sets ``stop``), every file partition
    ends at its next chunk as at the end of its file, and the runner raises after the flow.
    """

    active: bool = False
    stop: bool = False
    failure: BaseException | None = None

    def fail(self, err: BaseException) -> None:
        if not self.active:
            raise err
        if self.failure is None:
            self.failure = err
        self.stop = True


control = RunControl()

LINES_PER_CHUNK = 16384
"""Lines a file partition hands on per chunk. Every chunk costs per shard, not per line: the
parser's 64 lists and ticks, Bytewax routing them, each shard logic's batch call, timers
and drain. Callgrind, ``leadscore run`` on 100k events (whole process, compiled): 2,048
lines 29.2k instructions per event, 8,192 28.4k, 16,384 28.1k, 32,768 27.9k; peak RSS 77, 82,
91 and 105 MB. A replay's outputs do not depend on it (timers fire at their due times), but
its timers fire between chunks: larger chunks write a timer's record later among the others.
Read when a source is built (tests set it smaller to see timers fire mid-file)."""
STDIN_LINES_PER_CHUNK = 2048  # a chunk waits for its lines: a pipe's come as they are written

# (input partition, path, line number of the first line, lines) or lines=None when done; each
# line as the file gave it, with its line end (leadscore.typed.unended strips it)
Chunk = tuple[int, str, int, list[bytes] | None]


class _LinesPartition(StatefulSourcePartition[Chunk, int]):
    """Reads one file in chunks; ends with a ``lines=None`` chunk so the clock can move on."""

    def __init__(
        self, part: int, path: str, batch_size: int, resume_line: int | None, settle: bool = False
    ) -> None:
        self._part = part
        self._settle = settle
        self._path = path
        self._batch_size = batch_size
        self._line = 0
        self._done = False
        self._file: IO[bytes] | None = None
        try:
            self._file = open_input(path)
            for _ in range(resume_line or 0):
                self._file.readline()
                self._line += 1
        except (OSError, EOFError) as err:
            control.fail(err)

    def next_batch(self) -> list[Chunk]:
        if self._done:
            raise StopIteration
        if control.stop or self._file is None:
            return self._end()
        if self._settle:
            # Before the parse step sees the chunk: the first one would otherwise be parsed
            # under CPython's own thresholds, ~30 collections walking its events (flows.heap).
            settle_heap()
        # islice over the file and map/all below keep the per-line work in C.
        try:
            raw = list(islice(self._file, self._batch_size))
        except (OSError, EOFError) as err:  # EOFError: a truncated .gz
            control.fail(err)
            return self._end()
        if len(raw) < self._batch_size:
            self._done = True
        first = self._line + 1
        self._line += len(raw)
        if progress_hook is not None and raw:
            progress_hook(sum(map(len, raw)))
        # The lines keep their line ends: the parse step strips only the few it dead-letters
        # (typed.parse_events(..., ended=True)); a copy of each line cost ~400 instructions.
        lines = raw
        # Blank lines carry nothing; every other line becomes an event or a dead letter.
        batch: list[Chunk] = []
        if lines:
            # isspace, not strip: a line with its line end would be copied by strip. A file's
            # line is never empty (it has at least its line end, or it is not a line).
            if any(map(bytes.isspace, lines)):
                numbered = [(first + i, line) for i, line in enumerate(lines) if not line.isspace()]
                for number, line in numbered:
                    batch.append((self._part, self._path, number, [line]))
            else:
                batch.append((self._part, self._path, first, lines))
        if self._done:
            batch.append((self._part, self._path, self._line, None))
        return batch

    def _end(self) -> list[Chunk]:
        """Ended early (``control``): the last chunk, as at the end of the file."""
        self._done = True
        return [(self._part, self._path, self._line, None)]

    def snapshot(self) -> int:
        return self._line

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdin.buffer:
            self._file.close()


class JsonlSource(FixedPartitionedSource[Chunk, int]):
    """One partition per input file (or standard input), plain or gzip.

    With ``settle``, each partition settles the garbage collector (``flows.heap``) before
    every chunk it reads, as the file flow's shard logics do after every batch; they hand it
    back at the end (``ShardLogic.on_eof``).
    """

    def __init__(
        self, paths: list[str], batch_size: int | None = None, *, settle: bool = False
    ) -> None:
        if not paths:
            raise ValueError("no input: give at least one events file, or - for standard input")
        for path in paths:
            if path != STDIO and not Path(path).is_file():
                raise FileNotFoundError(f"events file not found: {path}")
        self._paths = paths
        self._batch_size = LINES_PER_CHUNK if batch_size is None else batch_size
        self._settle = settle

    def list_parts(self) -> list[str]:
        return [f"{i}:{path}" for i, path in enumerate(self._paths)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LinesPartition:
        index, path = for_part.split(":", 1)
        # Standard input may be a pipe fed as things happen: its chunks stay small.
        size = self._batch_size if path != STDIO else min(self._batch_size, STDIN_LINES_PER_CHUNK)
        return _LinesPartition(int(index), path, size, resume_state, self._settle)


# --------------------------------------------------------------------------- sinks


class _KindPartition(StatefulSinkPartition[bytes, None]):
    """One output kind's stream; ``None`` (it could not be opened) drops what comes."""

    def __init__(self, stream: IO[bytes] | None, kind: str, close: bool, prefix: bool) -> None:
        self._stream = stream
        self._close = close
        # On standard output every output shares one stream, so each line says which it is,
        # under a key no record uses.
        self._prefix = b'{"output":"' + kind.encode() + b'",' if prefix else b""

    def write_batch(self, items: list[bytes]) -> None:
        if self._stream is None:
            return
        try:
            for chunk in items:
                if self._prefix:
                    lines = chunk.splitlines()
                    chunk = b"".join(self._prefix + line[1:] + b"\n" for line in lines)
                self._stream.write(chunk)
        except OSError as err:  # a full disk, a closed pipe
            self._drop(err)

    def _drop(self, err: OSError) -> None:
        stream, self._stream = self._stream, None
        if self._close and stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
        control.fail(err)

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.flush()
            if self._close:
                self._stream.close()
        except OSError as err:
            self._drop(err)


class _SummaryPartition(StatefulSinkPartition[bytes, None]):
    """Adds up every shard's counters into one summary.json."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._totals: dict[str, Any] = {}

    def write_batch(self, items: list[bytes]) -> None:
        for chunk in items:
            for line in chunk.splitlines():
                merge_summary(self._totals, orjson.loads(line))

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        data = orjson.dumps(self._totals, option=orjson.OPT_SORT_KEYS)
        try:
            if self._path is None:
                sys.stdout.buffer.write(b'{"output":"summary",' + data[1:] + b"\n")
                sys.stdout.buffer.flush()
            else:
                self._path.write_bytes(data + b"\n")
        except OSError as err:
            control.fail(err)


def merge_summary(totals: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            counter = Counter(totals.get(key, {}))
            counter.update(value)
            totals[key] = dict(counter)
        elif isinstance(value, str):  # a time (as_of): every shard's is the same, or the latest
            totals[key] = max(totals.get(key, value), value)
        else:
            totals[key] = totals.get(key, 0) + value


class ResultsSink(FixedPartitionedSink[bytes, None]):
    """`DIR/{triggers,changes,contacts,dead_letter}.jsonl` and `DIR/summary.json`, or stdout.

    Items are ``(kind, chunk)`` where a chunk is newline-terminated JSON lines.
    """

    def __init__(self, out_dir: str | None) -> None:
        self._dir = None if out_dir in (None, STDIO) else Path(out_dir)  # type: ignore[arg-type]
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)

    def list_parts(self) -> list[str]:
        return list(OUTPUT_KINDS)

    def part_fn(self, item_key: str) -> int:
        return OUTPUT_KINDS.index(item_key)

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> StatefulSinkPartition[bytes, None]:
        if for_part == "summary":
            return _SummaryPartition(None if self._dir is None else self._dir / "summary.json")
        if self._dir is None:
            return _KindPartition(sys.stdout.buffer, for_part, close=False, prefix=True)
        try:
            stream: IO[bytes] | None = open(self._dir / f"{for_part}.jsonl", "wb")  # noqa: SIM115
        except OSError as err:
            control.fail(err)
            stream = None
        return _KindPartition(stream, for_part, close=True, prefix=False)
