"""A contact's state as msgpack bytes: compact, versioned, language-neutral.

The first element is the format version so a later release can read what this one wrote.
Keys are rule, group and trigger ids, never positions, so reordering the rules file keeps
every contact's history.

Format 3 stores the repeat trackers as the engine holds them (see ``ContactState``): the
tracked rule ids, their hits and times as one bin of little-endian doubles, and a map of
``{max, per}`` rule id -> award times (nil when none). ``recent_ids`` is one bin of
little-endian uint32 crc32 values (66 bytes for 16 ids instead of ~81 as a list of ints, and
one copy to read or write).

Formats 1 and 2 are still read: both keep the trackers as a map of rule id -> ``[hits, last
seen, extra]`` (extra: nil, the last award, 1 for once, or a list of award times), and format 1
keeps ``recent_ids`` as an array of ints.
"""

from __future__ import annotations

import sys
import threading
from array import array
from collections.abc import Callable
from typing import Any

import msgpack

try:
    import cython  # compiled: the C writer and local types from codec.pxd
except ImportError:  # pragma: no cover - a plain install without Cython
    from leadscore import _pure as cython

from leadscore.engine import NEVER, NO_GROUPS, NO_TRAITS, NO_TRIGGERS, ContactState

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)

# The stored fields, in their order after the version. The engine's derived caches
# (`engine._DERIVED`: due, floor, idle) are never stored.
FIELDS = (
    "groups",
    "tracked",
    "tracks",
    "windows",
    "triggers",
    "seq",
    "stage",
    "segments",
    "tags",
    "traits",
    "fit",
    "last_ts",
    "recent_ids",
)


_BIG_ENDIAN = sys.byteorder == "big"
_V2_FIELDS = 11  # groups, trackers, triggers, ..., recent_ids


class StateFormatError(ValueError):
    """Bytes that are not a contact state this version can read."""


_packers = threading.local()

# Compiled (and little-endian, as the stored bins are), encode writes a compiled engine's
# states in C (codec.pxd: msgpack's bytes, ~5x fewer instructions than building the list and
# packing it); interpreted, msgpack's Packer is the faster writer.
_WRITER = cython.compiled and not _BIG_ENDIAN
WRITES_IN_C: bool = _WRITER  # the same, for Python to read (tests)


def encode(state: ContactState) -> bytes:
    """The state as format 3's msgpack bytes (the order of FIELDS after the version)."""
    if _WRITER and type(state) is ContactState:
        blob = _encode_c(state)
        if blob is not None:
            return blob  # type: ignore[no-any-return]
    try:
        pack = _packers.pack
    except AttributeError:
        # One Packer per thread, reused: ``msgpack.packb`` builds a Packer (and its 1 MiB
        # buffer) per call, which cost as much as packing a state. Same options, same bytes.
        pack = _packers.pack = msgpack.Packer(use_bin_type=True).pack
    # The order of FIELDS, each read once; encode runs once per dirty contact per checkpoint.
    return pack(  # type: ignore[no-any-return]
        [
            FORMAT_VERSION,
            state.groups,
            state.tracked,
            _to_bytes(state.tracks),
            _windows_to_map(state.windows),
            state.triggers,
            state.seq,
            state.stage,
            state.segments,
            state.tags,
            state.traits,
            state.fit,
            state.last_ts,
            _to_bytes(state.recent_ids),
        ]
    )


def _encode_c(state: ContactState) -> bytes | None:
    """:func:`encode` by the compiled writer: None when it cannot prove msgpack writes the
    same bytes (a value of a type it leaves to msgpack)."""
    return _c_pack_state(  # type: ignore[no-any-return]  # noqa: F821
        state.groups,
        state.tracked,
        state.tracks,
        state.windows,
        state.triggers,
        state.seq,
        state.stage,
        state.segments,
        state.tags,
        state.traits,
        state.fit,
        state.last_ts,
        state.recent_ids,
        array,
    )


