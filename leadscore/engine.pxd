# Cython declarations for leadscore/engine.py (pure-Python mode: the .py is the source).
# Only read when the engine is compiled (setup.py); Python never sees this file.
cimport cython
from cpython.array cimport array, clone, resize_smart
# engine.py's `import math`: compiled, math.exp2 and math.log2 are libm's (the same functions
# CPython's math module calls, so the same bits), without a Python call or boxing.
from libc cimport math
from leadscore.rules cimport ActionRule, FitRule, GroupSpec, Trigger
from leadscore.events cimport Event, format_ts, round4
from leadscore.matchers cimport Where

# Compiled only: zlib.crc32 of an ASCII event id, read from the str's own buffer (an ASCII
# str's characters are its UTF-8 bytes): no `encode` copy, no Python call, the same value
# (CRC-32/ISO-HDLC, zlib's; tests/test_engine_properties.py checks it against zlib.crc32).
cdef extern from *:
    """
    static unsigned int ls_crc_table[256];
    static int ls_crc_ready = 0;

    static CYTHON_INLINE unsigned int ls_crc32(const void *data, Py_ssize_t n) {
        const unsigned char *p = (const unsigned char *)data;
        unsigned int c = 0xFFFFFFFFu;
        if (!ls_crc_ready) {  /* the same table whichever thread fills it first */
            unsigned int i, k, v;
            for (i = 0; i < 256; i++) {
                v = i;
                for (k = 0; k < 8; k++) v = (v & 1u) ? 0xEDB88320u ^ (v >> 1) : v >> 1;
                ls_crc_table[i] = v;
            }
            ls_crc_ready = 1;
        }
        while (n-- > 0) c = ls_crc_table[(c ^ *p++) & 0xFFu] ^ (c >> 8);
        return c ^ 0xFFFFFFFFu;
    }
    """
    unsigned int ls_crc32(const void *data, Py_ssize_t n)
    bint PyUnicode_IS_ASCII(object text)
    const void *PyUnicode_DATA(object text)
    Py_ssize_t PyUnicode_GET_LENGTH(object text)

# Effects: C types (fields untyped, so values keep their Python types and outputs their bytes).
@cython.final
cdef class PointChange:
    cdef public object rule, group, delta, applied, score_after, event_id, at, capped, reason

@cython.final
cdef class TriggerFired:
    cdef public object trigger, score, at, actions, cause

@cython.final
cdef class StageChanged:
    cdef public object stage, previous, at, cause

@cython.final
cdef class SegmentChanged:
    cdef public object segment, added, at, cause

@cython.final
cdef class TagChanged:
    cdef public object tag, added, at, cause

@cython.final
cdef class Duplicate:
    cdef public object event_id

@cython.final
cdef class ContactState:
    cdef public dict groups
    cdef public tuple tracked
    cdef public object tracks
    cdef public tuple windows
    cdef public dict triggers
    cdef public object seq
    cdef public long stage
    cdef public tuple segments
    cdef public tuple tags
    cdef public dict traits
    cdef public tuple fit
    cdef public double last_ts
    cdef public object recent_ids
    cdef public double due
    cdef public bint idle
    cdef public double floor


