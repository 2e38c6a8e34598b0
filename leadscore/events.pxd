# Cython declarations for leadscore/events.py (pure-Python mode: the .py is the source).
# Only the per-record and per-event helpers are typed; parameters that a caller may pass as
# any Python number stay objects, so what they return keeps its Python type.
cimport cython

# The event: a C struct its producers (typed.py) write and the engine reads. contact and action
# are exact str (the parsers only make those); id, props, traits and merge keep whatever a
# caller gives, as the Python class does; ts is a C double, as the engine reads it.
@cython.final
cdef class Event:
    cdef public str contact
    cdef public str action
    cdef public double ts
    cdef public object id
    cdef public object props
    cdef public object traits
    cdef public object merge

# The usual RFC 3339 text read in C (events.py `utc_text_seconds`, compiled only): its fixed
# layout read straight from the string's one-byte buffer, each position once, instead of a
# loop that asks the string's kind per character (~580 -> ~100 instructions a call). The same
# checks and the same arithmetic as the Python loop it stands for (tests/test_events.py checks
# both against fromisoformat, hypothesis-driven); -1.0 for anything else.
cdef extern from *:
    """
    static CYTHON_INLINE double ls_utc_text_seconds(PyObject *text) {
        const unsigned char *s;
        Py_ssize_t n;
        unsigned bad, year, month, day, hour, minute, second, millis, leap, days_in;
        long long before, days, micros;
        static const unsigned before_month[13] =
            {0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334};
        static const unsigned month_len[13] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        if (!PyUnicode_CheckExact(text)) return -1.0;
    #if PY_VERSION_HEX < 0x030C0000
        if (!PyUnicode_IS_READY(text)) return -1.0;
    #endif
        n = PyUnicode_GET_LENGTH(text);
        if ((n != 24 && n != 20) || PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND) return -1.0;
        s = (const unsigned char *)PyUnicode_DATA(text);
    #define LS_D(i) ((unsigned)s[i] - 48u)
        bad = (LS_D(0) > 9) | (LS_D(1) > 9) | (LS_D(2) > 9) | (LS_D(3) > 9) | (LS_D(5) > 9)
            | (LS_D(6) > 9) | (LS_D(8) > 9) | (LS_D(9) > 9) | (LS_D(11) > 9) | (LS_D(12) > 9)
            | (LS_D(14) > 9) | (LS_D(15) > 9) | (LS_D(17) > 9) | (LS_D(18) > 9)
            | (s[4] != '-') | (s[7] != '-') | (s[10] != 'T') | (s[13] != ':') | (s[16] != ':');
        if (n == 24) {
            bad |= (s[19] != '.') | (LS_D(20) > 9) | (LS_D(21) > 9) | (LS_D(22) > 9)
                | (s[23] != 'Z');
            millis = LS_D(20) * 100 + LS_D(21) * 10 + LS_D(22);
        } else {
            bad |= (s[19] != 'Z');
            millis = 0;
        }
        if (bad) return -1.0;
        year = LS_D(0) * 1000 + LS_D(1) * 100 + LS_D(2) * 10 + LS_D(3);
        month = LS_D(5) * 10 + LS_D(6);
        day = LS_D(8) * 10 + LS_D(9);
        hour = LS_D(11) * 10 + LS_D(12);
        minute = LS_D(14) * 10 + LS_D(15);
        second = LS_D(17) * 10 + LS_D(18);
    #undef LS_D
        if (year < 1970 || year > 2199 || month < 1 || month > 12 || day < 1 || hour > 23
            || minute > 59 || second > 59) return -1.0;
        leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        days_in = month_len[month] + (leap && month == 2 ? 1 : 0);
        if (day > days_in) return -1.0;
        before = (long long)year - 1;
        days = before * 365 + before / 4 - before / 100 + before / 400 - 719162;
        days += before_month[month] + (leap && month > 2 ? 1 : 0) + day - 1;
        micros = ((days * 86400 + hour * 3600 + minute * 60 + second) * 1000 + millis) * 1000;
        return (double)micros / 1000000.0;
    }
    """
    double _c_utc_text_seconds "ls_utc_text_seconds" (object text)

# The formatting and calendar tables: C globals, read without a module dict lookup.
cdef dict _HOURS
cdef long _HOURS_MAX
cdef tuple _MINUTES_SECONDS, _MILLIS, _DAYS_BEFORE_MONTH, _DAYS_IN_MONTH
cdef list _LAST_FORMATTED
cdef long _EPOCH_DAY, _DIGIT_AT
cdef bint _BY_HAND

@cython.locals(y=cython.double, q=cython.longlong)
cpdef object round4(object x)

@cython.locals(last=tuple, whole=cython.longlong, z=cython.double, us=cython.longlong,
               hour=cython.longlong, rest=cython.longlong, prefix=str, text=str)
cpdef str format_ts(double ts)

@cython.locals(ts=cython.double)
cpdef object parse_ts(object value, object now, double latest=*)

@cython.locals(ts=cython.double)
cpdef double ts_seconds(object value, object now, double latest=*)

@cython.locals(n=Py_ssize_t, millis=long, year=long, month=long, day=long, hour=long,
               minute=long, second=long, value=long, k=long, i=Py_ssize_t, c=Py_UCS4,
               leap=bint, month_days=long, before=long, days=long, before_month=long,
               micros=cython.longlong)
cpdef double utc_text_seconds(str text)
