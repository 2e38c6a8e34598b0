"""The output record of one effect: THE format of the flows' change and trigger outputs.

``changes.jsonl``/``triggers.jsonl`` and the Redis ``changes``/``triggers`` streams hold these
records, and :mod:`leadscore.explain` reads them back. One module, one job, because it is the
hot path of every output line: it is compiled with the engine (``leadscore/accel.py``, types in
``records.pxd``: the effects' fields are read as C struct members).
"""

from __future__ import annotations

from types import FunctionType
from typing import Any

import orjson

from leadscore.engine import (
    ContactState,
    Duplicate,
    Effect,
    Engine,
    PointChange,
    SegmentChanged,
    StageChanged,
    TagChanged,
    TriggerFired,
)
from leadscore.events import format_ts, round4
from leadscore.merge import Merged
from leadscore.rules import VIEW_FIELDS


def effect_record(contact: str, effect: Effect, action: str | None = None) -> dict[str, Any] | None:
    """The output record for one effect: THE format of the flow's outputs; None for duplicates.

    Point changes also carry the event's ``action`` when the caller knows it, because the
    change log alone does not say which action earned the points.
    """
    # One dict literal per kind, in output key order: no merges or temporary dicts, as this
    # runs once per output record of the flow. Each kind is read through its own name (p, s,
    # f, g, a): compiled, that name has the effect's C type and its fields are struct reads.
    t = type(effect)
    if t is PointChange:
        p = effect
        rec: dict[str, Any] = {
            "contact": contact,
            "kind": "points",
            "rule": p.rule,
            "group": p.group,
            "delta": p.delta,
            "applied": p.applied,
            "score_after": round4(p.score_after),
            "capped": p.capped,
            "event_id": p.event_id,
            "at": format_ts(p.at),
        }
        if action is not None:
            rec["action"] = action
        if p.reason is not None:
            rec["reason"] = p.reason
        return rec
    if t is StageChanged:
        s = effect
        return {
            "contact": contact,
            "kind": "stage",
            "stage": s.stage,
            "previous": s.previous,
            "cause": s.cause,
            "at": format_ts(s.at),
        }
    if t is TriggerFired:
        f = effect
        return {
            "contact": contact,
            "trigger": f.trigger,
            "score": f.score,
            "at": format_ts(f.at),
            "actions": f.actions,
            "cause": f.cause,
        }
    if t is SegmentChanged:
        g = effect
        return {
            "contact": contact,
            "kind": "segment",
            "segment": g.segment,
            "added": g.added,
            "cause": g.cause,
            "at": format_ts(g.at),
        }
    if t is TagChanged:
        a = effect
        return {
            "contact": contact,
            "kind": "tag",
            "tag": a.tag,
            "added": a.added,
            "cause": a.cause,
            "at": format_ts(a.at),
        }
    if t is Merged:
        return {
            "contact": contact,
            "kind": "merge",
            "from": effect.visitor,
            "at": format_ts(effect.at),
        }
    if t is Duplicate:
        return None
    raise TypeError(f"no record for {effect!r}")


# ---------------------------------------------------------------------------- JSON lines
#
# Compiled, a record's JSON is written straight into a C buffer (records.pxd: `_c_dump`,
# `_c_dump_points`, `_c_dump5`, `_c_dump6`) with the bytes orjson.dumps writes: the keys and
# separators as constant fragments, the values by a writer that answers None for anything
# it cannot prove orjson writes alike (NaN, exponent-form floats, huge ints, subclasses,
# surrogates): those, and every record interpreted, go through the dict and orjson as before.

_dumps = orjson.dumps


def _frags(*keys: str) -> tuple[bytes, ...]:
    """The bytes around each value of an object with these keys, in order; ``"k=v"`` is a key
    whose value is the constant string ``v`` (part of a fragment)."""
    frags: list[bytes] = []
    cur = b"{"
    for key in keys:
        name, eq, const = key.partition("=")
        cur += (b"," if len(cur) > 1 or frags else b"") + _dumps(name) + b":"
        if eq:
            cur += _dumps(const)
        else:
            frags.append(cur)
            cur = b""
    frags.append(cur + b"}")
    return tuple(frags)


_POINTS = ("contact", "kind=points", "rule", "group", "delta", "applied", "score_after")
_POINTS_TAIL = ("capped", "event_id", "at")
# Indexed by (action given) + 2 * (reason given).
_POINTS_FRAGS = (
    _frags(*_POINTS, *_POINTS_TAIL),
    _frags(*_POINTS, *_POINTS_TAIL, "action"),
    _frags(*_POINTS, *_POINTS_TAIL, "reason"),
    _frags(*_POINTS, *_POINTS_TAIL, "action", "reason"),
)
_STAGE_FRAGS = _frags("contact", "kind=stage", "stage", "previous", "cause", "at")
_TRIGGER_FRAGS = _frags("contact", "trigger", "score", "at", "actions", "cause")
_SEGMENT_FRAGS = _frags("contact", "kind=segment", "segment", "added", "cause", "at")
_TAG_FRAGS = _frags("contact", "kind=tag", "tag", "added", "cause", "at")


