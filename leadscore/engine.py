"""The scoring engine: a contact's state + an event + the rules -> new state + effects.

This module is the hot path. It is pure: no clock, no I/O, no randomness, so the same events in
the same order always give the same state and effects, whichever worker or process runs them.
The caller owns the state and the engine updates it in place; copying a state per event would
cost more than scoring it.

Time is event time. Decay is exact and lazy: a group stores ``[score, as_of]`` and is decayed
in closed form when read or changed, so a contact that sends nothing costs nothing until a
timer asks :meth:`Engine.next_due` when its score will cross a ``below`` threshold.
"""

from __future__ import annotations

import math  # compiled, engine.pxd cimports libc's math in its place: math.exp2 is a C call
import sys
from array import array
from bisect import insort
from dataclasses import dataclass
from math import inf
from typing import Any
from zlib import crc32

from leadscore.accel import is_c_type, restore_slots
from leadscore.events import Event, format_ts, round4
from leadscore.matchers import Where
from leadscore.model import Explanation, action_counter_key, counter_key
from leadscore.rules import (
    REPEAT_COOLDOWN,
    REPEAT_ONCE,
    REPEAT_WINDOW,
    TOTAL,
    GroupSpec,
    Rules,
    Trigger,
)

# ContactState.due: the exact next time decay changes a trigger (inf: never), or _UNKNOWN.
# Exact, not a bound: timers must wake at the same times whether or not a state was reloaded.
_UNKNOWN = -1.0
_MAX_CROSSINGS = 256  # per advance: far more than any real score crosses in one gap
_EPSILON = 1e-9  # relative float noise tolerated when a decaying score meets a threshold
RECENT_IDS = 16  # event ids remembered per contact to drop producer retries
MAX_TRAIT_CHARS = 256  # keeps a contact's packed state bounded whatever a client sends
_MISSING = object()
_DERIVED = frozenset({"due", "floor", "idle"})  # ContactState caches, never stored
NEVER = -inf  # a tracker time that has not happened yet
# A new repeat tracker: hits, last seen, last award (cooldown) or awarded flag (once).
_NEW_TRACK = array("d", (0.0, NEVER, NEVER))
# Shared by every state without trackers (traits): never written in place, only replaced.
_NO_TRACKS = array("d")
NO_TRAITS: dict[str, Any] = {}
NO_TRIGGERS: dict[str, int] = {}  # most contacts never reach a trigger: see _set_trigger
NO_GROUPS: dict[str, list[Any]] = {}  # a third of contacts never earn a point


# --------------------------------------------------------------------------- effects

# Effects are C types when compiled (engine.pxd); interpreted, restore_slots below gives them
# slots=True, which Cython refuses on C types.


@dataclass
class PointChange:
    rule: str
    group: str
    delta: float
    applied: float
    score_after: float
    event_id: str | None
    at: float
    capped: bool = False
    reason: str | None = None  # why, when no event earned it (a merge's corrections)


@dataclass
class TriggerFired:
    trigger: str
    score: float
    at: float
    actions: list[dict[str, str]]
    cause: str


@dataclass
class StageChanged:
    stage: str
    previous: str | None
    at: float
    cause: str


@dataclass
class SegmentChanged:
    segment: str
    added: bool
    at: float
    cause: str


@dataclass
class TagChanged:
    tag: str
    added: bool
    at: float
    cause: str


@dataclass
class Duplicate:
    event_id: str


restore_slots(globals(), PointChange, TriggerFired, StageChanged, SegmentChanged, TagChanged)
restore_slots(globals(), Duplicate)
Effect = PointChange | TriggerFired | StageChanged | SegmentChanged | TagChanged | Duplicate


# --------------------------------------------------------------------------- state


class ContactState:
    """Everything the engine remembers about one contact; bounded whatever it does.

    ``triggers`` maps a trigger id to an int that packs the sequence number of its last firing
    (``seq``, 0 for never) and whether it is armed:

    - ``at_least``: absent = armed, never fired; ``seq`` = fired, not re-armed; ``-seq`` =
      fired, then re-armed by ``rearm_below``.
    - ``below``: ``-(seq + 1)`` = armed (the score has been at or above the threshold since);
      ``seq`` = not armed. Absent = never evaluated: armed when the starting score 0 is at or
      above the threshold.

    Repeat trackers are flat, because a contact holds several and a dict of per-rule lists
    cost ~850 bytes a contact: ``tracked`` names the rules in first-hit order and ``tracks``
    holds three doubles per rule at ``3 * tracked.index(rule)``: hits, last seen, and the last
    award (cooldown) or 1.0 once awarded (once); ``NEVER`` (-inf) for a time not yet seen.
    ``windows`` pairs each ``{max, per}`` rule id with an array of its award times: ``(rule,
    times, rule, times, ...)``. Tuples, and the shared empty ``tracks`` and ``NO_TRAITS``, are
    replaced, never changed in place; so are ``NO_TRIGGERS`` (writes go through
    ``_set_trigger``) and ``NO_GROUPS`` (``_award`` replaces it).
    """

    __slots__ = (
        "due",
        "fit",
        "floor",
        "groups",
        "idle",
        "last_ts",
        "recent_ids",
        "segments",
        "seq",
        "stage",
        "tags",
        "tracked",
        "tracks",
        "traits",
        "triggers",
        "windows",
    )

    def __init__(self) -> None:
        self.groups: dict[str, list[Any]] = NO_GROUPS
        self.tracked: tuple[str, ...] = ()
        self.tracks: array[float] = _NO_TRACKS
        self.windows: tuple[str | array[float], ...] = ()
        self.triggers: dict[str, int] = NO_TRIGGERS
        self.seq = 0
        self.stage = -1
        self.segments: tuple[str, ...] = ()
        self.tags: tuple[str, ...] = ()
        self.traits: dict[str, Any] = NO_TRAITS
        self.fit: tuple[str, ...] = ()
        self.last_ts = 0.0
        # crc32 of the last RECENT_IDS event ids: 4 bytes each and a membership test in C,
        # where a list of Python ints costs ~40 bytes an id.
        self.recent_ids: array[int] = array("I")
        # Derived, never stored: when decay next crosses or re-arms a trigger (inf: never).
        self.due = _UNKNOWN
        # Derived, never stored: whether that inf came from the triggers' states alone (none
        # armed to fall or re-arm, no score able to rise), so points cannot change it.
        self.idle = False
        # Derived, never stored: no crossing before this time (-inf: unknown). Kept while only
        # positive points arrive, which can only delay a falling crossing; apply skips advance
        # before it. next_due never reads it: that stays exact.
        self.floor = -inf

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ContactState) and all(
            getattr(self, name) == getattr(other, name)
            for name in self.__slots__
            if name not in _DERIVED
        )

    def __repr__(self) -> str:
        return f"ContactState(groups={self.groups}, stage={self.stage}, last_ts={self.last_ts})"


