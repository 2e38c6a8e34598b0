# Cython declarations for flows/shards.py (pure-Python mode: the .py is the source).
# ShardLogic subclasses Bytewax's StatefulBatchLogic, a Python class, so it stays a Python
# class: its methods still compile to C, its attributes stay in its __dict__.
cimport cython
from leadscore.events cimport Event
from leadscore.records cimport effect_line, view_line

cpdef long shard_of(str contact, long shards)

from leadscore.engine cimport ContactState, Engine

@cython.locals(engine=Engine, contacts=dict, touched=set, state=ContactState, effects=list,
               scored=long, duplicates=long, event=Event, out=dict, merged=dict)
cpdef void score_events(object logic, list items)

cpdef void schedule_timer(Engine engine, list timers, dict due_of, double clock, str contact,
                          ContactState state)

@cython.locals(lines=list)
cpdef void record_effects(dict out, object fired, str contact, list effects)

@cython.locals(state=ContactState)
cpdef list final_views(Engine engine, dict contacts, object at)
