# Cython declarations for flows/redis_flow.py (pure-Python mode: the .py is the source).
# Its classes stay Python classes (PartitionLogic subclasses ShardLogic, Bytewax's
# StatefulBatchLogic; the rest subclass Bytewax's sources and sinks): compiled, their methods
# run as C without the interpreter's bytecode loop, their attributes stay in their __dict__.
cimport cython