# Whether this module runs compiled (ContactState is then a C type): apply takes the typed
# paths that are faster compiled and slower interpreted.
_TYPED = is_c_type(ContactState)
# Compiled, and sum() of floats is their plain left-to-right additions from 0 (3.12 made it
# compensated): view_scores sums its scores in C (_float_sum) to the same bits.
_FLOAT_SUM = _TYPED and sys.version_info < (3, 12)


# --------------------------------------------------------------------------- engine


class Engine:
    """Precompiled rules plus the pure functions that apply them."""

    def __init__(self, rules: Rules, count_all: bool = False) -> None:
        """``count_all``: count every rule's hits and every known action's events, whatever
        the model reads (training from history wants them all as candidate features)."""
        self.rules = rules
        self._groups = rules.groups
        self._group_names = tuple(rules.groups)
        self._matchers = rules.matchers  # generated per action name; see compile_matcher
        self._stage_order = rules.stage_order
        self._allow_backward = rules.allow_backward
        self._fit = rules.fit
        # The traits a contact's state keeps: those fit rules test and those the model reads.
        predict = rules.predict
        self._model = predict.model if predict is not None else None
        self._predict_as = predict.name if predict is not None else ""
        model = self._model
        model_traits = [f.key for f in model.features if f.source == "trait"] if model else []
        self._fit_paths = tuple(dict.fromkeys([*(r.trait for r in rules.fit), *model_traits]))
        sources = {"trait": 0, "score": 1, "rule_hits": 2, "action_count": 2}
        self._predict_plan = tuple(
            (sources[f.source], f.key if sources[f.source] < 2 else counter_key(f.source, f.key))
            for f in (model.features if model else ())
        )
        # Counters the state keeps beyond the repeat trackers: only what the model reads (or
        # everything, for training), so rules without such a model keep states as they were.
        features = model.features if model else ()
        if count_all:
            counted = {r.id for r in rules.actions}
            counted_actions = set(rules.known_actions)
        else:
            counted = {f.key for f in features if f.source == "rule_hits"}
            counted_actions = {f.key for f in features if f.source == "action_count"}
        self._counted = frozenset(r.id for r in rules.actions if r.id in counted and not r.tracked)
        self._action_counters = {a: sys.intern(action_counter_key(a)) for a in counted_actions}
        self._predict_keys = tuple(key for _, key in self._predict_plan)
        self._predict_traits_only = all(source == 0 for source, _ in self._predict_plan)
        # A trait change re-evaluates triggers when one watches the likelihood.
        self._watch_predict = any(t.score == self._predict_as for t in rules.triggers)
        self._grade_bands = tuple(
            b for b in (rules.fit_grade, rules.engagement_grade) if b is not None
        )
        # view_scores' reads of the rules, worked out once: a view per dirty contact per flush.
        self._scale_max = rules.scale_max or 0.0
        self._scale_total = rules.scale_score == TOTAL
        self._scale_score = rules.scale_score or ""
        self._grade_plan = tuple(
            (b.group == TOTAL, b.group, b.otherwise, b.bands) for b in self._grade_bands
        )
        self._triggers = rules.triggers
        self._trigger_by_id = {t.id: t for t in rules.triggers}
        self._trigger_ops = {
            t.id: tuple(next(iter(a.items())) for a in t.actions) for t in rules.triggers
        }

        def decays(score: str) -> bool:
            names = self._group_names if score == TOTAL else (score,)
            return any(self._groups[n].decays for n in names if n in self._groups)

        # Only triggers that decay can move need work between events.
        self._decay_below = tuple(t for t in rules.triggers if t.below and decays(t.score))
        self._decay_rearm = tuple(
            t
            for t in rules.triggers
            if not t.below and t.rearm_below is not None and decays(t.score)
        )
        self._needs_advance = bool(self._decay_below or self._decay_rearm)
        # Decaying groups that negative points reach: their score can RISE between events (a
        # negative wave decays up toward 0, a penalty expires), which re-arms `below` triggers.
        negative = {r.group for r in rules.actions if r.points < 0}
        negative |= {r.group for r in rules.fit if r.points != 0}
        self._rising_groups = tuple(
            name for name in negative if name in rules.groups and rules.groups[name].decays
        )
        self._below = tuple(t for t in rules.triggers if t.below)
        self._rising_set = frozenset(self._rising_groups)
        # For _evaluate: (name, half_life or 0.0, expire_after) per group, and each trigger with the
        # index of its score among the groups' scores followed by the total.
        self._score_plan = tuple(
            (name, spec.half_life or 0.0, spec.expire_after) for name, spec in rules.groups.items()
        )
        self._trigger_plan = tuple(
            (
                t,
                len(self._group_names)
                if t.score == TOTAL
                else len(self._group_names) + 1
                if t.score == self._predict_as
                else self._group_names.index(t.score),
            )
            for t in rules.triggers
        )
        # A new contact's derived timer fields, worked out once: every new state is alike, and
        # most contacts stay idle (nothing can cross) after their first points.
        fresh = ContactState()
        if self._needs_advance:
            fresh.due = self._next_crossing(fresh)[0]
        self._fresh_timer = (fresh.due, fresh.idle, fresh.floor)

    # ---- public API

    def new_state(self) -> ContactState:
        state = ContactState()
        state.due, state.idle, state.floor = self._fresh_timer
        return state

    def apply(self, state: ContactState, event: Event) -> list[Effect]:
        """Score one event. Updates ``state`` in place and returns what happened, in order."""
        event_id = event.id
        if event_id is not None:
            recent = state.recent_ids
            # An array of uint32: `in` scans it in C but boxes every id into an int; compiled,
            # _remember reads (and writes) the ids as C ints instead.
            if _TYPED:
                if PyUnicode_IS_ASCII(event_id):  # noqa: F821 - engine.pxd's
                    # the same crc32, in C from the str's own buffer (engine.pxd)
                    h = ls_crc32(PyUnicode_DATA(event_id), PyUnicode_GET_LENGTH(event_id))  # noqa: F821
                else:
                    h = crc32(event_id.encode())
                if _remember(recent, h):
                    return [Duplicate(event_id)]
            else:
                h = crc32(event_id.encode())
                if h in recent:
                    return [Duplicate(event_id)]
                recent.append(h)
                if len(recent) > RECENT_IDS:
                    del recent[0]
        t = event.ts
        action = event.action  # compiled: struct reads of the Event (a C type, events.pxd)
        if self._action_counters:
            counter = self._action_counters.get(action)
            if counter is not None:
                _count(state, counter, t)
        due = state.due
        if self._needs_advance and (due == _UNKNOWN or due <= t) and state.floor <= t:
            effects: list[Effect] = self.advance(state, t)
        else:  # nothing can cross by t: all advance would do is move last_ts, just below
            effects = []
        if t > state.last_ts:
            state.last_ts = t
        moved = False

        matcher = self._matchers.get(action)
        if matcher is not None:
            if _TYPED and type(matcher) is Where:
                where = matcher  # compiled: Where.match called in C, not through __call__
                hits, stage_ranks = where.match(event.props)
            else:
                hits, stage_ranks = matcher(event.props)
            counted = self._counted
            for r in hits:
                if r.active_from is not None:
                    bound = r.active_from  # compiled: a C double, so t is compared unboxed
                    if t < bound:
                        continue
                if r.active_until is not None:
                    bound = r.active_until
                    if t > bound:
                        continue
                if counted and r.id in counted:  # a count the model reads, no repeat checks
                    _count(state, r.id, t)
                elif _TYPED:  # compiled: the same checks on the trackers' C buffer
                    if r.tracked and not _track_ok(state, r, t):
                        continue
                elif r.tracked:
                    # The repeat tracker, checked inline (`_window_ok` only for {max, per}):
                    # most page hits match a tracked rule, and a call costs as much as the
                    # checks. See ContactState for the layout. Keep _track_ok the same.
                    tracks = state.tracks
                    tracked = state.tracked
                    if r.id in tracked:  # a short tuple of shared ids: found by identity, in C
                        i = tracked.index(r.id) * 3
                    else:
                        i = len(tracks)
                        state.tracked = tracked + (r.id,)  # noqa: RUF005 - no list, as *tracked builds
                        tracks = state.tracks = tracks + _NEW_TRACK
                    count = tracks[i] + 1.0
                    tracks[i] = count
                    previous = tracks[i + 1]
                    if t > previous:
                        tracks[i + 1] = t
                    if r.hits and count < r.hits:
                        continue
                    # NEVER seen before: t - previous is inf, outside any `returns_within`.
                    if r.returns_within is not None and not 0 <= t - previous <= r.returns_within:
                        continue
                    if r.returns_after is not None and (
                        previous == NEVER or t - previous < r.returns_after
                    ):
                        continue
                    kind = r.repeat
                    if kind == REPEAT_COOLDOWN:
                        last = tracks[i + 2]
                        if abs(t - last) < r.cooldown:  # NEVER: inf, no cooldown that long
                            continue
                        if t > last:
                            tracks[i + 2] = t
                    elif kind == REPEAT_ONCE:
                        if tracks[i + 2] != NEVER:
                            continue
                        tracks[i + 2] = 1.0
                    elif kind == REPEAT_WINDOW and not _window_ok(state, r, t):
                        continue
                self._award(state, r.group, r.points, t, r.id, event_id, effects)
                moved = True
        else:
            stage_ranks = ()

        traits = event.traits
        if traits and self._fit_paths:
            moved = self._identify(state, traits, t, event_id, effects) or moved

        for rank in stage_ranks:
            self._move_stage(state, rank, t, action, effects)

        if moved and self._triggers:
            self._evaluate(state, state.last_ts, event, effects)
        return effects

    def advance(self, state: ContactState, t: float) -> list[Effect]:
        """Bring ``state`` to time ``t``: fire every decay crossing due by then, at its due time.

        Called by :meth:`apply` before each event and by the flow's timers, so firings do not
        depend on when (or whether) a timer woke the contact.
        """
        effects: list[Effect] = []
        if not self._needs_advance:
            if t > state.last_ts:
                state.last_ts = t
            return effects
        done: set[tuple[str, float]] | None = None  # made when a first crossing is due
        for _ in range(_MAX_CROSSINGS):  # compiled: a C loop
            if state.due != _UNKNOWN and state.due > t:
                break
            due, trigger = self._next_crossing(state)
            state.due = due
            if trigger is None or due > t:
                break
            if done is None:
                done = set()
            elif (trigger.id, due) in done:
                break  # the same crossing again at the same instant: nothing left to do by t
            done.add((trigger.id, due))
            if due > state.last_ts:
                state.last_ts = due
            self._settle_all(state, due)
            fired = state.triggers.get(trigger.id)
            state.due = _UNKNOWN
            state.floor = -inf
            if not trigger.below:
                _set_trigger(state, trigger.id, -fired)  # type: ignore[operator]  # re-armed by decay
            elif not _below_armed(trigger, fired):
                _set_trigger(state, trigger.id, -_last_fire(trigger, fired) - 1)  # risen: armed
            elif self._after_ok(state, trigger, fired):
                score = self.score(state, trigger.score, due)
                self._fire(state, trigger, score, due, "decay", effects)
            else:
                # Crossed while `after` did not allow it: that crossing is spent.
                _set_trigger(state, trigger.id, _last_fire(trigger, fired))
        if t > state.last_ts:
            state.last_ts = t
        return effects

    def next_due(self, state: ContactState) -> float | None:
        """When decay alone next changes this contact's triggers, or None.

        That is a ``below`` crossing, or a re-arm (``rearm_below``, or a ``below`` trigger
        armed again by a rising score). It is the same cached value :meth:`advance` acts on,
        so a timer set for it always finds work to do.
        """
        if not self._needs_advance:
            return None
        if state.due == _UNKNOWN:
            state.due = self._next_crossing(state)[0]
        return None if state.due == inf else state.due

    def wake_at(self, state: ContactState) -> float | None:
        """When a timer must next look at this contact: :meth:`next_due`, or a moment before.

        After points that only raise scores, the last crossing's floor still bounds the next
        one, so a batch's timers cost nothing to set; the timer that wakes at the floor asks
        :meth:`next_due` and waits on for the exact time if that is later.
        """
        if not self._needs_advance:
            return None
        if state.due == _UNKNOWN and state.floor != -inf:
            return state.floor
        return self.next_due(state)

    def score(self, state: ContactState, name: str, t: float) -> float:
        """A group's score, or the total, as of time ``t``."""
        if name == TOTAL:
            return sum(self._group_score(state, g, t) for g in self._group_names)
        return self._group_score(state, name, t)

    def view(self, contact: str, state: ContactState, at: float | None = None) -> dict[str, Any]:
        """The read model: what personalization and sales need, with scores as of ``at``."""
        return self.view_and_rest(contact, state, at)[0]

    def view_and_rest(
        self, contact: str, state: ContactState, at: float | None = None
    ) -> tuple[dict[str, Any], float | None]:
        """:meth:`view`, and the model's raw sum of every feature but the decaying scores'
        (None: no model, or no feature of it decays), which the stored read model keeps so a
        reader can bring the likelihood to the read (``readmodel.view_at``).

        ``at`` defaults to the contact's last update; a time before it counts as that update
        (scores never un-decay). Decay and expiry are closed form, so this neither changes
        ``state`` nor fires anything: triggers a later ``at`` would cross fire only through
        :meth:`advance`. Normalized score and grade follow the decayed scores.
        ``leadscore.readmodel.view_at`` computes the same bits from the stored read model.
        """
        last = state.last_ts
        t = last if at is None or at < last else at
        scores, total, normalized, grade = self.view_scores(state, t)
        updated_at = format_ts(last) if last else None
        view = {
            "contact": contact,
            "scores": scores,
            "total": total,
            "normalized": normalized,
            "grade": grade,
            "stage": self._stage_order[state.stage] if state.stage >= 0 else None,
            "segments": list(state.segments),
            "tags": list(state.tags),
            "updated_at": updated_at,
            "as_of": updated_at if t == last else format_ts(t) if t else None,
        }
        model = self._model
        if model is None:
            return view, None
        # Once per view (per dirty contact per flush, not per event), as of ``t`` like the
        # scores: decaying scores among its features move it between events too.
        view[self._predict_as], rest = model.of_state(
            state.traits, scores, state.tracked, state.tracks
        )
        return view, rest if model.tail_plan else None

    def view_scores(
        self, state: ContactState, t: float
    ) -> tuple[dict[str, float], float, float | None, str | None]:
        """A view's scores as of ``t`` (no earlier than the contact's last update), their
        total, normalized score and grade: :meth:`view_and_rest`'s arithmetic, shared with
        the final views written without a dict (``records.view_line``)."""
        # round4 is round(x, 4) to the bit, without its decimal round trip: a view is built
        # for every dirty contact at every flush. Each group's score as _group_score reads it
        # (the score plan holds each group's spec values), without a call or a spec read.
        groups = state.groups
        scores = {}
        for name, half_life, expire_after in self._score_plan:
            g = groups.get(name)
            scores[name] = round4(0.0 if g is None else _decayed(g, half_life, expire_after, t))
        # sum() itself, in C: the scores' plain additions from 0 (Python < 3.12: _FLOAT_SUM)
        total = round4(_float_sum(scores) if _FLOAT_SUM else sum(scores.values()))
        normalized = None
        if self._scale_max:  # the rules' scale, read once at start (compiled: C doubles)
            value = total if self._scale_total else scores.get(self._scale_score, 0.0)
            # min(100.0, max(0.0, x)) without the two builtin calls (NaN gives 0.0, as there)
            x = value * 100.0 / self._scale_max
            x = x if x > 0.0 else 0.0
            normalized = _round1(x if x < 100.0 else 100.0)
        grade = None
        if self._grade_plan:  # a loop, not a join over a generator: a view per dirty contact
            grade = ""
            for is_total, group, label, bands in self._grade_plan:
                value = total if is_total else scores.get(group, 0.0)
                for band, minimum in bands:  # GradeBands.grade, inline: two calls per view
                    if value >= minimum:
                        label = band
                        break
                grade += label
        return scores, total, normalized, grade

    # ---- prediction (rules' `predict`)

    def predict_values(self, state: ContactState, t: float) -> list[Any]:
        """The model's inputs for this contact at time ``t``, in the model's feature order."""
        traits = state.traits
        if self._predict_traits_only:
            return [traits.get(key) for key in self._predict_keys]
        tracked, tracks, group_score = state.tracked, state.tracks, self._group_score
        values: list[Any] = []
        append = values.append
        for source, key in self._predict_plan:
            if source == 0:
                append(traits.get(key))
            elif source == 1:  # as the view shows it (round4), which history training reads
                append(round4(group_score(state, key, t)))
            elif key in tracked:  # rule hits: the rules loader checked the rule keeps a tracker
                append(tracks[tracked.index(key) * 3])
            else:
                append(0.0)
        return values

    def likelihood(self, state: ContactState, t: float | None = None) -> float | None:
        """The model's calibrated likelihood to convert, in percent (None without a model)."""
        if self._model is None:
            return None
        return self._model.percent(self.predict_values(state, state.last_ts if t is None else t))

    def explain_likelihood(
        self, state: ContactState, at: float | None = None
    ) -> Explanation | None:
        """Each feature's contribution to this contact's likelihood as of ``at`` (default: its
        last update; None without a model)."""
        if self._model is None:
            return None
        last = state.last_ts
        return self._model.explain(
            self.predict_values(state, last if at is None or at < last else at)
        )

    # ---- scores and decay

    def _group_score(self, state: ContactState, name: str, t: float) -> float:
        g = state.groups.get(name)
        if g is None:
            return 0.0
        spec = self._groups.get(name)
        if spec is None:
            return 0.0
        return _decayed(g, spec.half_life or 0.0, spec.expire_after, t)

    def _may_have_risen(self, state: ContactState) -> bool:
        for name in self._rising_groups:
            g = state.groups.get(name)
            if g is not None and (g[0] < 0 or (len(g) > 2 and any(b[1] < 0 for b in g[2]))):
                return True
        return False

    @staticmethod
    def _settle(spec: GroupSpec, g: list[Any], t: float) -> None:
        """Bring one group to time ``t`` (identify merges use it; see _settle_group)."""
        _settle_group(spec, g, t)

    def _settle_all(self, state: ContactState, t: float) -> None:
        for name, g in state.groups.items():
            spec = self._groups.get(name)
            if spec is not None:
                _settle_group(spec, g, t)

    def _award(
        self,
        state: ContactState,
        group: str,
        points: float,
        t: float,
        rule: str,
        event_id: str | None,
        effects: list[Effect],
    ) -> float:
        spec = self._groups[group]
        g = state.groups.get(group)
        if g is None:
            groups = state.groups
            if groups is NO_GROUPS:
                groups = state.groups = {}
            g = groups[group] = [0.0, t] if spec.expire_after is None else [0.0, t, []]
        else:
            _settle_group(spec, g, t)
        # Compiled, the arithmetic runs on C doubles (the spec's fields and the group's list
        # hold objects; engine.pxd types these locals) and each logged value is boxed once:
        # the change shares the rule's own float for `delta` (and `applied` too when exact)
        # and the group's new score. Interpreted, p is points and applied is points when
        # exact: no name is added for the compiled build alone (_TYPED's branches below).
        p = points
        # A late event (older than the group's clock) counts as decayed since its own time.
        anchor = g[1]
        late = spec.half_life is not None and t < anchor
        if late:
            half_life = spec.half_life
            factor = math.exp2((t - anchor) / half_life)
        else:
            factor = 1.0
        before = g[0]
        after = before + p * factor
        capped = False
        if p > 0:
            if spec.max is not None:
                bound = spec.max
                if after > bound:
                    after, capped = max(before, bound), True
        elif p < 0 and spec.min is not None:
            bound = spec.min
            if after < bound:
                after, capped = min(before, bound), True
        # Exact when nothing clipped or decayed it: the log says +10, not +9.999999999999996.
        applied = p if not capped and factor == 1.0 else (after - before) / factor
        if spec.expire_after is not None and t + spec.expire_after <= g[1]:
            # Earned so long ago that it expired before the contact's clock: it counts in the
            # log (applied) but no longer in the score. Settling moved the group's anchor.
            if not state.idle or state.due != inf or (p < 0 and group in self._rising_set):
                state.due = _UNKNOWN
                if p <= 0:
                    state.floor = -inf
            effects.append(
                _point_change(
                    rule,
                    group,
                    points,
                    points if not capped and factor == 1.0 else applied,
                    before,
                    event_id,
                    t,
                    capped,
                )
                if _TYPED
                else PointChange(rule, group, points, applied, before, event_id, t, capped)
            )
            return applied
        g[0] = after  # compiled: boxed once; the change below shares the box (g[0])
        # Points move crossings, so the cached due goes, unless no trigger can cross at all
        # (idle): then only negative points, which can make a score rise, change that.
        if not state.idle or state.due != inf or (p < 0 and group in self._rising_set):
            state.due = _UNKNOWN
            if p <= 0:  # only added points keep the floor: they cannot bring a fall closer
                state.floor = -inf
        if spec.expire_after is not None and applied:
            expires = t + spec.expire_after
            buckets = g[2]
            # Awards within 1% of the window share a bucket: bounded state, at most ~1% early.
            if buckets and abs(buckets[-1][0] - expires) <= spec.expire_after * 0.01:
                buckets[-1][1] += applied
            else:
                insort(buckets, [expires, applied])
        effects.append(
            _point_change(
                rule,
                group,
                points,
                points if not capped and factor == 1.0 else applied,
                g[0],
                event_id,
                t,
                capped,
            )
            if _TYPED
            else PointChange(rule, group, points, applied, after, event_id, t, capped)
        )
        return applied

    def _next_crossing(self, state: ContactState) -> tuple[float, Trigger | None]:
        """The earliest decay crossing of an armed ``below`` trigger or of a ``rearm_below``."""
        best, best_trigger = inf, None
        triggers = state.triggers
        # Triggers on the same score share its decay profile (usually all are on the total).
        profiles: dict[str, _Profile] = {}
        for trigger in self._decay_rearm:
            fired = triggers.get(trigger.id)
            if fired is None or fired < 0:
                continue  # armed already
            profile = profiles.get(trigger.score)
            if profile is None:
                profile = profiles[trigger.score] = self._profile(state, trigger.score)
            due = _crossing(profile, trigger.rearm_below, False)  # type: ignore[arg-type]
            if due is not None and due < best:
                best, best_trigger = due, trigger
        rising: bool | None = None  # computed when first needed
        for trigger in self._decay_below:
            rise = False
            if not _below_armed(trigger, triggers.get(trigger.id)):
                if rising is None:
                    rising = bool(self._rising_groups) and self._may_have_risen(state)
                if not rising:
                    continue
                rise = True  # a negative part decaying or expiring lifts the score: arm then
            profile = profiles.get(trigger.score)
            if profile is None:
                profile = profiles[trigger.score] = self._profile(state, trigger.score)
            due = _crossing(profile, trigger.threshold, rise)
            if due is not None and due < best:
                best, best_trigger = due, trigger
        state.idle = not profiles  # no trigger could cross whatever the scores: see _award
        # A floor only for falling crossings (a rising one comes sooner with more points), a
        # little under the exact time: a recomputation from other anchors may differ in the
        # last bits. Not for inf: float residue of expiring points may create a crossing.
        if profiles and rising is not True and best != inf:
            state.floor = best - abs(best) * 1e-9 - 1e-3
        else:
            state.floor = -inf
        return best, best_trigger

    def _profile(self, state: ContactState, name: str) -> _Profile:
        """A score's decay as (t0, constant, waves, expiries), from which crossings are solved.

        Solved from the latest anchor of the groups, not from `last_ts`: the answer must be a
        function of what is checkpointed and changes only when the groups do, so a contact
        reloaded mid-run waits for the same instant, to the last bit, as one kept in memory.
        """
        names = self._group_names if name == TOTAL else (name,)
        groups = state.groups
        specs = self._groups
        t0 = 0.0
        for gname in names:
            g = groups.get(gname)
            if g is not None and g[1] > t0:
                t0 = g[1]
        if not t0:
            t0 = state.last_ts
        constant = 0.0
        waves: list[tuple[float, float]] = []  # (score at t0, half-life)
        expiries: list[tuple[float, float]] = []
        for gname in names:
            g = groups.get(gname)
            if g is None:
                continue
            spec = specs.get(gname)
            if spec is None:
                continue
            if spec.half_life is not None:
                s = g[0] * math.exp2((g[1] - t0) / spec.half_life) if t0 > g[1] else g[0]
                waves.append((s, spec.half_life))
            elif spec.expire_after is not None:
                c = g[0]
                for expires, points in g[2]:
                    if expires <= t0:
                        c -= points
                    else:
                        expiries.append((expires, points))
                constant += c
            else:
                constant += g[0]
        expiries.sort()
        return t0, constant, waves, expiries

    # ---- triggers, stages, segments

    def _evaluate(self, state: ContactState, t: float, event: Event, effects: list[Effect]) -> None:
        # Every score a trigger reads (firing a trigger changes no score): the total, summed
        # in the order score() sums it, and a group's own score only for a trigger on it. The
        # same arithmetic as score(), so the same bits. No list of scores: compiled, these
        # are C doubles (a group that is absent adds nothing: a sum from 0.0 is never -0.0).
        groups = state.groups
        total = 0.0
        for name, half_life, expire_after in self._score_plan:
            g = groups.get(name)
            if g is not None:
                total += _decayed(g, half_life, expire_after, t)
        likely = self.likelihood(state, t) if self._watch_predict else 0.0
        n = len(self._score_plan)
        for trigger, index in self._trigger_plan:
            if index == n:
                s = total
            elif index > n:
                s = likely  # type: ignore[assignment]
            else:  # a trigger on one group: its score as summed above
                name, half_life, expire_after = self._score_plan[index]
                g = groups.get(name)
                s = 0.0 if g is None else _decayed(g, half_life, expire_after, t)
            triggers = state.triggers  # not cached: _set_trigger may replace it
            # Most contacts have no trigger state yet (NO_TRIGGERS): no dict read then.
            fired = triggers.get(trigger.id) if triggers else None
            threshold = trigger.threshold  # compiled: a C double, compared without boxing s
            if trigger.below:
                armed = _below_armed(trigger, fired)
                if s >= threshold:
                    if not armed:
                        _set_trigger(state, trigger.id, -_last_fire(trigger, fired) - 1)
                        state.due = _UNKNOWN
                        state.floor = -inf
                elif armed:
                    if self._after_ok(state, trigger, fired):
                        self._fire(state, trigger, s, t, _cause(event, effects), effects)
                    else:
                        # Crossed while `after` did not allow it: that crossing is spent.
                        _set_trigger(state, trigger.id, _last_fire(trigger, fired))
                        state.due = _UNKNOWN
                        state.floor = -inf
            else:
                rearm = trigger.rearm_below
                if fired is not None and fired > 0 and rearm is not None and s < rearm:
                    fired = -fired
                    _set_trigger(state, trigger.id, fired)
                    state.due = _UNKNOWN
                    state.floor = -inf
                if s >= threshold and (fired is None or fired < 0):
                    self._fire(state, trigger, s, t, _cause(event, effects), effects)

    def _after_ok(self, state: ContactState, trigger: Trigger, fired: int | None) -> bool:
        """Whether the `after` trigger has fired since this one last fired."""
        if trigger.after is None:
            return True
        after = self._trigger_by_id[trigger.after]
        other = _last_fire(after, state.triggers.get(trigger.after))
        return other > _last_fire(trigger, fired)

    def _fire(
        self,
        state: ContactState,
        trigger: Trigger,
        score: float,
        t: float,
        cause: str,
        effects: list[Effect],
    ) -> None:
        state.seq += 1
        _set_trigger(state, trigger.id, state.seq)
        state.due = _UNKNOWN
        state.floor = -inf
        effects.append(
            _trigger_fired(trigger.id, round4(score), t, list(trigger.actions), cause)
            if _TYPED
            else TriggerFired(trigger.id, round4(score), t, list(trigger.actions), cause)
        )
        for kind, arg in self._trigger_ops[trigger.id]:
            if kind == "add_segment":
                if arg not in state.segments:
                    state.segments += (arg,)
                    effects.append(SegmentChanged(arg, True, t, trigger.id))
            elif kind == "remove_segment":
                if arg in state.segments:
                    state.segments = tuple([s for s in state.segments if s != arg])
                    effects.append(SegmentChanged(arg, False, t, trigger.id))
            elif kind == "add_tag":
                if arg not in state.tags:
                    state.tags += (arg,)
                    effects.append(TagChanged(arg, True, t, trigger.id))
            elif kind == "remove_tag":
                if arg in state.tags:
                    state.tags = tuple([s for s in state.tags if s != arg])
                    effects.append(TagChanged(arg, False, t, trigger.id))
            elif kind == "set_stage":
                self._move_stage(state, self._stage_order.index(arg), t, trigger.id, effects)
            # notify and webhook change no state: sinks deliver them from the TriggerFired record.

    def _move_stage(
        self, state: ContactState, rank: int, t: float, cause: str, effects: list[Effect]
    ) -> None:
        current = state.stage
        if rank == current or (rank < current and not self._allow_backward):
            return
        state.stage = rank
        previous = self._stage_order[current] if current >= 0 else None
        stage = self._stage_order[rank]
        effects.append(
            _stage_changed(stage, previous, t, cause)
            if _TYPED
            else StageChanged(stage, previous, t, cause)
        )

    def _identify(
        self,
        state: ContactState,
        traits: dict[str, Any],
        t: float,
        event_id: str | None,
        effects: list[Effect],
    ) -> bool:
        """Recompute fit from the current traits, so identifying twice never double counts."""
        known = state.traits
        if known is NO_TRAITS:
            known = {}
        changed = False
        for path in self._fit_paths:
            value = _lookup(traits, path)
            if value is _MISSING:
                continue
            if value is None:
                if path in known:
                    del known[path]
                    changed = True
                continue
            value = _storable(value)
            if known.get(path, _MISSING) != value:
                known[path] = value
                changed = True
        if not changed:
            return False
        state.traits = known
        moved = self._watch_predict  # the likelihood may have moved: triggers watch it
        before = state.fit
        hits = []  # a loop, not a generator: compiled, no closure per identify
        for r in self._fit:
            if r.test(known.get(r.trait)):
                hits.append(r.id)
        matched = tuple(hits)
        for r in self._fit:
            now = r.id in matched  # a few ids, in a short tuple
            if now != (r.id in before):
                points = r.points if now else -r.points
                self._award(state, r.group, points, t, r.id, event_id, effects)
                moved = True
        state.fit = matched
        return moved


