# Cython declarations for leadscore/records.py (pure-Python mode: the .py is the source).
# Each effect kind is read through a name of its C type (engine.pxd): struct reads, not
# attribute lookups; format_ts and round4 are direct C calls (events.pxd).
cimport cython
from leadscore.events cimport format_ts, round4
from leadscore.engine cimport (ContactState, Engine, PointChange, SegmentChanged, StageChanged,
                               TagChanged, TriggerFired)

# The compiled JSON writer (records.py `dump_line`, `effect_line`): orjson's bytes written
# straight into a buffer, for the values it can prove orjson writes alike; anything else
# makes it answer None and the caller takes orjson (tests/test_records_json.py checks both
# against orjson.dumps with hypothesis). Interpreted, records.py never calls these.
cdef extern from *:
    """
    #include <string.h>
    #include <math.h>

    /* A growable byte buffer, on the stack until a record outgrows it. */
    typedef struct { char *p; Py_ssize_t n, cap; char stack[768]; } ls_buf;

    static int ls_grow(ls_buf *b, Py_ssize_t extra) {
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

    #define LS_RESERVE(b, k) \\
        if ((b)->n + (Py_ssize_t)(k) > (b)->cap && ls_grow((b), (Py_ssize_t)(k)) < 0) return -1;

    /* Each function returns 0 (written), 1 (not provably orjson's bytes: the caller falls back
       to orjson) or -1 (a Python error is set). */

    static int ls_raw(ls_buf *b, const char *s, Py_ssize_t n) {
        char *d;
        LS_RESERVE(b, n);
        d = b->p + b->n;
        b->n += n;
        memcpy(d, s, n);
        return 0;
    }

    /* orjson's escapes: the two-character forms for \\b \\t \\n \\f \\r, \\u00xx (lower-case
       hex) for the other controls, \\" and \\\\; everything else (DEL and non-ASCII too) as
       UTF-8. ls_plain[c]: byte c is written as it is. */
    static const char ls_hex[] = "0123456789abcdef";
    static unsigned char ls_plain[256];
    static int ls_plain_ready = 0;

    static void ls_plain_init(void) {
        int c;
        for (c = 0; c < 256; c++) ls_plain[c] = c >= 0x20 && c != '"' && c != '\\\\';
        ls_plain_ready = 1;
    }

    static int ls_str(ls_buf *b, PyObject *o) {
        Py_ssize_t n, i;
        const unsigned char *s;
        char *d;
        if (PyUnicode_IS_ASCII(o)) {
            s = (const unsigned char *)PyUnicode_DATA(o);
            n = PyUnicode_GET_LENGTH(o);
        } else {
            s = (const unsigned char *)PyUnicode_AsUTF8AndSize(o, &n);
            if (s == NULL) {  /* surrogates: orjson raises; let it, on the fallback path */
                PyErr_Clear();
                return 1;
            }
        }
        if (!ls_plain_ready) ls_plain_init();
        i = 0;
        while (i < n && ls_plain[s[i]]) i++;
        if (i == n) {  /* the usual case: nothing to escape */
            LS_RESERVE(b, n + 2);
            d = b->p + b->n;
            *d++ = '"';
            memcpy(d, s, n);
            d[n] = '"';
            b->n += n + 2;
            return 0;
        }
        LS_RESERVE(b, 6 * n + 2);
        d = b->p + b->n;
        *d++ = '"';
        memcpy(d, s, i);
        d += i;
        for (; i < n; i++) {
            unsigned char c = s[i];
            if (ls_plain[c]) {
                *d++ = (char)c;
                continue;
            }
            *d++ = '\\\\';
            switch (c) {
            case '"': *d++ = '"'; break;
            case '\\\\': *d++ = '\\\\'; break;
            case '\\b': *d++ = 'b'; break;
            case '\\t': *d++ = 't'; break;
            case '\\n': *d++ = 'n'; break;
            case '\\f': *d++ = 'f'; break;
            case '\\r': *d++ = 'r'; break;
            default:
                *d++ = 'u'; *d++ = '0'; *d++ = '0';
                *d++ = ls_hex[c >> 4]; *d++ = ls_hex[c & 15];
            }
        }
        *d++ = '"';
        b->n = d - b->p;
        return 0;
    }

    static int ls_digits(ls_buf *b, unsigned long long v) {
        char tmp[24];
        int k = 0;
        LS_RESERVE(b, 24);
        do { tmp[k++] = (char)('0' + v % 10); v /= 10; } while (v);
        while (k) b->p[b->n++] = tmp[--k];
        return 0;
    }

    static int ls_int(ls_buf *b, PyObject *o) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow) return 1;  /* orjson writes up to 2**64 - 1, then raises: its call */
        if (v == -1 && PyErr_Occurred()) return -1;
        if (v < 0) {
            if (ls_raw(b, "-", 1) < 0) return -1;
            return ls_digits(b, 0ULL - (unsigned long long)v);
        }
        return ls_digits(b, (unsigned long long)v);
    }

    /* The shortest decimal that reads back as x (1e-4 <= |x| < 1e16), the one nearest x among
       several, written as repr writes it: what PyOS_double_to_string(x, 'r') gives, in a few
       hundred instructions instead of dtoa's big numbers (~2-3k). x = m 2^e exactly, so
       x 10^k (k = 16 - its decimal exponent, 1..20) and the two halfway points to its
       neighbours are exact 128-bit integers over 2^T; the integers between those points are
       the 17-digit decimals that read back as x, and the multiples of the largest 10^r among
       them the shortest (x exactly halfway between two: the even one, as dtoa). A halfway
       point that is itself such a decimal (whether it reads back as x depends on m's parity)
       answers 2: the caller asks dtoa. Also 2 without a 128-bit integer type. */
#if defined(__SIZEOF_INT128__)
    typedef unsigned __int128 ls_u128;
    static const double ls_p10d[21] = {
        1e-4, 1e-3, 1e-2, 1e-1, 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
        1e11, 1e12, 1e13, 1e14, 1e15, 1e16};

    static int ls_shortest(ls_buf *b, double x) {
        double ax = fabs(x);
        int E, e, k, T, P = -4, r = 0, nd = 0, point, i;
        unsigned long long m, lo, hi, v, p = 1, q, c;
        ls_u128 ten, V, L, H, mask, half, cur;
        char tmp[24], *d;
        if (!(1e-4 <= ax && ax < 1e16)) return 2;
        while (P < 15 && ax >= ls_p10d[P + 5]) P++;
        k = 16 - P;
        ten = 1;
        for (i = 0; i < k; i++) ten *= 10;
        m = (unsigned long long)ldexp(frexp(ax, &E), 53);  /* 2^52 <= m < 2^53: x = m 2^e */
        e = E - 53;
        V = (ls_u128)(4 * m) * ten;
        H = (ls_u128)(4 * m + 2) * ten;
        L = (ls_u128)(4 * m - (m == (1ULL << 52) ? 1 : 2)) * ten;  /* a power of two's lower
                                                                    neighbour is nearer */
        if (e >= 0) {
            V <<= e; H <<= e; L <<= e;
            T = 2;
        } else {
            T = 2 - e;
        }
        mask = ((ls_u128)1 << T) - 1;
        if ((L & mask) == 0 || (H & mask) == 0) return 2;  /* a halfway point is a candidate */
        lo = (unsigned long long)(L >> T) + 1;
        hi = (unsigned long long)(H >> T);
        if (lo > hi) return 2;
        while (r < 17 && hi / (p * 10) * (p * 10) >= lo) { p *= 10; r++; }
        v = (unsigned long long)(V >> T);
        q = v / p;
        half = (ls_u128)p << (T - 1);
        cur = ((ls_u128)(v % p) << T) + (V & mask);
        if (cur > half || (cur == half && (q & 1))) q++;  /* halfway: the even one, as dtoa */
        c = q * p;
        if (c < lo) c += p;
        else if (c > hi) c -= p;
        if (c < lo || c > hi || c == 0) return 2;
        point = -k;
        while (c % 10 == 0) { c /= 10; point++; }
        do { tmp[nd++] = (char)('0' + c % 10); c /= 10; } while (c);
        point += nd;  /* digits before the decimal point (repr: fixed form for -4 < it <= 16) */
        if (point <= -4 || point > 16) return 2;
        LS_RESERVE(b, 48);
        d = b->p + b->n;
        if (x < 0) *d++ = '-';
        if (point <= 0) {
            *d++ = '0'; *d++ = '.';
            for (i = point; i < 0; i++) *d++ = '0';
            while (nd) *d++ = tmp[--nd];
        } else if (point >= nd) {
            int zeros = point - nd;
            while (nd) *d++ = tmp[--nd];
            for (i = 0; i < zeros; i++) *d++ = '0';
            *d++ = '.'; *d++ = '0';
        } else {
            for (i = 0; i < point; i++) *d++ = tmp[--nd];
            *d++ = '.';
            while (nd) *d++ = tmp[--nd];
        }
        b->n = d - b->p;
        return 0;
    }
#else
    static int ls_shortest(ls_buf *b, double x) { (void)b; (void)x; return 2; }
#endif

    /* A float as orjson writes it, which is repr's text wherever 1e-4 <= |x| < 1e16 (and for
       zeros). A multiple of 1e-4 below 1e11 (round4's results: scores, most points) is written
       from that integer: there a double's spacing is under 1e-4, so no shorter decimal reads
       back as x and the four-decimal form, trailing zeros dropped, is repr's shortest one. */
    static int ls_float(ls_buf *b, double x) {
        double ax = fabs(x);
        if (x == 0.0) return signbit(x) ? ls_raw(b, "-0.0", 4) : ls_raw(b, "0.0", 3);
        if (!(ax < 1e16)) return 1;  /* NaN, inf (orjson: null) and exponent forms */
        if (ax < 1e11) {
            double y = x * 10000.0;
            long long q = (long long)(y + (y >= 0 ? 0.5 : -0.5));
            if ((double)q / 10000.0 == x) {
                unsigned long long a = q < 0 ? 0ULL - (unsigned long long)q : (unsigned long long)q;
                unsigned long long frac = a % 10000;
                int places = 4;
                if (q < 0 && ls_raw(b, "-", 1) < 0) return -1;
                if (ls_digits(b, a / 10000) < 0) return -1;
                LS_RESERVE(b, 5);
                b->p[b->n++] = '.';
                if (frac == 0) {
                    b->p[b->n++] = '0';
                    return 0;
                }
                while (frac % 10 == 0) { frac /= 10; places--; }
                for (int k = places - 1; k >= 0; k--) {
                    b->p[b->n + k] = (char)('0' + frac % 10);
                    frac /= 10;
                }
                b->n += places;
                return 0;
            }
        }
        if (ax < 1e-4) return 1;  /* repr 1e-05, orjson 0.00001 */
        {
            int r = ls_shortest(b, x);
            char *s;
            if (r != 2) return r;
            s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
            if (s == NULL) return -1;
            r = ls_raw(b, s, (Py_ssize_t)strlen(s));
            PyMem_Free(s);
            return r;
        }
    }

    static int ls_value(ls_buf *b, PyObject *o, int depth) {
        PyTypeObject *t = Py_TYPE(o);
        int r;
        if (t == &PyUnicode_Type) return ls_str(b, o);
        if (t == &PyFloat_Type) return ls_float(b, PyFloat_AS_DOUBLE(o));
        if (o == Py_None) return ls_raw(b, "null", 4);
        if (o == Py_True) return ls_raw(b, "true", 4);
        if (o == Py_False) return ls_raw(b, "false", 5);
        if (t == &PyLong_Type) return ls_int(b, o);
        if (depth > 64) return 1;  /* orjson's own limit is 255: leave deep nests to it */
        if (t == &PyList_Type || t == &PyTuple_Type) {
            Py_ssize_t i, n = Py_SIZE(o);
            PyObject **items = t == &PyList_Type ? ((PyListObject *)o)->ob_item
                                                 : ((PyTupleObject *)o)->ob_item;
            if (ls_raw(b, "[", 1) < 0) return -1;
            for (i = 0; i < n; i++) {
                if (i && ls_raw(b, ",", 1) < 0) return -1;
                /* a list read while written: only our own C code runs, no Python */
                if ((r = ls_value(b, items[i], depth + 1)) != 0) return r;
            }
            return ls_raw(b, "]", 1);
        }
        if (t == &PyDict_Type) {
            Py_ssize_t pos = 0;
            PyObject *k, *v;
            int first = 1;
            if (ls_raw(b, "{", 1) < 0) return -1;
            while (PyDict_Next(o, &pos, &k, &v)) {
                if (Py_TYPE(k) != &PyUnicode_Type) return 1;
                if (!first && ls_raw(b, ",", 1) < 0) return -1;
                first = 0;
                if ((r = ls_str(b, k)) != 0) return r;
                if (ls_raw(b, ":", 1) < 0) return -1;
                if ((r = ls_value(b, v, depth + 1)) != 0) return r;
            }
            return ls_raw(b, "}", 1);
        }
        return 1;  /* subclasses, dataclasses, datetimes...: orjson's to write */
    }

    static PyObject *ls_finish(ls_buf *b, int r) {
        PyObject *out = NULL;
        if (r == 0) out = PyBytes_FromStringAndSize(b->p, b->n);
        else if (r == 1) { Py_INCREF(Py_None); out = Py_None; }
        if (b->p != b->stack) PyMem_Free(b->p);
        return out;
    }

    /* The text events.format_ts gives a time in [0, 9999-12-31T23:59:59], in quotes: its
       microseconds rounded half to even exactly as there (then truncated to milliseconds),
       the date from the day number (proleptic Gregorian, as datetime). Else 1: the caller
       takes format_ts itself. tests/test_records_json.py checks the two agree. */
    static int ls_ts(ls_buf *b, double ts) {
        long long whole, us, days, secs, era, doe, yoe, doy, mp, y, m, d, ms;
        double z, low;
        char *p;
        if (!(0.0 <= ts && ts <= 253402300799.0)) return 1;
        whole = (long long)ts;
        z = (ts - (double)whole) * 1e6;
        us = (long long)(z + 0.5);
        if (!(-0.5 < z - (double)us && z - (double)us < 0.5)) {
            us = (long long)z;  /* z >= 0: floor; then half to even, as round() */
            low = z - (double)us;
            if (low > 0.5 || (low == 0.5 && (us & 1))) us += 1;
        }
        if (us >= 1000000) { whole += 1; us -= 1000000; }
        days = whole / 86400;
        secs = whole % 86400;
        /* civil_from_days (H. Hinnant), days since 1970-01-01 >= 0 */
        days += 719468;
        era = days / 146097;
        doe = days - era * 146097;
        yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        y = yoe + era * 400;
        doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        mp = (5 * doy + 2) / 153;
        d = doy - (153 * mp + 2) / 5 + 1;
        m = mp < 10 ? mp + 3 : mp - 9;
        if (m <= 2) y += 1;
        ms = us / 1000;
        LS_RESERVE(b, 26);
        p = b->p + b->n;
        p[0] = '"';
        p[1] = (char)('0' + y / 1000); p[2] = (char)('0' + y / 100 % 10);
        p[3] = (char)('0' + y / 10 % 10); p[4] = (char)('0' + y % 10);
        p[5] = '-'; p[6] = (char)('0' + m / 10); p[7] = (char)('0' + m % 10);
        p[8] = '-'; p[9] = (char)('0' + d / 10); p[10] = (char)('0' + d % 10);
        p[11] = 'T'; p[12] = (char)('0' + secs / 36000); p[13] = (char)('0' + secs / 3600 % 10);
        p[14] = ':'; p[15] = (char)('0' + secs % 3600 / 600); p[16] = (char)('0' + secs % 600 / 60);
        p[17] = ':'; p[18] = (char)('0' + secs % 60 / 10); p[19] = (char)('0' + secs % 10);
        p[20] = '.'; p[21] = (char)('0' + ms / 100); p[22] = (char)('0' + ms / 10 % 10);
        p[23] = (char)('0' + ms % 10); p[24] = 'Z'; p[25] = '"';
        b->n += 26;
        return 0;
    }

    /* The entry points below are CYTHON_UNUSED: every module that cimports records.pxd
       gets this block, and most call one or two of them (no -Wunused-function there). */

    /* The JSON of ``value`` as orjson.dumps writes it, or None. */
    CYTHON_UNUSED static PyObject *ls_dump(PyObject *value) {
        ls_buf b;
        b.p = b.stack; b.n = 0; b.cap = sizeof(b.stack);
        return ls_finish(&b, ls_value(&b, value, 0));
    }

    /* frags[0] + json(values[0]) + frags[1] + ... + json(values[n-1]) + frags[n], or None:
       an object whose keys (and the separators around them) are written once, as bytes.
       The values are head's, then tail's (NULL: none): a view's fields and what its caller
       writes after them, without joining the two tuples. The values at the bits of
       ``times`` are times: a float written as format_ts's text (else 1: format_ts's own
       path), None as null where ``nulls`` says so, else also 1. */
    CYTHON_UNUSED static PyObject *ls_dump_parts(PyObject *frags, PyObject *head, PyObject *tail,
                                                 unsigned long times, int nulls) {
        ls_buf b;
        Py_ssize_t i, nh = PyTuple_GET_SIZE(head);
        Py_ssize_t n = nh + (tail == NULL ? 0 : PyTuple_GET_SIZE(tail));
        int r = 0;
        b.p = b.stack; b.n = 0; b.cap = sizeof(b.stack);
        for (i = 0; i <= n && r == 0; i++) {
            PyObject *f = PyTuple_GET_ITEM(frags, i);
            r = ls_raw(&b, PyBytes_AS_STRING(f), PyBytes_GET_SIZE(f));
            if (r != 0 || i == n) continue;
            {
                PyObject *v = i < nh ? PyTuple_GET_ITEM(head, i) : PyTuple_GET_ITEM(tail, i - nh);
                if ((times >> i) & 1 && !(nulls && v == Py_None))
                    r = PyFloat_CheckExact(v) ? ls_ts(&b, PyFloat_AS_DOUBLE(v)) : 1;
                else
                    r = ls_value(&b, v, 0);
            }
        }
        return ls_finish(&b, r);
    }

    /* ls_dump_parts of one tuple. */
    CYTHON_UNUSED static PyObject *ls_dump_times(PyObject *frags, PyObject *values,
                                                 unsigned long times, int nulls) {
        return ls_dump_parts(frags, values, NULL, times, nulls);
    }

    /* ls_dump_times with one time, values[at] (0 <= at < 64), which must be a float. */
    CYTHON_UNUSED static PyObject *ls_dump_frags(PyObject *frags, PyObject *values, Py_ssize_t at) {
        return ls_dump_times(frags, values, 1UL << at, 0);
    }

    /* A time as format_ts writes it, for the tests (None: format_ts's own path). */
    CYTHON_UNUSED static PyObject *ls_dump_ts(double ts) {
        ls_buf b;
        b.p = b.stack; b.n = 0; b.cap = sizeof(b.stack);
        return ls_finish(&b, ls_ts(&b, ts));
    }
    """
    object _c_dump "ls_dump"(object value)
    object _c_dump_frags "ls_dump_frags"(tuple frags, tuple values, Py_ssize_t at)
    object _c_dump_ts "ls_dump_ts"(double ts)
    object _c_dump_times "ls_dump_times"(tuple frags, tuple values, unsigned long times,
                                         bint nulls)
    object _c_dump_parts "ls_dump_parts"(tuple frags, tuple head, tuple tail,
                                         unsigned long times, bint nulls)

cdef bint _WRITER

@cython.locals(p=PointChange, s=StageChanged, f=TriggerFired, g=SegmentChanged, a=TagChanged,
               rec=dict)
cpdef dict effect_record(str contact, object effect, object action=*)

@cython.locals(p=PointChange, s=StageChanged, f=TriggerFired, g=SegmentChanged, a=TagChanged,
               line=object, values=tuple, head=tuple, tail=tuple)
cpdef object effect_line(str contact, object effect, object action=*)

@cython.locals(line=object)
cpdef bytes dump_line(object value)

cpdef object time_json(double ts)

# The first eight view fields (view_line's and readmodel._encode's).
cpdef tuple view_values(Engine engine, object contact, ContactState state, double t)

@cython.locals(last=cython.double, t=cython.double, line=object, head=tuple, tail=tuple)
cpdef bytes view_line(Engine engine, str contact, ContactState state, object at)