@cython.final
cdef class Engine:
    cdef public object rules
    cdef dict _groups
    cdef tuple _group_names
    cdef dict _matchers
    cdef tuple _stage_order
    cdef bint _allow_backward
    cdef tuple _fit
    cdef object _model
    cdef str _predict_as
    cdef tuple _fit_paths
    cdef tuple _predict_plan
    cdef tuple _predict_keys
    cdef frozenset _counted
    cdef dict _action_counters
    cdef bint _predict_traits_only
    cdef bint _watch_predict
    cdef tuple _grade_bands
    cdef double _scale_max
    cdef bint _scale_total
    cdef str _scale_score
    cdef tuple _grade_plan
    cdef tuple _triggers
    cdef dict _trigger_by_id
    cdef dict _trigger_ops
    cdef tuple _decay_below
    cdef tuple _decay_rearm
    cdef bint _needs_advance
    cdef tuple _rising_groups
    cdef tuple _below
    cdef frozenset _rising_set
    cdef tuple _score_plan
    cdef tuple _trigger_plan
    cdef tuple _fresh_timer

    @cython.locals(t=cython.double, due=cython.double, moved=bint, i=Py_ssize_t,
                   count=cython.double, previous=cython.double, last=cython.double,
                   r=ActionRule, event_id=str, action=str, where=Where, h="unsigned int",
                   bound=cython.double)
    cpdef list apply(self, ContactState state, Event event)

    @cython.locals(trigger=Trigger, _=Py_ssize_t, done=set, due=cython.double)
    cpdef list advance(self, ContactState state, double t)

    @cython.locals(spec=GroupSpec)
    cpdef double _group_score(self, ContactState state, str name, double t)

    @cython.locals(before=cython.double, after=cython.double, factor=cython.double,
                   applied=cython.double, capped=bint, late=bint, expires=cython.double,
                   spec=GroupSpec, p=cython.double, anchor=cython.double,
                   half_life=cython.double, bound=cython.double)
    cpdef double _award(self, ContactState state, str group, object points, double t,
                        str rule, object event_id, list effects)

    @cython.locals(s=cython.double, trigger=Trigger, total=cython.double,
                   half_life=cython.double, g=list, likely=cython.double, n=Py_ssize_t,
                   index=Py_ssize_t, threshold=cython.double, triggers=dict)
    cpdef void _evaluate(self, ContactState state, double t, object event, list effects)

    cpdef bint _after_ok(self, ContactState state, Trigger trigger, object fired)

    cpdef void _fire(self, ContactState state, Trigger trigger, object score, double t,
                     str cause, list effects)

    @cython.locals(known=dict, changed=bint, moved=bint, before=tuple, hits=list,
                   matched=tuple, now=bint, r=FitRule)
    cpdef bint _identify(self, ContactState state, dict traits, double t, object event_id,
                         list effects)


    @cython.locals(current=long)
    cpdef void _move_stage(self, ContactState state, long rank, double t, str cause, list effects)


    @cython.locals(best=cython.double, trigger=Trigger)
    cpdef tuple _next_crossing(self, ContactState state)

    @cython.locals(t0=cython.double, constant=cython.double, s=cython.double, c=cython.double,
                   expires=cython.double, points=cython.double, spec=GroupSpec, names=tuple,
                   groups=dict, specs=dict, waves=list, expiries=list)
    cpdef tuple _profile(self, ContactState state, str name)


    cpdef void _settle_all(self, ContactState state, double t)

    # The flows' timers ask these once per touched contact per batch (flows/shards.py).
    cpdef object next_due(self, ContactState state)
    cpdef object wake_at(self, ContactState state)

    # A view per contact at the end of a file run, per dirty contact per checkpoint live.
    cpdef dict view(self, object contact, ContactState state, object at=*)
    @cython.locals(last=cython.double, t=cython.double)
    cpdef tuple view_and_rest(self, object contact, ContactState state, object at=*)
    @cython.locals(groups=dict, scores=dict, total=cython.double, value=cython.double,
                   x=cython.double, minimum=cython.double, is_total=bint, grade=str)
    cpdef tuple view_scores(self, ContactState state, double t)


cdef bint _TYPED
cdef bint _FLOAT_SUM

@cython.locals(total=cython.double, value=cython.double)
cdef double _float_sum(dict scores) except? -1

@cython.locals(ids="unsigned int *", i=Py_ssize_t, n=Py_ssize_t)
cdef bint _remember(array recent, unsigned int h) except -1

@cython.locals(y=cython.double, q=cython.longlong)
cpdef double _round1(double x)

@cython.locals(change=PointChange)
cdef PointChange _point_change(str rule, str group, object delta, object applied,
                               object score_after, object event_id, object at, bint capped)

@cython.locals(fired=TriggerFired)
cdef TriggerFired _trigger_fired(str trigger, object score, double at, list actions, str cause)

@cython.locals(change=StageChanged)
cdef StageChanged _stage_changed(str stage, object previous, double at, str cause)

@cython.locals(key=str, tracked=tuple, n=Py_ssize_t, i=Py_ssize_t, k=Py_ssize_t,
               tracks=array, cells="double *", count=cython.double, previous=cython.double,
               last=cython.double, kind=long, cooldown=cython.double, bound=cython.double)
cdef bint _track_ok(ContactState state, ActionRule r, double t) except -1

# The one copy of a group's decay arithmetic (_evaluate, _group_score): a static C function.
@cython.locals(score=cython.double, anchor=cython.double, expires=cython.double,
               points=cython.double)
cdef double _decayed(list g, double half_life, object expire_after, double t) except? -1

@cython.locals(buckets=list)
cpdef void _settle_group(GroupSpec spec, list g, double t)

cpdef void _set_trigger(ContactState state, str trigger, object packed)

@cython.locals(awards=array, n=Py_ssize_t)
cpdef bint _window_ok(ContactState state, ActionRule r, double t)

cpdef object _last_fire(Trigger trigger, object packed)

cpdef bint _below_armed(Trigger trigger, object packed)

@cython.locals(t0=cython.double, constant=cython.double, margin=cython.double,
               wave=cython.double, v=cython.double, waves=list, expiries=list)
cpdef object _crossing(tuple profile, double threshold, bint rising)

@cython.locals(margin=cython.double, one=bint, wave=cython.double, half_life=cython.double,
               start=cython.double, v=cython.double, boundary=cython.double,
               points=cython.double, due=cython.double)
cdef object _expiry_crossing(double t0, double constant, list waves, list expiries,
                             double threshold, bint rising)

# A firing's cause text: a C function (a firing per ~25 applies in the hot-path mix).
cdef str _cause(object event, list effects)

@cython.locals(ratio=cython.double)
cpdef object _wave_crossing(double wave, double half_life, double constant, double threshold,
                            double t0, bint rising)

cdef double _EPSILON

cdef object _lookup(dict data, str path)

cdef object _storable(object value)
