# Cython declarations for leadscore/rules.py (pure-Python mode: the .py is the source).
# The rule types the engine reads on every event, as C types: their fields are read as
# struct members instead of attribute lookups. Fields stay untyped (object), so every value
# keeps the Python type it had and outputs keep their bytes.
cimport cython

@cython.final
cdef class GroupSpec:
    cdef public object name, half_life, expire_after, max, min

@cython.final
cdef class ActionRule:
    cdef public object id, on, points, group, where, repeat, repeat_max, repeat_per, cooldown
    cdef public object hits, returns_within, returns_after, active_from, active_until
    cdef public object name, description, category, tracked, match, conds

@cython.final
cdef class FitRule:
    cdef public object id, trait, test, points, group

@cython.final
cdef class Trigger:
    cdef public object id, score, threshold, below, actions, rearm_below, after
