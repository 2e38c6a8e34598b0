# Cython declarations for leadscore/matchers.py (pure-Python mode: the .py is the source).
# A Where's tests as C types, evaluated by C functions: the compiled engine's matching runs
# without calls into interpreted Python (except a glob with `?`/`[` or several `*`).
cimport cython

cdef object _MISSING
cdef object _UNRESOLVED
cdef bint _TYPED

cdef int LOW_EQ, LOW_IN, LOW_ANY, LOW_CALL
cdef int RAW_IS, RAW_NUMBER, RAW_STR_EQ, RAW_STR_IN, RAW_ANY, RAW_CALL

@cython.final
cdef class Test:
    cdef public int kind
    cdef public str text
    cdef public object value
    cdef public tuple parts

@cython.final
cdef class Atom:
    cdef public Py_ssize_t source
    cdef public bint lowered
    cdef public Test low
    cdef public Test raw
    cdef public tuple path
    cdef public str flat

@cython.final
cdef class Where:
    cdef public tuple keys
    cdef public tuple lowers
    cdef public tuple paths
    cdef public tuple flats
    cdef public tuple atoms
    cdef public bytes plan
    cdef public unsigned long long always
    cdef public dict resolved
    cdef public tuple rules
    cdef public tuple stage_rules
    cdef unsigned long long last_mask
    cdef tuple last_found

    @cython.locals(nkeys=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, vals=list, lows=list,
                   m=cython.ulonglong, known=cython.ulonglong, truth=cython.ulonglong,
                   one=cython.ulonglong, plan="const unsigned char *", n=Py_ssize_t, p=Py_ssize_t, bit=int, count=int, k=int, a=int, end=Py_ssize_t,
                   ok=bint, found=tuple, text=str)
    cpdef tuple match(self, dict props)

@cython.locals(lv=object)
cdef bint _holds(Atom a, list vals, list lows, dict props)

@cython.locals(kind=int, part=Test)
cdef bint _low(Test t, str lv)

@cython.locals(kind=int, part=Test)
cdef bint _raw(Test t, object v)

@cython.locals(cur=dict, last=Py_ssize_t, i=Py_ssize_t)
cdef object _resolve(dict props, tuple keys, str flat)