# --------------------------------------------------------------------------- helpers


def _remember(recent: array[int], h: int) -> bool:
    """Whether ``h`` is among a state's recent ids, remembering it when not (the oldest
    dropped beyond RECENT_IDS), compiled only (``_TYPED``): C loops over the array's buffer
    (engine.pxd types ``recent`` as Cython's ``array.array``), where ``h in recent`` boxes
    every id into an int and ``append`` parses its argument. Interpreted, apply's own
    ``in``/``append``/``del`` are the faster, so this body never runs as Python."""
    ids = recent.data.as_uints  # type: ignore[attr-defined]  # the C buffer (compiled only)
    n = len(recent)
    for i in range(n):  # a C loop compiled
        if ids[i] == h:
            return True
    if n < RECENT_IDS:
        resize_smart(recent, n + 1)  # noqa: F821 - cpython.array's, cimported by engine.pxd
        ids = recent.data.as_uints  # type: ignore[attr-defined]  # it may have moved
        ids[n] = h
    else:  # as append then `del recent[0]`: the ids move down one, h goes last
        for i in range(n - 1):
            ids[i] = ids[i + 1]
        ids[n - 1] = h
    return False


def _float_sum(scores: dict[str, float]) -> float:
    """``sum(scores.values())`` of float values, as Python before 3.12 adds them: 0 plus
    each value in turn (0 + x is 0.0 + x). Compiled only (``_FLOAT_SUM``), as a C loop."""
    total = 0.0
    for value in scores.values():
        total += value
    return total


