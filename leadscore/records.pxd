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
    #include <stdint.h>

    #define LS_ONES 0x0101010101010101ULL

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

    /* memcpy for a record's short pieces (keys, names, ids: mostly under 32 bytes): a few
       fixed-size moves, overlapping, instead of a call. */
    static CYTHON_INLINE void ls_copy(char *d, const char *s, Py_ssize_t n) {
        if (n >= 8) {
            if (n <= 16) {
                memcpy(d, s, 8);
                memcpy(d + n - 8, s + n - 8, 8);
            } else if (n <= 32) {
                memcpy(d, s, 16);
                memcpy(d + n - 16, s + n - 16, 16);
            } else {
                memcpy(d, s, n);
            }
        } else if (n >= 4) {
            memcpy(d, s, 4);
            memcpy(d + n - 4, s + n - 4, 4);
        } else if (n > 0) {
            d[0] = s[0];
            d[n >> 1] = s[n >> 1];
            d[n - 1] = s[n - 1];
        }
    }

    static CYTHON_INLINE int ls_raw(ls_buf *b, const char *s, Py_ssize_t n) {
        LS_RESERVE(b, n);
        ls_copy(b->p + b->n, s, n);
        b->n += n;
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
        i = 0;
        /* Eight bytes at a time while none is a control, '"' or '\\' (the exact tests
           "has a byte below 0x20" and "has a zero byte", on the word and on its xors); the
           last eight (overlapping) for the rest of a text of eight or more. */
        if (n >= 8) {
            uint64_t w, q, e;
            for (;;) {
                memcpy(&w, s + i, 8);
                q = w ^ (LS_ONES * '"');
                e = w ^ (LS_ONES * '\\\\');
                if ((((w - LS_ONES * 0x20) & ~w) | ((q - LS_ONES) & ~q) | ((e - LS_ONES) & ~e))
                    & (LS_ONES * 0x80)) break;
                if (i + 8 == n) { i = n; break; }
                i = i + 16 <= n ? i + 8 : n - 8;
            }
        }
        while (i < n && s[i] >= 0x20 && s[i] != '"' && s[i] != '\\\\') i++;
        if (i == n) {  /* the usual case: nothing to escape */
            LS_RESERVE(b, n + 2);
            d = b->p + b->n;
            d[0] = '"';
            ls_copy(d + 1, (const char *)s, n);
            d[n + 1] = '"';
            b->n += n + 2;
            return 0;
        }
        if (!ls_plain_ready) ls_plain_init();
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
        if (v < 10) {  /* most points and scores */
            b->p[b->n++] = (char)('0' + v);
            return 0;
        }
        if (v < 100) {
            b->p[b->n] = (char)('0' + v / 10);
            b->p[b->n + 1] = (char)('0' + v % 10);
            b->n += 2;
            return 0;
        }
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
        if (ax < 1e15) {  /* a whole number (points, most scores): its digits and ".0" */
            long long k = (long long)x;
            if ((double)k == x) {
                if (k < 0 && ls_raw(b, "-", 1) < 0) return -1;
                if (ls_digits(b, k < 0 ? 0ULL - (unsigned long long)k : (unsigned long long)k) < 0)
                    return -1;
                return ls_raw(b, ".0", 2);
            }
        }
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
       takes format_ts itself. tests/test_records_json.py checks the two agree. An event's
       records share its time and a run's events crowd into few days, so the last time's
       text and the last day's are kept (per module: each has its own copy of this block;
       written with the GIL held, as every call here is). */
    static double ls_ts_last = -1.0;  /* never a time written: those are >= 0 */
    static char ls_ts_last_text[26];
    static long long ls_ts_day = -1;
    static char ls_ts_day_text[11];  /* '"' and the date of ls_ts_day */

    static int ls_ts(ls_buf *b, double ts) {
        long long whole, us, days, secs, ms;
        double z, low;
        char *p;
        if (!(0.0 <= ts && ts <= 253402300799.0)) return 1;
        LS_RESERVE(b, 26);
        p = b->p + b->n;
        b->n += 26;
        if (ts == ls_ts_last) {
            memcpy(p, ls_ts_last_text, 26);
            return 0;
        }
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
        if (days != ls_ts_day) {
            /* civil_from_days (H. Hinnant), days since 1970-01-01 >= 0 */
            long long era, doe, yoe, doy, mp, y, m, d, k = days + 719468;
            char *t = ls_ts_day_text;
            era = k / 146097;
            doe = k - era * 146097;
            yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
            y = yoe + era * 400;
            doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            mp = (5 * doy + 2) / 153;
            d = doy - (153 * mp + 2) / 5 + 1;
            m = mp < 10 ? mp + 3 : mp - 9;
            if (m <= 2) y += 1;
            t[0] = '"';
            t[1] = (char)('0' + y / 1000); t[2] = (char)('0' + y / 100 % 10);
            t[3] = (char)('0' + y / 10 % 10); t[4] = (char)('0' + y % 10);
            t[5] = '-'; t[6] = (char)('0' + m / 10); t[7] = (char)('0' + m % 10);
            t[8] = '-'; t[9] = (char)('0' + d / 10); t[10] = (char)('0' + d % 10);
            ls_ts_day = days;
        }
        ms = us / 1000;
        memcpy(p, ls_ts_day_text, 11);
        p[11] = 'T'; p[12] = (char)('0' + secs / 36000); p[13] = (char)('0' + secs / 3600 % 10);
        p[14] = ':'; p[15] = (char)('0' + secs % 3600 / 600); p[16] = (char)('0' + secs % 600 / 60);
        p[17] = ':'; p[18] = (char)('0' + secs % 60 / 10); p[19] = (char)('0' + secs % 10);
        p[20] = '.'; p[21] = (char)('0' + ms / 100); p[22] = (char)('0' + ms / 10 % 10);
        p[23] = (char)('0' + ms % 10); p[24] = 'Z'; p[25] = '"';
        memcpy(ls_ts_last_text, p, 26);
        ls_ts_last = ts;
        return 0;
    }

    /* events.round4's arithmetic on a C double (its compiled form, to the bit): 0 and *out,
       or 1 where round4 calls round() itself (|x| >= 1e8, NaN, a hair from a half). */
    static CYTHON_INLINE int ls_round4(double x, double *out) {
        double y = x * 10000.0;
        long long q;
        if (!(-1e12 < y && y < 1e12)) return 1;
        q = (long long)(y + 0.5);
        if ((double)q > y + 0.5) q -= 1;
        if (!(-0.499 < y - (double)q && y - (double)q < 0.499)) return 1;
        *out = q ? (double)q / 10000.0 : x * 0.0;
        return 0;
    }

    static CYTHON_INLINE int ls_frag(ls_buf *b, PyObject *frags, Py_ssize_t i) {
        PyObject *f = PyTuple_GET_ITEM(frags, i);
        return ls_raw(b, PyBytes_AS_STRING(f), PyBytes_GET_SIZE(f));
    }

    /* frags[0] + json(v[0]) + ... + json(v[n-1]) + frags[n], an object's bytes: v[at] is a
       time (a float written as format_ts's text, else 1), v[rounded] (-1: none) a float
       written as round4's result, else 1 (the caller's orjson path). */
    static int ls_fields(ls_buf *b, PyObject *frags, PyObject *const *v, Py_ssize_t n,
                         Py_ssize_t at, Py_ssize_t rounded) {
        Py_ssize_t i;
        int r;
        double x;
        for (i = 0; i < n; i++) {
            if ((r = ls_frag(b, frags, i)) != 0) return r;
            if (i == at)
                r = PyFloat_CheckExact(v[i]) ? ls_ts(b, PyFloat_AS_DOUBLE(v[i])) : 1;
            else if (i == rounded)
                r = PyFloat_CheckExact(v[i]) && ls_round4(PyFloat_AS_DOUBLE(v[i]), &x) == 0
                    ? ls_float(b, x) : 1;
            else
                r = ls_value(b, v[i], 0);
            if (r != 0) return r;
        }
        return ls_frag(b, frags, n);
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

    /* A PointChange's record (records.effect_line) from its fields, with no tuple: frags4
       is _POINTS_FRAGS, indexed by (action given) + 2 * (reason given); score_after is
       written as round4(score_after), at as format_ts(at). None: the caller's orjson path. */
    CYTHON_UNUSED static PyObject *ls_dump_points(
            PyObject *frags4, PyObject *contact, PyObject *rule, PyObject *group,
            PyObject *delta, PyObject *applied, PyObject *score_after, PyObject *capped,
            PyObject *event_id, PyObject *at, PyObject *action, PyObject *reason) {
        ls_buf b;
        PyObject *v[11];
        Py_ssize_t n = 9;
        int which = (action != Py_None) + 2 * (reason != Py_None);
        v[0] = contact; v[1] = rule; v[2] = group; v[3] = delta; v[4] = applied;
        v[5] = score_after; v[6] = capped; v[7] = event_id; v[8] = at;
        if (action != Py_None) v[n++] = action;
        if (reason != Py_None) v[n++] = reason;
        b.p = b.stack; b.n = 0; b.cap = sizeof(b.stack);
        return ls_finish(&b, ls_fields(&b, PyTuple_GET_ITEM(frags4, which), v, n, 8, 5));
    }

    /* An object of five values, the last a time (stage, segment and tag records). */
    CYTHON_UNUSED static PyObject *ls_dump5(PyObject *frags, PyObject *a, PyObject *c,
                                            PyObject *d, PyObject *e, PyObject *at) {
        ls_buf b;
        PyObject *v[5];
        v[0] = a; v[1] = c; v[2] = d; v[3] = e; v[4] = at;
        b.p = b.stack; b.n = 0; b.cap = sizeof(b.stack);
        return ls_finish(&b, ls_fields(&b, frags, v, 5, 4, -1));
    }

    /* An object of six values, the fourth a time (trigger records). */
    CYTHON_UNUSED static PyObject *ls_dump6(PyObject *frags, PyObject *a, PyObject *c,
                                            PyObject *d, PyObject *at, PyObject *e,
                                            PyObject *f) {
        ls_buf b;
        PyObject *v[6];
        v[0] = a; v[1] = c; v[2] = d; v[3] = at; v[4] = e; v[5] = f;
        b.p = b.stack; b.n = 0; b.cap = sizeof(b.stack);
        return ls_finish(&b, ls_fields(&b, frags, v, 6, 3, -1));
    }

    /* A time as format_ts writes it, for the tests (None: format_ts's own path). */
    CYTHON_UNUSED static PyObject *ls_dump_ts(double ts) {
        ls_buf b;
        b.p = b.stack; b.n = 0; b.cap = sizeof(b.stack);
        return ls_finish(&b, ls_ts(&b, ts));
    }
    """
    object _c_dump "ls_dump"(object value)
    object _c_dump_points "ls_dump_points"(tuple frags4, object contact, object rule,
                                           object group, object delta, object applied,
                                           object score_after, object capped, object event_id,
                                           object at, object action, object reason)
    object _c_dump5 "ls_dump5"(tuple frags, object a, object b, object c, object d, object at)
    object _c_dump6 "ls_dump6"(tuple frags, object a, object b, object c, object at, object d,
                               object e)
    object _c_dump_ts "ls_dump_ts"(double ts)
    object _c_dump_parts "ls_dump_parts"(tuple frags, tuple head, tuple tail,
                                         unsigned long times, bint nulls)

cdef bint _WRITER

@cython.locals(p=PointChange, s=StageChanged, f=TriggerFired, g=SegmentChanged, a=TagChanged,
               rec=dict)
cpdef dict effect_record(str contact, object effect, object action=*)

@cython.locals(p=PointChange, s=StageChanged, f=TriggerFired, g=SegmentChanged, a=TagChanged,
               line=object)
cpdef object effect_line(str contact, object effect, object action=*)

@cython.locals(line=object)
cpdef bytes dump_line(object value)

cpdef object time_json(double ts)

# The first eight view fields (view_line's and readmodel._encode's).
cpdef tuple view_values(Engine engine, object contact, ContactState state, double t)

@cython.locals(last=cython.double, t=cython.double, line=object, head=tuple, tail=tuple)
cpdef bytes view_line(Engine engine, str contact, ContactState state, object at)