def decode(data: bytes) -> ContactState:
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise StateFormatError(f"not a msgpack contact state: {exc}") from None
    if not isinstance(fields, list) or not fields or fields[0] not in READABLE_VERSIONS:
        version = fields[0] if isinstance(fields, list) and fields else None
        raise StateFormatError(
            f"contact state format {version!r} is not supported (this release reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade leadscore or rebuild state "
            "from the event log"
        )
    version = fields[0]
    expected = len(FIELDS) if version == 3 else _V2_FIELDS
    if len(fields) != expected + 1:
        raise StateFormatError(
            f"contact state has {len(fields) - 1} fields, format {version} has "
            f"{expected}: the blob is damaged"
        )
    state = ContactState()
    if version == 3:
        (
            state.groups,
            tracked,
            tracks,
            windows,
            state.triggers,
            state.seq,
            state.stage,
            segments,
            tags,
            state.traits,
            fit,
            state.last_ts,
            ids,
        ) = fields[1:]  # the order of FIELDS; unpacked directly, ~25% faster than setattr
        if tracked:
            state.tracked = _labels(tracked, "tracked", sys.intern)  # shared, as the engine's
            state.tracks = _doubles_from_bytes(tracks, 3 * len(tracked))
        if windows:
            _windows_from_map(state, windows)
    else:
        (
            state.groups,
            trackers,
            state.triggers,
            state.seq,
            state.stage,
            segments,
            tags,
            state.traits,
            fit,
            state.last_ts,
            ids,
        ) = fields[1:]
        _trackers_from_map(state, trackers)
    if not state.traits:
        state.traits = NO_TRAITS
    if not state.triggers:
        state.triggers = NO_TRIGGERS
    if not state.groups:
        state.groups = NO_GROUPS
    state.segments = _labels(segments, "segments")
    state.tags = _labels(tags, "tags")
    state.fit = _labels(fit, "fit")
    state.recent_ids = _ids_from_list(ids) if version == 1 else _ids_from_bytes(ids)
    return state


def _trackers_from_map(state: ContactState, trackers: Any) -> None:
    """Formats 1 and 2: rule id -> [hits, last seen, extra], as flat trackers."""
    if not isinstance(trackers, dict):
        raise StateFormatError("contact state has a damaged trackers field")
    tracks: list[float] = []
    windows: dict[str, list[float]] = {}
    try:
        for rule, (hits, seen, extra) in trackers.items():
            if isinstance(extra, list):
                windows[rule] = extra
                extra = None
            tracks += (
                float(hits),
                NEVER if seen is None else float(seen),
                NEVER if extra is None else float(extra),
            )
    except (TypeError, ValueError):
        raise StateFormatError("contact state has a damaged trackers field") from None
    if trackers:
        state.tracked = _labels(list(trackers), "trackers", sys.intern)
        state.tracks = array("d", tracks)
    if windows:
        _windows_from_map(state, windows)


def _labels(
    values: object, field: str, share: Callable[[str], str] | None = None
) -> tuple[str, ...]:
    """A list of ids or labels as the engine's tuple (``share``: intern each, which also
    refuses anything but text)."""
    if type(values) is not list:
        raise StateFormatError(f"contact state has a damaged {field} field")
    if not values:
        return ()
    if share is not None:
        try:
            return tuple(map(share, values))
        except TypeError:
            raise StateFormatError(f"contact state has a damaged {field} field") from None
    for value in values:
        if type(value) is not str:
            raise StateFormatError(f"contact state has a damaged {field} field")
    return tuple(values)


def _windows_to_map(windows: tuple[str | array[float], ...]) -> dict[str, list[float]] | None:
    """The award times of ``{max, per}`` rules as a map of rule id -> times (nil: none)."""
    if not windows:
        return None
    return {windows[i]: windows[i + 1].tolist() for i in range(0, len(windows), 2)}  # type: ignore[misc, union-attr]


def _windows_from_map(state: ContactState, windows: object) -> None:
    if not isinstance(windows, dict):
        raise StateFormatError("contact state has a damaged windows field")
    flat: list[str | array[float]] = []
    try:
        for rule, times in windows.items():
            flat += (sys.intern(rule), array("d", times))
    except (TypeError, ValueError):
        raise StateFormatError("contact state has a damaged windows field") from None
    state.windows = tuple(flat)


def _to_bytes(values: array[Any] | list[Any]) -> bytes:
    """An array as little-endian bytes; a list (a hand-built state's ids) as uint32."""
    if type(values) is not array:
        values = array("I", values)
    if _BIG_ENDIAN:
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _ids_from_bytes(blob: object) -> array[int]:
    if not isinstance(blob, bytes) or len(blob) % 4:
        raise StateFormatError("contact state has a damaged recent_ids field")
    ids = array("I")
    ids.frombytes(blob)
    if _BIG_ENDIAN:
        ids.byteswap()
    return ids


def _doubles_from_bytes(blob: object, count: int) -> array[float]:
    if not isinstance(blob, bytes) or len(blob) != 8 * count:
        raise StateFormatError("contact state has a damaged tracks field")
    values = array("d")
    values.frombytes(blob)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


def _ids_from_list(values: object) -> array[int]:
    """Format 1: a list of uint32 crc32 values."""
    try:
        return array("I", values)  # type: ignore[arg-type]
    except (TypeError, OverflowError):
        raise StateFormatError("contact state has a damaged recent_ids field") from None
