"""The file source's chunks: every line of a file, numbered, once, in order, blank ones left out.

These check that what the parse step gets is what iterating the file line by line gives,
whatever the chunk size, line ends (LF, CRLF, a lone CR), blank lines, a last line without its
line end, or gzip.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flows.io
from flows.io import JsonlSource
from leadscore.typed import unended

_LINE = st.one_of(
    st.sampled_from([b"", b" ", b"\t", b"\r", b"  \r", b'{"a":1}', b'{"a":1}\r', b"x\ry", b"\x00"]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
)


def _chunks(
    path: str, batch: int, resume: int | None = None
) -> list[tuple[int, str, int, list[bytes] | None]]:
    part = JsonlSource([path], batch_size=batch).build_part("read", f"0:{path}", resume)
    out = []
    try:
        while True:
            out += part.next_batch()
    except StopIteration:
        pass
    finally:
        part.close()
    return out


def _expected(data: bytes) -> list[tuple[int, bytes]]:
    """(line number, line without its line end) of each non-blank line, iterating the bytes."""
    return [(n, unended(line)) for n, line in enumerate(_file_lines(data), 1) if not line.isspace()]


def _file_lines(data: bytes) -> list[bytes]:
    """What iterating a binary file holding ``data`` yields: split after each b"\\n"."""
    lines = [line + b"\n" for line in data.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    return [line for line in lines if line]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(_LINE, max_size=40),
    ends=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=40, max_size=40),
    last_end=st.booleans(),
    batch=st.integers(1, 9),
    gz=st.booleans(),
)
def test_file_source_hands_on_every_line_once_in_order(
    tmp_path: Path, monkeypatch, lines, ends, last_end, batch, gz
) -> None:
    data = b"".join(line + end for line, end in zip(lines, ends, strict=False))
    if lines and not last_end:
        data = data[: -len(ends[len(lines) - 1])]
    path = tmp_path / ("events.jsonl.gz" if gz else "events.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    seen: list[int] = []
    monkeypatch.setattr(flows.io, "progress_hook", seen.append)
    chunks = _chunks(str(path), batch)
    got = [
        (first + i, unended(line))
        for _, _, first, chunk in chunks
        if chunk is not None
        for i, line in enumerate(chunk)
    ]
    assert got == _expected(data)
    assert chunks and chunks[-1][3] is None  # the end of the partition, once
    assert [c for c in chunks if c[3] is None] == [chunks[-1]]
    assert chunks[-1][2] == len(_file_lines(data))  # the lines counted, blank ones too
    assert sum(seen) == len(data)  # progress: every byte of the file, once
    for _, _, _, chunk in chunks:
        if chunk is not None:
            assert 1 <= len(chunk) <= batch


def test_file_source_resumes_after_the_lines_it_handed_on(tmp_path: Path) -> None:
    data = b"".join(b'{"n":%d}\n' % i for i in range(1, 30))
    path = tmp_path / "events.jsonl"
    path.write_bytes(data)
    chunks = _chunks(str(path), 4, resume=10)
    got = [
        (first + i, unended(line))
        for _, _, first, c in chunks
        if c is not None
        for i, line in enumerate(c)
    ]
    assert got == [(n, b'{"n":%d}' % n) for n in range(11, 30)]
