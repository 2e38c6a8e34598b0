# Cython declarations for leadscore/typed.py (pure-Python mode: the .py is the source).
cimport cython
from leadscore.events cimport Event, ts_seconds

cdef Py_ssize_t _MAX_CONTACT, _MAX_BYTES
cdef bint _LENGTHS_AFTER

@cython.locals(out=list, event=Event, ts=cython.double, contact=str, action=str,
               size=Py_ssize_t, lengths=bint)
cpdef list parse_events(object lines, object now, double latest=*, bint ended=*,
                        object decode=*)