def _round1(x: float) -> float:
    """``round(x, 1)`` for a view's normalized score (0 <= x <= 100), without round()'s
    decimal round trip (~1.5k instructions a call), as ``round4`` does for four places: y = x
    * 10 is off the exact product by at most 2**-43 there, so when y is clearly not half-way
    between integers, q is the nearest integer to the exact 10x and q / 10 (correctly rounded)
    is the double round() returns. tests/test_engine_properties.py checks it."""
    y = x * 10.0
    q = int(y + 0.5)  # y >= 0: truncation is floor
    if -0.499 < y - q < 0.499:
        return q / 10
    return round(x, 1)


def _point_change(
    rule: str,
    group: str,
    delta: float,
    applied: float,
    score_after: float,
    event_id: str | None,
    at: float,
    capped: bool,
) -> PointChange:
    """``PointChange(...)`` without its ``__init__``'s argument parsing, compiled only
    (``_TYPED``: the fields are struct members written in C); interpreted, ``_award`` calls
    the dataclass and this body never runs."""
    change = PointChange.__new__(PointChange)
    change.rule = rule
    change.group = group
    change.delta = delta
    change.applied = applied
    change.score_after = score_after
    change.event_id = event_id
    change.at = at
    change.capped = capped
    change.reason = None
    return change


