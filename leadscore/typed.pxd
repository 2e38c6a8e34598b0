# Cython declarations for leadscore/typed.py (pure-Python mode: the .py is the source).
cimport cython
from leadscore.events cimport parse_ts

@cython.locals(out=list)
cpdef list parse_events(object lines, object now, double latest=*)
