# Cython declarations for leadscore/matchers.py (pure-Python mode: the .py is the source).
# A Where's tests as C types, evaluated by C functions: the compiled engine's matching runs
# without calls into interpreted Python (except a glob with `?`/`[` or several `*`).
cimport cython

cdef object _MISSING
cdef object _UNRESOLVED
cdef bint _TYPED

cdef int LOW_EQ, LOW_IN, LOW_ANY, LOW_CALL
cdef int RAW_IS, RAW_NUMBER, RAW_STR_EQ, RAW_STR_IN, RAW_ANY, RAW_CALL

# Compiled only: the substring tests of one top-level prop (`*/pricing*`, `*/docs/*`, ...) in
# one pass over an ASCII value, folding its case as it reads (what `needle in value.lower()`
# answers for ASCII text), instead of a lower-cased copy and a search per needle. matchers.py
# `Scan` holds the needles; tests/test_matchers.py checks the answers against the generated
# function with hypothesis.
cdef extern from *:
    """
    #include <string.h>

    /* ls_scan: the atoms (a mask) whose needle occurs in the ASCII text t[0:n], case folded.
       blob: the needles (lower-case ASCII, none empty) one after another; lens: their lengths;
       atoms: the atom index of each; first: 256 bytes, first[c] != 0 when a needle starts with
       c; single: the byte every needle starts with when they share one that is not a letter
       (memchr finds its places), else -1. */
    static CYTHON_INLINE unsigned long long ls_scan(const void *text, Py_ssize_t n, const char *blob_,
                                      const char *lens_, const char *atoms_, const char *first_,
                                      Py_ssize_t count, int single) {
        const unsigned char *t = (const unsigned char *)text;
        const unsigned char *blob = (const unsigned char *)blob_;
        const unsigned char *lens = (const unsigned char *)lens_;
        const unsigned char *atoms = (const unsigned char *)atoms_;
        const unsigned char *first = (const unsigned char *)first_;
        unsigned long long found = 0, left = count >= 64 ? ~0ULL : (1ULL << count) - 1;
        Py_ssize_t j = 0;
        while (j < n) {
            unsigned char c;
            if (single >= 0) {
                const unsigned char *at = (const unsigned char *)memchr(t + j, single, (size_t)(n - j));
                if (at == NULL) break;
                j = at - t;
                c = (unsigned char)single;
            } else {
                c = t[j];
                if ((unsigned char)(c - 'A') < 26u) c |= 0x20;
                if (!first[c]) { j++; continue; }
            }
            {
                const unsigned char *p = blob;
                Py_ssize_t k;
                for (k = 0; k < count; p += lens[k], k++) {
                    Py_ssize_t len = lens[k], q;
                    if (p[0] != c || !(left >> k & 1) || len > n - j) continue;
                    for (q = 1; q < len; q++) {
                        unsigned char d = t[j + q];
                        if ((unsigned char)(d - 'A') < 26u) d |= 0x20;
                        if (d != p[q]) break;
                    }
                    if (q == len) {
                        found |= 1ULL << atoms[k];
                        left &= ~(1ULL << k);
                        if (!left) return found;
                    }
                }
            }
            j++;
        }
        return found;
    }
    """
    unsigned long long ls_scan(const void *text, Py_ssize_t n, const char *blob,
                               const char *lens, const char *atoms, const char *first,
                               Py_ssize_t count, int single)
    bint PyUnicode_IS_ASCII(object text)
    const void *PyUnicode_DATA(object text)
    Py_ssize_t PyUnicode_GET_LENGTH(object text)

@cython.final
cdef class Scan:
    cdef public Py_ssize_t source
    cdef public bytes blob
    cdef public bytes lens
    cdef public bytes atoms
    cdef public bytes first
    cdef public Py_ssize_t count
    cdef public int single
    cdef public unsigned long long mask

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
    cdef list blank
    cdef public tuple atoms
    cdef public tuple scans
    cdef public bytes plan
    cdef public unsigned long long always
    cdef public dict resolved
    cdef public tuple rules
    cdef public tuple stage_rules
    cdef unsigned long long last_mask
    cdef tuple last_found

    @cython.locals(nkeys=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, vals=list, lows=Py_ssize_t,
                   m=cython.ulonglong, known=cython.ulonglong, truth=cython.ulonglong,
                   one=cython.ulonglong, plan="const unsigned char *", n=Py_ssize_t, p=Py_ssize_t, bit=int, count=int, k=int, a=int, end=Py_ssize_t,
                   ok=bint, found=tuple, text=str, s=Scan)
    cpdef tuple match(self, dict props)

@cython.locals(lv=object, text=str)
cdef bint _holds(Atom a, list vals, Py_ssize_t lows, dict props)

@cython.locals(kind=int, part=Test)
cdef bint _low(Test t, str lv)

@cython.locals(kind=int, part=Test)
cdef bint _raw(Test t, object v)

@cython.locals(cur=dict, last=Py_ssize_t, i=Py_ssize_t)
cdef object _resolve(dict props, tuple keys, str flat)
