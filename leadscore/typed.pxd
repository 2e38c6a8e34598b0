# Cython declarations for leadscore/typed.py (pure-Python mode: the .py is the source).
cimport cython
from leadscore.events cimport Event, ts_seconds

@cython.locals(out=list, event=Event, ts=cython.double)
cpdef list parse_events(object lines, object now, double latest=*)
