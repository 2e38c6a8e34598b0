"""Typed decoding of event lines: the contract's common case checked in C by msgspec.

:func:`parse_events` here returns what :func:`leadscore.events.parse_events` returns, line
for line (same events, same rejections with the same codes and reasons), faster: msgspec
decodes a line straight into :class:`_Line`, a struct whose types state the common case
(text contact of 1 to 256 characters, non-empty text action, the optional fields of their
usual types, no unknown field), so no top-level dict is built and most checks run in C.
Whatever msgspec refuses, and whatever the struct cannot say exactly, goes through
:func:`leadscore.events.parse_event`, so every rejection and its reason still come from one
place. What the struct must not accept, because orjson would decode it differently:

- an unknown top-level field (msgspec skips its value without checking its numbers or its
  UTF-8, which orjson refuses): ``forbid_unknown_fields``;
- an integer outside int64 (orjson makes it a float, msgspec keeps it exact): every integer
  the struct holds is bounded, and props/traits are typed three levels deep, containers
  past that refused: an accepted line nests four levels at most, never ``too_deep``, and a
  deeper one takes the reference path, which measures its depth;
- a timestamp text: kept as text and read by :func:`leadscore.events.parse_ts`, the
  reference's own checks (msgspec's datetime rounds fractions and allows a lower-case 't').
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec.structs import astuple

from leadscore.events import (
    MAX_CONTACT_CHARS,
    MAX_EVENT_BYTES,
    MAX_TS,
    Event,
    Reject,
    parse_event,
    ts_seconds,
)

_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Scalar = Union[str, bool, None, _Int, float]  # noqa: UP007 (msgspec reads the Union)
_Level3 = _Scalar
_Level2 = Union[str, bool, None, _Int, float, list[_Level3], dict[str, _Level3]]  # noqa: UP007
_Level1 = Union[str, bool, None, _Int, float, list[_Level2], dict[str, _Level2]]  # noqa: UP007


# Compiled, the contact's and the action's lengths are checked after the decode as C lengths
# (msgspec's Meta checks cost ~130 instructions a line); interpreted, that check would be
# ~300 instructions of bytecode, so msgspec checks them as before.
_LENGTHS_AFTER = not __file__.endswith(".py")
# Compiled, a decoded line's fields are read from the struct's slots in C (typed.pxd,
# `_c_line_layout`/`_c_line_slot`) rather than through astuple's tuple.
_SLOTS = _LENGTHS_AFTER
if _LENGTHS_AFTER:
    _Contact: Any = str
    _Action: Any = str
else:
    _Contact = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CONTACT_CHARS)]
    _Action = Annotated[str, msgspec.Meta(min_length=1)]


_Ts = Union[str, _Int, float, None]  # noqa: UP007
_Object = Union[dict[str, _Level1], None]  # noqa: UP007


def _line_type(name: str, action: Any) -> Any:
    """The struct of one event line's common case, as msgspec checks it (parse_events unpacks
    its fields in this order): contact 1 to MAX_CONTACT_CHARS characters, action not empty
    (of type ``action``), the optional fields of their usual types, no unknown field."""
    fields = [
        ("contact", _Contact),
        ("action", action),
        ("ts", _Ts, None),
        ("id", Union[str, None], None),  # noqa: UP007
        ("props", _Object, None),
        ("traits", _Object, None),
    ]
    return msgspec.defstruct(name, fields, forbid_unknown_fields=True, gc=False)


_Line = _line_type("_Line", _Action)


def line_decoder(actions: Iterable[str] = ()) -> Callable[[bytes], Any]:
    """msgspec's decode of a line into a struct like :class:`_Line` whose action is one of
    ``actions`` (the rules' known actions), for :func:`parse_events`' ``decode``.

    msgspec then hands back the given ``str`` object for the action (a ``Literal``'s value)
    instead of making one per line, its hash already known: every dict and set lookup by
    action after the decode (the file flow's known-action check, the engine's by-action
    tables) skips hashing it and compares it by identity. A line with any other action fails
    this decode and takes the reference path, as every other refused line does, so what is
    accepted or rejected, and why, does not change. No actions: :class:`_Line`'s decode.
    """
    names = tuple(sorted(set(actions)))
    if not names:
        return _decode
    return msgspec.json.Decoder(_line_type("_KnownLine", Literal[names])).decode  # type: ignore[no-any-return]


_MAX_CONTACT = MAX_CONTACT_CHARS  # compiled: C constants (typed.pxd), no boxed comparison
_MAX_BYTES = MAX_EVENT_BYTES
_decode = msgspec.json.Decoder(_Line).decode
# A decoded line's fields in _Line's order, in one C call (six attribute reads cost ~4x more).
_fields = astuple


def unended(raw: bytes | str) -> bytes | str:
    """A line without its line end (its trailing CR and LF): what the reference parser and a
    dead letter see of a line a file gave."""
    return raw.rstrip(b"\r\n") if type(raw) is bytes else raw.rstrip("\r\n")  # type: ignore[arg-type]


def parse_events(
    lines: Iterable[bytes | str],
    now: float,
    latest: float = MAX_TS,
    ended: bool = False,
    decode: Callable[[bytes], Any] | None = None,
) -> list[Event | Reject]:
    """``[events.parse_event(raw, now, latest) for raw in lines]``, by msgspec where it can.

    ``ended``: the lines may still end with their line ends, as a file gives them (the file
    flow's source no longer copies each line to strip it); each is taken as
    :func:`unended` of it. The decode needs no stripping (a line end is trailing
    whitespace to JSON, and whitespace after a value never makes bad JSON good), so only
    the lines sent to the reference are stripped, and the size limit is the stripped one.

    ``decode``: a :func:`line_decoder` (the file flow's ``Parser`` makes one of its rules'
    known actions); by default :class:`_Line`'s.
    """
    out: list[Event | Reject] = []
    append = out.append
    if decode is None:
        decode = _decode
    decode_error = msgspec.DecodeError  # ValidationError is one
    slow = parse_event  # looked up per call: tests replace it
    fields = _fields
    lengths = _LENGTHS_AFTER
    for raw in lines:
        if type(raw) is not bytes or len(raw) > _MAX_BYTES:
            append(slow(unended(raw) if ended else raw, now, latest))
            continue
        try:
            line = decode(raw)
        except decode_error:
            append(slow(unended(raw) if ended else raw, now, latest))
            continue
        if _SLOTS and _c_line_layout(line):  # noqa: F821 (typed.pxd, compiled only)
            contact = _c_line_slot(line, 0)  # noqa: F821
            action = _c_line_slot(line, 1)  # noqa: F821
            value = _c_line_slot(line, 2)  # noqa: F821
            event_id = _c_line_slot(line, 3)  # noqa: F821
            props = _c_line_slot(line, 4)  # noqa: F821
            traits = _c_line_slot(line, 5)  # noqa: F821
        else:
            contact, action, value, event_id, props, traits = fields(line)
        if lengths:
            size = len(contact)
            if size == 0 or size > _MAX_CONTACT or not action:
                # the reference says which field and why
                append(slow(unended(raw) if ended else raw, now, latest))
                continue
        ts = ts_seconds(value, now, latest)  # the reference's own time checks (parse_ts)
        if ts != ts:  # NaN: a rejected or unusual time, the reference decides
            append(slow(unended(raw) if ended else raw, now, latest))
            continue
        event = Event.__new__(Event)  # compiled: the C type's own allocation, no __init__
        event.contact = contact
        event.action = action
        event.ts = ts
        event.id = event_id
        event.props = {} if props is None else props
        event.traits = traits
        event.merge = None  # a line with merge is an unknown field here: the reference's
        append(event)
    return out
