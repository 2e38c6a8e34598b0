# Cython declarations for leadscore/events.py (pure-Python mode: the .py is the source).
# Only the per-record and per-event helpers are typed; parameters that a caller may pass as
# any Python number stay objects, so what they return keeps its Python type.
cimport cython

@cython.locals(y=cython.double, q=cython.double)
cpdef object round4(object x)

@cython.locals(last=tuple, whole=cython.longlong, z=cython.double, us=cython.longlong,
               hour=cython.longlong, rest=cython.longlong, prefix=str, text=str)
cpdef str format_ts(double ts)

@cython.locals(ts=cython.double)
cpdef object parse_ts(object value, object now, double latest=*)
