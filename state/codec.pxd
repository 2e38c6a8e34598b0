# Cython declarations for state/codec.py (pure-Python mode: the .py is the source).
# Compiled, encode and decode (once per dirty or loaded contact) and their helpers run
# without the interpreter's bytecode loop; the format is the same bytes.
cimport cython
