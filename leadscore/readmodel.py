"""The live read model: what a reader needs to answer a contact's scores as of any moment.

The flow writes one JSON document per contact (``{prefix}:{p}:c:{contact}`` in Redis) when
the contact changes, not every time its scores decay: decay and expiry are closed form, so a
reader brings the stored scores to the moment of the read itself. :func:`document` builds
what the flow stores; :func:`view_at` is THE function every reader calls (the HTTP service,
``leadscore show``, or any program that reads Redis directly), so they all answer the same
bits ``Engine.view(contact, state, at)`` would. The layout is in docs/redis.md.

A document is the view at the contact's last update (``engine.view``, readable as it is),
plus ``decay``::

    "decay": {
      "t": 1764500000.0,                       # the contact's clock (last event or trigger)
      "groups": {                              # each group's stored score and its time,
        "engagement": [12.5, 1764400000.0],    # as the engine keeps it ([score, at]),
        "product": [30.0, 1764300000.0, [[1772000000.0, 30.0]]]   # + expiries: [when, points]
      },
      "params": {                              # the rules a reader needs (no rules file):
        "groups": [["engagement", 1209600.0, null], ["fit", null, null],
                   ["product", null, 7776000.0]],                # name, half-life, expire_after
        "scale": ["total", 100.0],             # or null: normalized = clamp(score/max*100)
        "grades": [["fit", [["A", 40.0], ["B", 20.0]], "D"]],     # group, bands, otherwise
        "predict": ["likelihood", -1.2, 0.98, 0.01,             # with a model reading decaying
                    [["engagement", "log1p", 0.0, 5.0, 1.9, 1.1,  # scores: as, intercept, a, b,
                      0.41, [0.7, 2.2], [-0.3, 0.0, 0.2], -0.1]]]  # their features (model.py)
      },
      "predict": 0.734                         # the likelihood's raw sum without them
    }

The likelihood (``predict`` in the rules) is recomputed as of the read from ``predict`` and
the decayed scores when the model reads a decaying group's score; otherwise (or in a
document without them) it holds as stored, since nothing else it reads changes between events.

A document without ``decay`` (written before it existed) is answered as it is, as of its
``updated_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import exp2
from typing import TYPE_CHECKING, Any

import orjson

try:
    import cython  # compiled: the C writer (records.pxd) and local types from readmodel.pxd
except ImportError:  # pragma: no cover - a plain install without Cython
    from leadscore import _pure as cython

from leadscore.events import format_ts, round4
from leadscore.model import percent_of_raw, score_tail
from leadscore.records import _frags, view_values
from leadscore.rules import TOTAL, Rules
from leadscore.rules import VIEW_FIELDS as VIEW_FIELDS  # the fields view_at answers, in order

if TYPE_CHECKING:
    from leadscore.engine import ContactState, Engine


def params(rules: Rules) -> dict[str, Any]:
    """The part of the rules a reader needs to decay, normalize and grade stored scores, and
    (``predict``) to bring the likelihood to the read when the model reads decaying scores."""
    out: dict[str, Any] = {
        "groups": [[name, g.half_life, g.expire_after] for name, g in rules.groups.items()],
        "scale": [rules.scale_score or TOTAL, rules.scale_max] if rules.scale_max else None,
        "grades": [
            [b.group, [[label, minimum] for label, minimum in b.bands], b.otherwise]
            for b in (rules.fit_grade, rules.engagement_grade)
            if b is not None
        ],
    }
    fresh = rules.predict.model.fresh_params() if rules.predict is not None else None
    if fresh is not None:
        out["predict"] = [rules.predict.name, *fresh]  # type: ignore[union-attr]
    return out


class DocumentWriter:
    """Builds the stored read model for an engine's contacts; its params are encoded once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # One pre-encoded fragment: a document is built per dirty contact per checkpoint.
        encoded = orjson.dumps(params(engine.rules))
        self._params = orjson.Fragment(encoded)
        self._frags = _document_frags(encoded)

    def document(self, contact: str, state: ContactState) -> dict[str, Any]:
        """The view at the contact's last update, plus what :func:`view_at` needs."""
        return _document(self.engine, self._params, contact, state)

    def encode(self, contact: str, state: ContactState) -> bytes:
        """:meth:`document` as the JSON bytes the flow stores."""
        if _WRITER:
            return _encode(self.engine, self._params, self._frags, contact, state)
        return orjson.dumps(_document(self.engine, self._params, contact, state))


def _document_frags(encoded_params: bytes) -> tuple[bytes, ...]:
    """The bytes around each value of a document (the compiled writer's): the view's keys,
    then ``decay``'s, its params written into the last one."""
    view = _frags(*VIEW_FIELDS)  # ..., b',"as_of":', b'}'
    return (
        *view[:-1],
        b',"decay":{"t":',
        b',"groups":',
        b',"params":' + encoded_params + b"}}",
    )


