# Cython declarations for leadscore/events.py (pure-Python mode: the .py is the source).
# Only the per-record and per-event helpers are typed; parameters that a caller may pass as
# any Python number stay objects, so what they return keeps its Python type.
cimport cython

# The event: a C struct its producers (typed.py) write and the engine reads. contact and action
# are exact str (the parsers only make those); id, props, traits and merge keep whatever a
# caller gives, as the Python class does; ts is a C double, as the engine reads it.
@cython.final
cdef class Event:
    cdef public str contact
    cdef public str action
    cdef public double ts
    cdef public object id
    cdef public object props
    cdef public object traits
    cdef public object merge

# The formatting and calendar tables: C globals, read without a module dict lookup.
cdef dict _HOURS
cdef long _HOURS_MAX
cdef tuple _MINUTES_SECONDS, _MILLIS, _DAYS_BEFORE_MONTH, _DAYS_IN_MONTH
cdef list _LAST_FORMATTED
cdef long _EPOCH_DAY, _DIGIT_AT
cdef bint _BY_HAND

@cython.locals(y=cython.double, q=cython.longlong)
cpdef object round4(object x)

@cython.locals(last=tuple, whole=cython.longlong, z=cython.double, us=cython.longlong,
               hour=cython.longlong, rest=cython.longlong, prefix=str, text=str)
cpdef str format_ts(double ts)

@cython.locals(ts=cython.double)
cpdef object parse_ts(object value, object now, double latest=*)

@cython.locals(ts=cython.double)
cpdef double ts_seconds(object value, object now, double latest=*)

@cython.locals(n=Py_ssize_t, millis=long, year=long, month=long, day=long, hour=long,
               minute=long, second=long, value=long, k=long, i=Py_ssize_t, c=Py_UCS4,
               leap=bint, month_days=long, before=long, days=long, before_month=long,
               micros=cython.longlong)
cpdef double utc_text_seconds(str text)
