# Cython declarations for state/resp.py (pure-Python mode: the .py is the source).
# Compiled, pack_command's loop runs in C: type checks by pointer, the length headers read
# from a C-level list, one bytes.join at the end.
cimport cython

cdef Py_ssize_t _CACHED
cdef list _HEADERS

cdef bytes _header(Py_ssize_t n)

@cython.locals(pieces=list, data=bytes, kind=object, text=str)
cpdef bytes pack_command(object args)