def _trigger_fired(
    trigger: str, score: float, at: float, actions: list[dict[str, str]], cause: str
) -> TriggerFired:
    """``TriggerFired(...)`` with its C fields written, compiled only (as _point_change)."""
    fired = TriggerFired.__new__(TriggerFired)
    fired.trigger = trigger
    fired.score = score
    fired.at = at
    fired.actions = actions
    fired.cause = cause
    return fired


def _stage_changed(stage: str, previous: str | None, at: float, cause: str) -> StageChanged:
    """``StageChanged(...)`` with its C fields written, compiled only (as _point_change)."""
    change = StageChanged.__new__(StageChanged)
    change.stage = stage
    change.previous = previous
    change.at = at
    change.cause = cause
    return change


def _track_ok(state: ContactState, r: Any, t: float) -> bool:
    """A tracked rule's hit counted and its repeat checks (whether it earns its points),
    compiled only (``_TYPED``): apply's inline block, with the trackers' doubles read and
    written through the array's C buffer (engine.pxd types ``tracks`` as Cython's
    ``array.array``), where ``tracks[i] = x`` parses its argument like a Python call.
    Interpreted, apply runs its inline block and this body never runs: keep the two alike."""
    key = r.id
    tracked = state.tracked
    n = len(tracked)
    i = -1
    for k in range(n):  # tracked.index(key): the rule's own id object, found by identity
        if tracked[k] is key:
            i = k * 3
            break
    else:
        for k in range(n):  # an equal id from elsewhere (a state read back from storage)
            if key == tracked[k]:  # compiled: key is a typed str, compared in C
                i = k * 3
                break
    if i < 0:
        i = len(state.tracks)
        state.tracked = tracked + (key,)  # noqa: RUF005 - no list, as *tracked builds
        state.tracks = state.tracks + _NEW_TRACK
    tracks = state.tracks
    cells = tracks.data.as_doubles  # type: ignore[attr-defined]  # the C buffer (compiled only)
    count = cells[i] + 1.0
    cells[i] = count
    previous = cells[i + 1]
    if t > previous:
        cells[i + 1] = t
    if r.hits and count < r.hits:  # an int: compared as one (a C double would box it)
        return False
    # NEVER seen before: t - previous is inf, outside any `returns_within`.
    if r.returns_within is not None:
        bound = r.returns_within  # compiled: C doubles (the rule's fields are objects)
        if not 0 <= t - previous <= bound:
            return False
    if r.returns_after is not None:
        bound = r.returns_after
        if previous == NEVER or t - previous < bound:
            return False
    kind = r.repeat
    if kind == REPEAT_COOLDOWN:
        last = cells[i + 2]
        cooldown = r.cooldown  # compiled: a C double, so the test boxes nothing
        if abs(t - last) < cooldown:  # NEVER: inf, no cooldown that long
            return False
        if t > last:
            cells[i + 2] = t
    elif kind == REPEAT_ONCE:
        if cells[i + 2] != NEVER:
            return False
        cells[i + 2] = 1.0
    elif kind == REPEAT_WINDOW and not _window_ok(state, r, t):
        return False
    return True