# The times among a document's values (updated_at, as_of): written as format_ts's text.
_DOCUMENT_TIMES = (1 << 8) | (1 << 9)


def _encode(
    engine: Engine,
    fragment: orjson.Fragment,
    frags: tuple[bytes, ...],
    contact: str,
    state: ContactState,
) -> bytes:
    """:meth:`DocumentWriter.encode` compiled: ``orjson.dumps(document)``, byte for byte,
    without the view's and decay's dicts (``records.view_values`` and its C writer): once
    per dirty contact per checkpoint. A model's likelihood, a time format_ts writes its own
    way, or a value the writer leaves to orjson: the dicts and orjson, as before."""
    if engine._model is None:
        last = state.last_ts
        stamp = last if last else None  # updated_at, and as_of (the view as of its update)
        tail = (stamp, stamp, last, state.groups)  # the times, then decay's t and groups
        head = view_values(engine, contact, state, last)
        line = _c_dump_parts(frags, head, tail, _DOCUMENT_TIMES, True)  # noqa: F821
        if line is not None:
            return line  # type: ignore[no-any-return]
    return orjson.dumps(_document(engine, fragment, contact, state))


def _document(
    engine: Engine, fragment: orjson.Fragment, contact: str, state: ContactState
) -> dict[str, Any]:
    """:meth:`DocumentWriter.document`; a function, so that compiled the engine's view is a C
    call (readmodel.pxd)."""
    doc, rest = engine.view_and_rest(contact, state)
    decay = {"t": state.last_ts, "groups": state.groups, "params": fragment}
    if rest is not None:
        decay["predict"] = rest
    doc["decay"] = decay
    return doc


# Compiled, documents are written by records.pxd's C writer; interpreted, orjson is faster.
_WRITER = cython.compiled


def view_at(doc: Mapping[str, Any], at: float) -> dict[str, Any]:
    """A stored read model's view with scores as of ``at`` (epoch seconds).

    Decay (half-life) and expiry are applied in closed form from each group's stored score
    and time, with the engine's own arithmetic, so the answer equals ``Engine.view(contact,
    state, at)`` to the bit. A time before the contact's last update counts as that update
    (an event may be dated up to the flow's ``--max-future`` ahead of a reader's clock).
    ``as_of`` in the answer says which time it is. Nothing is written.
    """
    decay = doc.get("decay")
    if not isinstance(decay, Mapping):  # an older document: its scores as they were stored
        out = dict(doc)
        out["as_of"] = doc.get("as_of") or doc.get("updated_at")
        return out
    last = float(decay.get("t") or 0.0)
    t = last if at < last else at
    stored: Mapping[str, list[Any]] = decay.get("groups") or {}
    p = decay.get("params") or {}
    scores: dict[str, float] = {}
    for name, half_life, expire_after in p.get("groups") or ():
        g = stored.get(name)
        if g is None:
            scores[name] = 0.0
            continue
        # Engine._group_score, operation for operation: the same bits.
        score = g[0]
        if half_life is not None:
            if t > g[1]:
                score *= exp2((g[1] - t) / half_life)
        elif expire_after is not None:
            for expires, points in g[2]:
                if expires > t:
                    break
                score -= points
        scores[name] = round4(score)
    total = round4(sum(scores.values()))
    normalized = None
    scale = p.get("scale")
    if scale:
        name, maximum = scale
        value = total if name == TOTAL else scores.get(name, 0.0)
        normalized = round(min(100.0, max(0.0, value * 100.0 / maximum)), 1)
    grade = None
    grades = p.get("grades")
    if grades:
        grade = ""
        for group, bands, otherwise in grades:
            value = total if group == TOTAL else scores.get(group, 0.0)
            for label, minimum in bands:
                if value >= minimum:
                    grade += label
                    break
            else:
                grade += otherwise
    out = {
        "contact": doc.get("contact"),
        "scores": scores,
        "total": total,
        "normalized": normalized,
        "grade": grade,
        "stage": doc.get("stage"),
        "segments": doc.get("segments") or [],
        "tags": doc.get("tags") or [],
        "updated_at": doc.get("updated_at"),
        "as_of": format_ts(t) if t else None,
    }
    # The rules' `predict` likelihood: recomputed as of ``t`` when its model reads decaying
    # scores (Engine.view's arithmetic: model.score_tail), else it holds as stored.
    fresh = p.get("predict")
    rest = decay.get("predict")
    if fresh and rest is not None:
        name, intercept, a, b, plan = fresh
        xs = [scores.get(feature[0], 0.0) for feature in plan]
        out[name] = percent_of_raw(score_tail(rest, xs, plan), intercept, a, b)
    for name, value in doc.items():
        if name not in out and name != "decay":
            out[name] = value
    return out


def view_at_bytes(raw: bytes, at: float) -> bytes:
    """:func:`view_at` from and to JSON bytes: what a reader of Redis does per read."""
    return orjson.dumps(view_at(orjson.loads(raw), at))
