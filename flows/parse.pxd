# Cython declarations for flows/parse.py (pure-Python mode: the .py is the source).
cimport cython
from leadscore.events cimport Event

@cython.final
cdef class Parser:
    cdef public object rules
    cdef public object groups
    cdef public long shards
    cdef public double max_future
    cdef public dict clocks
    cdef public list keys
    cdef public dict shard_of_contact
    cdef public object decode