def _decayed(g: list[Any], half_life: float, expire_after: float | None, t: float) -> float:
    """A group's score ``[score, as_of, buckets]`` as of ``t`` (``half_life`` 0.0: it does
    not halve), without moving it: what ``_evaluate``, ``score`` and the views read. One
    copy of the arithmetic, so every reader gets the same bits (``readmodel.view_at``
    repeats it for stored documents); compiled, an inline C function on C doubles."""
    score = g[0]
    if half_life:
        anchor = g[1]
        if t > anchor:
            score *= math.exp2((anchor - t) / half_life)
    elif expire_after is not None:
        for expires, points in g[2]:
            if expires > t:
                break
            score -= points
    return score


def _settle_group(spec: GroupSpec, g: list[Any], t: float) -> None:
    """Decay or expire a group's score to time ``t`` and move its clock there. A function,
    not a method: compiled, the engine calls it in C."""
    if t <= g[1]:
        return
    if spec.half_life is not None:
        g[0] *= math.exp2((g[1] - t) / spec.half_life)
    elif spec.expire_after is not None:
        buckets = g[2]
        while buckets and buckets[0][0] <= t:
            g[0] -= buckets.pop(0)[1]
        if not buckets:
            g[0] = 0.0  # no float residue once every award has expired
    g[1] = t


