"""Redis commands in the wire protocol (RESP), packed without a C call per argument.

A checkpoint is one script call with several arguments per contact it writes (state and
read-model keys and values, its timer). ``hiredis.pack_command`` costs ~2,000 instructions per
argument (a ``malloc``'d copy each, then ``sprintf`` of every length: 3.0k instructions per
input line of the d1 benchmark, bench/README.md); compiled, :func:`pack_command` builds the
same bytes with one ``bytes.join`` over ready-made length headers.

Arguments are what redis-py's serializer and hiredis accept from the store: ``bytes``, ``str``
(UTF-8), ``int`` and ``float`` (``repr``). Anything else raises ``TypeError`` and the store falls
back to hiredis or redis-py's own serializer, which know more types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    import cython  # compiled: local types from resp.pxd; interpreted: Cython's shadow
except ImportError:  # pragma: no cover - a plain install without Cython
    from leadscore import _pure as cython

COMPILED: bool = cython.compiled
"""Whether this module runs compiled: interpreted, hiredis packs faster than it does."""

_CACHED = 4096
# b"\r\n$N\r\n" for each N below _CACHED: an argument's header, after the previous one's end
_HEADERS: list[bytes] = [b"\r\n$%d\r\n" % n for n in range(_CACHED)]


def _header(n: int) -> bytes:
    return _HEADERS[n] if n < _CACHED else b"\r\n$%d\r\n" % n


def pack_command(args: Sequence[Any]) -> bytes:
    """``args`` as one RESP command (an array of bulk strings): the bytes hiredis makes."""
    pieces: list[bytes] = [b"*%d" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif kind is str:
            text = arg  # compiled: a str local, so encode() is PyUnicode_AsUTF8String (no lookup)
            data = text.encode()
        elif kind is int:
            data = b"%d" % arg
        elif kind is float:
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot pack {kind.__name__} as a Redis argument")
        pieces.append(_header(len(data)))
        pieces.append(data)
    pieces.append(b"\r\n")
    return b"".join(pieces)
