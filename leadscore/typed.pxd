# Cython declarations for leadscore/typed.py (pure-Python mode: the .py is the source).
cimport cython
from leadscore.events cimport Event, ts_seconds

cdef Py_ssize_t _MAX_CONTACT, _MAX_BYTES
cdef bint _LENGTHS_AFTER, _SLOTS

# A decoded line's six fields read straight from the msgspec struct's slots (compiled only):
# the offsets come from the struct type's member descriptors, looked up once per type (kept
# alive while cached), instead of astuple's tuple per line. 0 when the type is not laid out
# as expected (a field not an object slot, or unset): parse_events then uses astuple.
cdef extern from *:
    """
    #include <structmember.h>
    static PyObject *ls_line_type = NULL;
    static Py_ssize_t ls_line_off[6];
    static int ls_line_layout(PyObject *line) {
        static const char *names[6] = {"contact", "action", "ts", "id", "props", "traits"};
        PyTypeObject *t = Py_TYPE(line);
        Py_ssize_t off[6];
        int i;
        if ((PyObject *)t == ls_line_type) return 1;
        for (i = 0; i < 6; i++) {
            PyObject *d = PyDict_GetItemString(t->tp_dict, names[i]);  /* borrowed */
            PyMemberDef *m;
            if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) return 0;
            m = ((PyMemberDescrObject *)d)->d_member;
            if (m->type != T_OBJECT_EX && m->type != T_OBJECT) return 0;
            if (m->offset < (Py_ssize_t)sizeof(PyObject)
                || m->offset + (Py_ssize_t)sizeof(PyObject *) > t->tp_basicsize) return 0;
            off[i] = m->offset;
        }
        for (i = 0; i < 6; i++) ls_line_off[i] = off[i];
        Py_INCREF((PyObject *)t);
        Py_XSETREF(ls_line_type, (PyObject *)t);
        return 1;
    }
    /* A new reference to field i of a line of the cached type (after ls_line_layout said
       yes); None if unset, which a decoded line never is (msgspec fills every default). */
    static CYTHON_INLINE PyObject *ls_line_slot(PyObject *line, int i) {
        PyObject *v = *(PyObject **)((char *)line + ls_line_off[i]);
        if (v == NULL) v = Py_None;
        Py_INCREF(v);
        return v;
    }
    """
    bint _c_line_layout "ls_line_layout" (object line)
    object _c_line_slot "ls_line_slot" (object line, int i)

@cython.locals(out=list, event=Event, ts=cython.double, contact=str, action=str,
               size=Py_ssize_t, lengths=bint)
cpdef list parse_events(object lines, object now, double latest=*, bint ended=*,
                        object decode=*)