def _count(state: ContactState, key: str, t: float) -> None:
    """One more hit on a plain counter (a rule or an action the model reads): the tracker's
    layout, so the codec and merge treat it as any tracker (hits add on a merge)."""
    tracked = state.tracked
    if key in tracked:
        i = tracked.index(key) * 3
        tracks = state.tracks
    else:
        i = len(state.tracks)
        state.tracked = tracked + (key,)  # noqa: RUF005 - no list, as *tracked builds
        tracks = state.tracks = state.tracks + _NEW_TRACK
    tracks[i] += 1.0
    if t > tracks[i + 1]:
        tracks[i + 1] = t


def _set_trigger(state: ContactState, trigger: str, packed: int) -> None:
    """Write a trigger's state, giving the contact its own dict in place of NO_TRIGGERS."""
    triggers = state.triggers
    if triggers is NO_TRIGGERS:
        triggers = state.triggers = {}
    triggers[trigger] = packed


def _window_ok(state: ContactState, r: Any, t: float) -> bool:
    """The `{max, per}` repeat kind: at most N awards in any window of length `per`."""
    windows = state.windows
    # A membership test, not try/except ValueError: compiled, an exception costs a traceback.
    if r.id in windows:
        awards: array[float] = windows[windows.index(r.id) + 1]  # type: ignore[assignment]
    elif _TYPED:  # compiled: a new empty array('d') in C, not array("d") through Python
        awards = clone(_NO_TRACKS, 0, False)  # noqa: F821 - cpython.array's (engine.pxd)
        state.windows = windows + (r.id, awards)  # noqa: RUF005 - no list in between
    else:
        awards = array("d")
        state.windows = windows + (r.id, awards)  # noqa: RUF005 - no list in between
    # Only the newest N are kept, so an event older than all of them is refused: what was
    # dropped might have been near it.
    if len(awards) >= r.repeat_max:
        if t - awards[0] < r.repeat_per:
            return False
        del awards[0]
    # The newest time is appended, as insort would, without the call.
    if _TYPED:  # compiled: written in the C buffer (no `append` call parsing t)
        n = len(awards)
        if not n or t >= awards[n - 1]:
            resize_smart(awards, n + 1)  # noqa: F821 - cpython.array's (engine.pxd)
            awards.data.as_doubles[n] = t  # type: ignore[attr-defined]
            return True
    elif not awards or t >= awards[-1]:
        awards.append(t)
        return True
    insort(awards, t)
    return True