def effect_line(contact: str, effect: Effect, action: str | None = None) -> bytes | None:
    """``orjson.dumps(effect_record(contact, effect, action))``, byte for byte; None for
    duplicates. Compiled, most records skip the dict: their bytes are written in C, ``at``
    too (format_ts's text, from the float)."""
    if _WRITER:
        # Each record's fields go to the C writer as they are (no tuple of them; score_after
        # rounded and at formatted there, round4's and format_ts's text).
        t = type(effect)
        line = None
        if t is PointChange:
            p = effect
            line = _c_dump_points(  # noqa: F821
                _POINTS_FRAGS,
                contact,
                p.rule,
                p.group,
                p.delta,
                p.applied,
                p.score_after,
                p.capped,
                p.event_id,
                p.at,
                action,
                p.reason,
            )
        elif t is TriggerFired:
            f = effect
            line = _c_dump6(_TRIGGER_FRAGS, contact, f.trigger, f.score, f.at, f.actions, f.cause)  # noqa: F821
        elif t is StageChanged:
            s = effect
            line = _c_dump5(_STAGE_FRAGS, contact, s.stage, s.previous, s.cause, s.at)  # noqa: F821
        elif t is SegmentChanged:
            g = effect
            line = _c_dump5(_SEGMENT_FRAGS, contact, g.segment, g.added, g.cause, g.at)  # noqa: F821
        elif t is TagChanged:
            a = effect
            line = _c_dump5(_TAG_FRAGS, contact, a.tag, a.added, a.cause, a.at)  # noqa: F821
        if line is not None:
            return line  # type: ignore[no-any-return]
    record = effect_record(contact, effect, action)
    return None if record is None else _dumps(record)


_VIEW_FRAGS = _frags(*VIEW_FIELDS)
_VIEW_TIMES = (1 << 8) | (1 << 9)  # updated_at and as_of: floats written as format_ts's text


def view_values(engine: Engine, contact: str, state: ContactState, t: float) -> tuple[Any, ...]:
    """A contact's view as of ``t`` (no earlier than its last update) up to its tags, the
    first eight of ``VIEW_FIELDS`` as the view's dict holds them but ``segments`` and
    ``tags`` still the state's tuples (the writer writes a tuple as a list): the values
    :func:`view_line` and ``readmodel``'s documents write after the times that follow."""
    scores, total, normalized, grade = engine.view_scores(state, t)
    return (
        contact,
        scores,
        total,
        normalized,
        grade,
        engine._stage_order[state.stage] if state.stage >= 0 else None,
        state.segments,
        state.tags,
    )


def view_line(engine: Engine, contact: str, state: ContactState, at: float | None) -> bytes:
    """``dump_line(engine.view(contact, state, at))``, byte for byte: a final view's line
    (``contacts.jsonl``). Compiled, without the view's dict: :func:`view_values`, then its
    times written in C (format_ts's text). A model's likelihood, a time format_ts writes its
    own way, or a value the writer leaves to orjson: the dict and dump_line, as before."""
    if _WRITER and engine._model is None:
        last = state.last_ts
        t = last if at is None or at < last else at
        tail = (last if last else None, t if t else None)  # updated_at, as_of
        head = view_values(engine, contact, state, t)
        line = _c_dump_parts(_VIEW_FRAGS, head, tail, _VIEW_TIMES, True)  # noqa: F821
        if line is not None:
            return line  # type: ignore[no-any-return]
    return dump_line(engine.view(contact, state, at))


def dump_line(value: Any) -> bytes:
    """``orjson.dumps(value)``, byte for byte; compiled, written in C when it can be."""
    if _WRITER:
        line = _c_dump(value)  # noqa: F821
        if line is not None:
            return line  # type: ignore[no-any-return]
    return _dumps(value)


def time_json(ts: float) -> bytes | None:
    """``format_ts(ts)`` as a JSON string, as the compiled writer puts a record's ``at``;
    None when it leaves the time to format_ts (or runs interpreted). For the tests."""
    if _WRITER:
        return _c_dump_ts(ts)  # type: ignore[no-any-return]  # noqa: F821
    return None


# True only when this module runs compiled (its functions are then not Python functions):
# the C writer exists only there.
_WRITER = not isinstance(effect_line, FunctionType)
