# Cython declarations for leadscore/readmodel.py (pure-Python mode: the .py is the source).
# DocumentWriter stays a Python class; compiled, its methods and view_at run without the
# interpreter's bytecode loop (a read model is built per dirty contact per checkpoint).
cimport cython

from leadscore.engine cimport ContactState, Engine

cpdef dict _document(Engine engine, object fragment, object contact, ContactState state)
