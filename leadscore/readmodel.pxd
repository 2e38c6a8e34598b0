# Cython declarations for leadscore/readmodel.py (pure-Python mode: the .py is the source).
# DocumentWriter stays a Python class; compiled, its methods and view_at run without the
# interpreter's bytecode loop (a read model is built per dirty contact per checkpoint), and
# _encode writes a document with the records' C JSON writer (records.pxd) from the engine's
# view scores, without the view's dict.
cimport cython

from leadscore.engine cimport ContactState, Engine
from leadscore.records cimport _c_dump_parts, view_values

cdef bint _WRITER
cdef unsigned long _DOCUMENT_TIMES

cpdef dict _document(Engine engine, object fragment, object contact, ContactState state)

@cython.locals(last=cython.double, tail=tuple, head=tuple)
cpdef bytes _encode(Engine engine, object fragment, tuple frags, object contact,
                    ContactState state)
