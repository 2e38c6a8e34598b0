"""The output record of one effect: THE format of the flows' change and trigger outputs.

``changes.jsonl``/``triggers.jsonl`` and the Redis ``changes``/``triggers`` streams hold these
records, and :mod:`leadscore.explain` reads them back. One module, one job, because it is the
hot path of every output line: it is compiled with the engine (``leadscore/accel.py``, types in
``records.pxd``: the effects' fields are read as C struct members).
"""

from __future__ import annotations

from typing import Any

from leadscore.engine import (
    Duplicate,
    Effect,
    PointChange,
    SegmentChanged,
    StageChanged,
    TagChanged,
    TriggerFired,
)
from leadscore.events import format_ts, round4
from leadscore.merge import Merged


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
