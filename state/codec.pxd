# Cython declarations for state/codec.py (pure-Python mode: the .py is the source).
# Compiled, encode and decode (once per dirty or loaded contact) and their helpers run
# without the interpreter's bytecode loop; the format is the same bytes. encode writes a
# compiled engine's state with the C writer below (an interpreted engine's states, which the
# tests pass too, and anything the writer leaves alone go through msgpack as before).
cimport cython
from leadscore.engine cimport ContactState

# The compiled msgpack writer (codec.py `encode`): a contact state's fields written straight
# into a buffer with the bytes msgpack.Packer(use_bin_type=True) writes, for the values it
# can prove msgpack writes alike (exact None, bool, int within 64 bits, float, ASCII or UTF-8
# str, bytes, list, tuple, dict); anything else makes it answer None and the caller takes
# msgpack (tests/test_codec.py checks both against msgpack.packb with hypothesis).
# Interpreted, codec.py never calls it.
cdef extern from *:
    """
    #include <string.h>

    typedef struct { char *p; Py_ssize_t n, cap; char stack[1024]; } lc_buf;

    static int lc_grow(lc_buf *b, Py_ssize_t extra) {
        Py_ssize_t cap = b->cap * 2;
        char *p;
        while (cap < b->n + extra) cap *= 2;
        if (b->p == b->stack) {
            p = (char *)PyMem_Malloc(cap);
            if (p == NULL) { PyErr_NoMemory(); return -1; }
            memcpy(p, b->p, b->n);
        } else {
            p = (char *)PyMem_Realloc(b->p, cap);
            if (p == NULL) { PyErr_NoMemory(); return -1; }
        }
        b->p = p;
        b->cap = cap;
        return 0;
    }

    #define LC_RESERVE(b, k) \\
        if ((b)->n + (Py_ssize_t)(k) > (b)->cap && lc_grow((b), (Py_ssize_t)(k)) < 0) return -1;

    /* Each function returns 0 (written), 1 (not provably msgpack's bytes: the caller falls
       back to msgpack) or -1 (a Python error is set). */

    static int lc_raw(lc_buf *b, const char *s, Py_ssize_t n) {
        LC_RESERVE(b, n);
        memcpy(b->p + b->n, s, n);
        b->n += n;
        return 0;
    }

    static void lc_be(char *d, unsigned long long v, int k) {  /* k bytes, big-endian */
        while (k--) { d[k] = (char)(v & 0xff); v >>= 8; }
    }

    /* A header: a fix form (``fix`` | n) below ``fixmax``, else the 8-bit (if ``c8``), 16-bit
       or 32-bit length form. */
    static int lc_head(lc_buf *b, Py_ssize_t n, int fix, Py_ssize_t fixmax,
                       int c8, int c16, int c32) {
        char *d;
        if (n > 0xffffffffLL) return 1;  /* msgpack refuses: its error */
        LC_RESERVE(b, 5);
        d = b->p + b->n;
        if (fix >= 0 && n <= fixmax) { d[0] = (char)(fix | n); b->n += 1; }
        else if (c8 >= 0 && n <= 0xff) { d[0] = (char)c8; d[1] = (char)n; b->n += 2; }
        else if (n <= 0xffff) { d[0] = (char)c16; lc_be(d + 1, n, 2); b->n += 3; }
        else { d[0] = (char)c32; lc_be(d + 1, n, 4); b->n += 5; }
        return 0;
    }

    #define LC_STR_HEAD(b, n) lc_head((b), (n), 0xa0, 0x1f, 0xd9, 0xda, 0xdb)
    #define LC_BIN_HEAD(b, n) lc_head((b), (n), -1, 0, 0xc4, 0xc5, 0xc6)
    #define LC_ARRAY_HEAD(b, n) lc_head((b), (n), 0x90, 0x0f, -1, 0xdc, 0xdd)
    #define LC_MAP_HEAD(b, n) lc_head((b), (n), 0x80, 0x0f, -1, 0xde, 0xdf)

    static int lc_bytes(lc_buf *b, const char *s, Py_ssize_t n) {
        int r = LC_BIN_HEAD(b, n);
        return r ? r : lc_raw(b, s, n);
    }

    static int lc_str(lc_buf *b, PyObject *o) {
        int r;
        if (PyUnicode_IS_ASCII(o)) {
            Py_ssize_t n = PyUnicode_GET_LENGTH(o);
            if ((r = LC_STR_HEAD(b, n)) != 0) return r;
            return lc_raw(b, (const char *)PyUnicode_DATA(o), n);
        } else {
            /* a temporary copy: the string keeps no UTF-8 cache (memory per contact) */
            PyObject *u = PyUnicode_AsUTF8String(o);
            if (u == NULL) { PyErr_Clear(); return 1; }  /* surrogates: msgpack's error */
            r = LC_STR_HEAD(b, PyBytes_GET_SIZE(u));
            if (r == 0) r = lc_raw(b, PyBytes_AS_STRING(u), PyBytes_GET_SIZE(u));
            Py_DECREF(u);
            return r;
        }
    }

    static int lc_int(lc_buf *b, long long v) {
        char *d;
        LC_RESERVE(b, 9);
        d = b->p + b->n;
        if (v >= 0) {
            if (v < 0x80) { d[0] = (char)v; b->n += 1; }
            else if (v <= 0xff) { d[0] = (char)0xcc; d[1] = (char)v; b->n += 2; }
            else if (v <= 0xffff) { d[0] = (char)0xcd; lc_be(d + 1, v, 2); b->n += 3; }
            else if (v <= 0xffffffffLL) { d[0] = (char)0xce; lc_be(d + 1, v, 4); b->n += 5; }
            else { d[0] = (char)0xcf; lc_be(d + 1, (unsigned long long)v, 8); b->n += 9; }
        } else {
            if (v >= -0x20) { d[0] = (char)v; b->n += 1; }
            else if (v >= -0x80) { d[0] = (char)0xd0; d[1] = (char)v; b->n += 2; }
            else if (v >= -0x8000) { d[0] = (char)0xd1; lc_be(d + 1, (unsigned long long)v, 2); b->n += 3; }
            else if (v >= -0x80000000LL) { d[0] = (char)0xd2; lc_be(d + 1, (unsigned long long)v, 4); b->n += 5; }
            else { d[0] = (char)0xd3; lc_be(d + 1, (unsigned long long)v, 8); b->n += 9; }
        }
        return 0;
    }

    static int lc_double(lc_buf *b, double x) {
        unsigned long long u;
        LC_RESERVE(b, 9);
        memcpy(&u, &x, 8);
        b->p[b->n] = (char)0xcb;
        lc_be(b->p + b->n + 1, u, 8);
        b->n += 9;
        return 0;
    }

    static int lc_value(lc_buf *b, PyObject *o, int depth) {
        PyTypeObject *t = Py_TYPE(o);
        int r;
        if (t == &PyUnicode_Type) return lc_str(b, o);
        if (t == &PyFloat_Type) return lc_double(b, PyFloat_AS_DOUBLE(o));
        if (o == Py_None) return lc_raw(b, "\\xc0", 1);
        if (o == Py_True) return lc_raw(b, "\\xc3", 1);
        if (o == Py_False) return lc_raw(b, "\\xc2", 1);
        if (t == &PyLong_Type) {
            int overflow;
            long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
            if (overflow) return 1;  /* uint64's upper half, or msgpack's OverflowError */
            if (v == -1 && PyErr_Occurred()) return -1;
            return lc_int(b, v);
        }
        if (t == &PyBytes_Type) return lc_bytes(b, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
        if (depth > 64) return 1;  /* msgpack's own limit is 512: leave deep nests to it */
        if (t == &PyList_Type || t == &PyTuple_Type) {
            Py_ssize_t i, n = Py_SIZE(o);
            PyObject **items = t == &PyList_Type ? ((PyListObject *)o)->ob_item
                                                 : ((PyTupleObject *)o)->ob_item;
            if ((r = LC_ARRAY_HEAD(b, n)) != 0) return r;
            for (i = 0; i < n; i++) {
                /* only this C code runs while a list is read: nothing can change it */
                if ((r = lc_value(b, items[i], depth + 1)) != 0) return r;
            }
            return 0;
        }
        if (t == &PyDict_Type) {
            Py_ssize_t pos = 0;
            PyObject *k, *v;
            if ((r = LC_MAP_HEAD(b, PyDict_GET_SIZE(o))) != 0) return r;
            while (PyDict_Next(o, &pos, &k, &v)) {
                if ((r = lc_value(b, k, depth + 1)) != 0) return r;
                if ((r = lc_value(b, v, depth + 1)) != 0) return r;
            }
            return 0;
        }
        return 1;  /* subclasses, bytearrays, memoryviews...: msgpack's to write */
    }

    /* An array.array's bytes (native order: the caller checked it is little-endian) as bin,
       as codec._to_bytes then msgpack write them. */
    static int lc_array(lc_buf *b, PyObject *a) {
        Py_buffer view;
        int r;
        if (PyObject_GetBuffer(a, &view, PyBUF_SIMPLE) < 0) return -1;
        r = lc_bytes(b, (const char *)view.buf, view.len);
        PyBuffer_Release(&view);
        return r;
    }

    /* codec._windows_to_map's map: (rule, times, rule, times, ...) -> {rule: times} (nil
       when empty); times an array of doubles, written as msgpack writes its tolist(). A rule
       twice (a dict would keep one) or anything but exact str and array('d'): 1. */
    static int lc_windows(lc_buf *b, PyObject *w, PyObject *array_type) {
        Py_ssize_t i, j, n = PyTuple_GET_SIZE(w);
        int r;
        if (n == 0) return lc_raw(b, "\\xc0", 1);
        if (n % 2) return 1;
        for (i = 0; i < n; i += 2) {
            PyObject *rule = PyTuple_GET_ITEM(w, i);
            if (Py_TYPE(rule) != &PyUnicode_Type) return 1;
            for (j = 0; j < i; j += 2) {
                int eq = PyUnicode_Compare(rule, PyTuple_GET_ITEM(w, j));
                if (eq == -1 && PyErr_Occurred()) return -1;
                if (eq == 0) return 1;
            }
        }
        if ((r = LC_MAP_HEAD(b, n / 2)) != 0) return r;
        for (i = 0; i < n; i += 2) {
            PyObject *times = PyTuple_GET_ITEM(w, i + 1);
            Py_buffer view;
            Py_ssize_t k, count;
            if ((r = lc_str(b, PyTuple_GET_ITEM(w, i))) != 0) return r;
            if ((PyObject *)Py_TYPE(times) != array_type) return 1;
            if (PyObject_GetBuffer(times, &view, PyBUF_FORMAT) < 0) return -1;
            if (view.format == NULL || strcmp(view.format, "d") != 0) {
                PyBuffer_Release(&view);
                return 1;
            }
            count = view.len / 8;
            r = LC_ARRAY_HEAD(b, count);
            for (k = 0; k < count && r == 0; k++) r = lc_double(b, ((double *)view.buf)[k]);
            PyBuffer_Release(&view);
            if (r) return r;
        }
        return 0;
    }

    /* codec.encode's list, format 3, as msgpack writes it; None: the caller takes msgpack. */
    static PyObject *lc_pack_state(
            PyObject *groups, PyObject *tracked, PyObject *tracks, PyObject *windows,
            PyObject *triggers, PyObject *seq, long stage, PyObject *segments, PyObject *tags,
            PyObject *traits, PyObject *fit, double last_ts, PyObject *recent_ids,
            PyObject *array_type) {
        lc_buf b;
        int r;
        PyObject *out = NULL;
        b.p = b.stack; b.n = 0; b.cap = sizeof(b.stack);
        r = (PyObject *)Py_TYPE(tracks) == array_type
            && (PyObject *)Py_TYPE(recent_ids) == array_type
            && Py_TYPE(windows) == &PyTuple_Type ? 0 : 1;
        if (r == 0) r = lc_raw(&b, "\\x9e\\x03", 2);  /* an array of 14: the version, 3 */
        if (r == 0) r = lc_value(&b, groups, 0);
        if (r == 0) r = lc_value(&b, tracked, 0);
        if (r == 0) r = lc_array(&b, tracks);
        if (r == 0) r = lc_windows(&b, windows, array_type);
        if (r == 0) r = lc_value(&b, triggers, 0);
        if (r == 0) r = lc_value(&b, seq, 0);
        if (r == 0) r = lc_int(&b, (long long)stage);
        if (r == 0) r = lc_value(&b, segments, 0);
        if (r == 0) r = lc_value(&b, tags, 0);
        if (r == 0) r = lc_value(&b, traits, 0);
        if (r == 0) r = lc_value(&b, fit, 0);
        if (r == 0) r = lc_double(&b, last_ts);
        if (r == 0) r = lc_array(&b, recent_ids);
        if (r == 0) out = PyBytes_FromStringAndSize(b.p, b.n);
        else if (r == 1) { Py_INCREF(Py_None); out = Py_None; }
        if (b.p != b.stack) PyMem_Free(b.p);
        return out;
    }
    """
    object _c_pack_state "lc_pack_state"(
        object groups, object tracked, object tracks, object windows, object triggers,
        object seq, long stage, object segments, object tags, object traits, object fit,
        double last_ts, object recent_ids, object array_type)

cdef bint _WRITER

cpdef bytes encode(object state)

cdef object _encode_c(ContactState state)

cpdef object _windows_to_map(tuple windows)

cpdef bytes _to_bytes(object values)