def _last_fire(trigger: Trigger, packed: int | None) -> int:
    """The sequence number of a trigger's last firing (0: never); see ContactState."""
    if packed is None:
        return 0
    if trigger.below:
        return packed if packed >= 0 else -packed - 1
    return abs(packed)


def _below_armed(trigger: Trigger, packed: int | None) -> bool:
    if packed is None:
        return trigger.threshold <= 0  # the starting score 0 is at or above it
    return packed < 0


_Profile = tuple[float, float, list[tuple[float, float]], list[tuple[float, float]]]


def _crossing(profile: _Profile, threshold: float, rising: bool) -> float | None:
    """First time decay alone takes a score under ``threshold`` (or, rising, to it).

    Closed form between award expiries when one half-life drives the score; bisection when
    several half-lives mix. Rising happens when negative points decay or expire.
    """
    t0, constant, waves, expiries = profile
    # At the start, "already there" needs a clear margin: a score that sits on the threshold
    # within float noise has just crossed it and must not bounce back and forth.
    margin = _EPSILON * max(1.0, abs(threshold))
    if not expiries and len(waves) <= 1:  # the common case, without closures
        wave = waves[0][0] if waves else 0.0
        v = constant + wave
        if (v > threshold + margin) if rising else (v < threshold - margin):
            return t0
        if not waves:
            return None
        return _wave_crossing(wave, waves[0][1], constant, threshold, t0, rising)
    if len(waves) <= 1:  # award expiries and at most one half-life: no closures either
        return _expiry_crossing(t0, constant, waves, expiries, threshold, rising)
    return _mixed_crossing(profile, threshold, rising)


def _expiry_crossing(
    t0: float,
    constant: float,
    waves: list[tuple[float, float]],
    expiries: list[tuple[float, float]],
    threshold: float,
    rising: bool,
) -> float | None:
    """:func:`_mixed_crossing` when at most one half-life drives the score, step for step
    without its closures (compiled: C doubles). ``value`` there is ``c`` plus ``sum()`` of
    one wave's term, which is that term (or no term: 0), so the comparisons see the same
    values; the times it returns are ``t0``, a boundary or ``_solve``'s closed form."""
    margin = _EPSILON * max(1.0, abs(threshold))
    one = len(waves) == 1
    wave = half_life = 0.0
    if one:
        wave, half_life = waves[0]
    start = t0
    v = constant + wave if one else constant  # value(t0, constant): exp2(0) is 1
    if (v > threshold + margin) if rising else (v < threshold - margin):
        return start
    for boundary, points in expiries:
        if one:  # _solve with one wave
            found = _wave_crossing(wave, half_life, constant, threshold, t0, rising)
            if found is not None:
                due = found  # compiled: a C double
                if not due > start:  # max(start, due)
                    due = start
                if due < boundary:
                    return due
        if boundary == inf:
            return None
        constant -= points
        v = constant + wave * math.exp2((t0 - boundary) / half_life) if one else constant
        if (v >= threshold) if rising else (v < threshold):
            return boundary
        start = boundary
    if one:  # the last stretch, to inf
        found = _wave_crossing(wave, half_life, constant, threshold, t0, rising)
        if found is not None:
            due = found
            if not due > start:
                due = start
            if due < inf:
                return due
    return None


def _mixed_crossing(profile: _Profile, threshold: float, rising: bool) -> float | None:
    """:func:`_crossing` when award expiries or several half-lives shape the score (a
    function of its own: compiled, its closures stay out of the common case's C function)."""
    t0, constant, waves, expiries = profile
    margin = _EPSILON * max(1.0, abs(threshold))

    def reached(v: float) -> bool:
        return v >= threshold if rising else v < threshold

    def value(t: float, c: float) -> float:
        return c + sum(s * math.exp2((t0 - t) / h) for s, h in waves)

    start = t0
    v = value(start, constant)
    if (v > threshold + margin) if rising else (v < threshold - margin):
        return start
    for boundary, points in [*expiries, (inf, 0.0)]:
        due = _solve(waves, constant, threshold, rising, t0, start, boundary, value)
        if due is not None:
            return due
        if boundary == inf:
            return None
        constant -= points
        if reached(value(boundary, constant)):
            return boundary
        start = boundary
    return None


def _wave_crossing(
    wave: float, half_life: float, constant: float, threshold: float, t0: float, rising: bool
) -> float | None:
    """When constant + wave * 2^-(t - t0)/h meets threshold, moving the asked way."""
    if (wave < 0) != rising or wave == 0:
        return None  # a positive wave only falls, a negative one only rises
    ratio = (threshold - constant) / wave
    if not 0 < ratio <= 1 + _EPSILON:
        return None  # the asymptote (constant) never gets there
    # Within float noise of the threshold already: the crossing is now, not a hair later (a
    # timer a hair later would move the contact's clock by noise, differently per run).
    return t0 + half_life * math.log2(1 / ratio) if ratio < 1 - _EPSILON else t0


def _solve(
    waves: list[tuple[float, float]],
    constant: float,
    threshold: float,
    rising: bool,
    t0: float,
    start: float,
    end: float,
    value: Any,
) -> float | None:
    """Time in [start, end) when constant + the waves first reach the threshold."""
    if not waves:
        return None
    if len(waves) == 1:
        due = _wave_crossing(waves[0][0], waves[0][1], constant, threshold, t0, rising)
        if due is None:
            return None
        due = max(start, due)
        return due if due < end else None

    def reached(t: float) -> bool:
        v = value(t, constant)
        return v >= threshold if rising else v < threshold

    hi = min(end, start + 64 * max(h for _, h in waves))  # 2^-64 of any wave is nothing left
    if not reached(hi):
        return None
    lo = start
    for _ in range(80):
        mid = (lo + hi) / 2
        if reached(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _storable(value: Any) -> Any:
    """A trait value as state keeps it: a bounded scalar that msgpack can always write."""
    if isinstance(value, str):
        return value[:MAX_TRAIT_CHARS]
    if isinstance(value, (bool, float)):  # a tuple: compiled, tested in C
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else float(value)
    return str(value)[:MAX_TRAIT_CHARS]


def _lookup(data: dict[str, Any], path: str) -> Any:
    if path in data:
        return data[path]
    value: Any = data
    for key in path.split("."):
        if type(value) is not dict or key not in value:
            return _MISSING
        value = value[key]
    return value


def _cause(event: Event, effects: list[Effect]) -> str:
    # A list, not a generator: compiled, no generator object per firing; a C function.
    changes = ", ".join(
        [f"{e.rule} {e.applied:+g}" for e in effects if type(e) is PointChange and e.applied]
    )
    origin = f"{event.action} {event.id}" if event.id else event.action
    return f"{origin}: {changes}" if changes else origin
