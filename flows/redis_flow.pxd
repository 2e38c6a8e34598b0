# Cython declarations for flows/redis_flow.py (pure-Python mode: the .py is the source).
# Its classes stay Python classes (PartitionLogic subclasses ShardLogic, Bytewax's
# StatefulBatchLogic; the rest subclass Bytewax's sources and sinks): compiled, their methods
# run as C without the interpreter's bytecode loop, their attributes stay in their __dict__.
# PartitionLogic's entry loops (parse, apply) type their locals with @cython.locals.
cimport cython
from leadscore.events cimport Event
