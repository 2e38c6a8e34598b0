# Cython declarations for state/codec.py (pure-Python mode: the .py is the source).
# Compiled, encode and decode (once per dirty or loaded contact) and their helpers run
# without the interpreter's bytecode loop; the format is the same bytes. encode calls its
# helpers in C (its state stays an object: tests pass the interpreted engine's states too).
cimport cython

cpdef bytes encode(object state)

cpdef object _windows_to_map(tuple windows)

cpdef bytes _to_bytes(object values)
