"""The event contract: what a tracking pixel, a server or a file may send us.

A rejection is a value (:class:`Reject`), never an exception, so a bad line can go to the
dead-letter output with its reason and the stream keeps flowing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

try:
    import cython  # compiled: directives; interpreted: Cython's shadow module, which ignores them
except ImportError:  # Cython not installed (a plain `pip install`): nothing is compiled anyway
    from leadscore import _pure as cython

MAX_EVENT_BYTES = 64 * 1024
MAX_CONTACT_CHARS = 256
MAX_DEPTH = 200
MAX_MERGE = 16
"""How many ids one identify event may merge into its contact (``merge``): a form or a login
links a handful of cookies; hundreds would be a bug or an attack, refused as ``bad_merge``."""
MERGE_ACTION = "identify"  # the one action that may carry ``merge``
"""How deeply an event's JSON may nest, the event object being level 1: deeper is
``too_deep``, and so is JSON the decoder refuses for its depth (1024 levels). Far beyond real
props, yet every step downstream can handle what passes: orjson writes 254 levels at most
and pickling (events cross Bytewax processes) recurses. A line of at most ``2 * MAX_DEPTH``
bytes cannot nest that deep, so the usual line is never measured."""
_MS_THRESHOLD = 1e11  # epoch seconds this large are year 5138: treat as milliseconds
_MAX_TS = 253402300799.0  # 9999-12-31T23:59:59Z, the last instant RFC 3339 can write
MAX_TS = _MAX_TS
DEFAULT_MAX_FUTURE = 300.0  # seconds an event may be dated past the clock (clock skew)
# Passed as ``now`` by replays: an event without ``ts`` gets this time (a float, so it takes the
# fast path), and the replay gives it its partition's clock, never the wall clock.
NO_TS = -1.0

STANDARD_ACTIONS = frozenset(
    {
        "page.hit",
        "email.send",
        "email.open",
        "email.click",
        "email.bounce",
        "email.unsubscribe",
        "form.submit",
        "asset.download",
        "cart.add",
        "cart.abandon",
        "purchase",
        "identify",
        "video.play",
        "webinar.attend",
    }
)


@cython.no_gc  # compiled: not tracked by the garbage collector (see below)
@cython.cclass
class Event:
    """One validated event. Slotted: the hot path creates one per input line.

    Compiled (``leadscore/accel.py``), a C type (``events.pxd``): its fields are a C struct that
    the typed parser writes and the engine reads directly, ``ts`` a C double (always a float).
    Made without ``__init__`` by ``Event.__new__(Event)`` (``object.__new__`` refuses a C
    type); pickled by ``__reduce__``, so either build reads what the other wrote. Compiled, the
    garbage collector does not track events (``no_gc``): one is made per line, and each one
    tracked made the young generation fill, and be traversed, that much sooner. An event holds
    decoded JSON, which cannot refer back to it; a cycle built by hand through an event's
    ``props`` would never be collected.
    """

    __slots__ = ("action", "contact", "id", "merge", "props", "traits", "ts")

    def __init__(
        self,
        contact: str,
        action: str,
        ts: float,
        id: str | None = None,
        props: dict[str, Any] | None = None,
        traits: dict[str, Any] | None = None,
        merge: tuple[str, ...] | None = None,
    ) -> None:
        self.contact = contact
        self.action = action
        self.ts = ts
        self.id = id
        self.props = props if props is not None else {}
        self.traits = traits
        # Identify only: the ids (visitors) whose history becomes this contact's. Never empty,
        # never the contact itself, no repeats (see merge_ids); None on every other event.
        self.merge = merge

    def __reduce__(self) -> tuple[Any, ...]:
        # Events cross processes pickled (Bytewax exchanges a shard's items between workers):
        # a constructor call round-trips in 2.4 us an event, the default slot state in 10.6.
        return Event, (
            self.contact,
            self.action,
            self.ts,
            self.id,
            self.props,
            self.traits,
            self.merge,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"contact": self.contact, "action": self.action, "ts": self.ts}
        if self.id is not None:
            out["id"] = self.id
        if self.props:
            out["props"] = self.props
        if self.traits is not None:
            out["traits"] = self.traits
        if self.merge is not None:
            out["merge"] = list(self.merge)
        return out

    def __repr__(self) -> str:
        return f"Event({self.contact!r}, {self.action!r}, ts={self.ts}, id={self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self.to_dict() == other.to_dict()


class Reject:
    """Why an input was refused: a short ``code`` to count by and a ``detail`` for people."""

    __slots__ = ("code", "detail")

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail

    def __repr__(self) -> str:
        return f"Reject({self.code!r}, {self.detail!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reject) and (self.code, self.detail) == (other.code, other.detail)

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


def latest_ts(now: float, max_future: float = DEFAULT_MAX_FUTURE) -> float:
    """The latest event time accepted at wall-clock ``now``: ``now`` plus the tolerance."""
    return min(now + max_future, _MAX_TS)


def parse_ts(value: object, now: float, latest: float = _MAX_TS) -> float | Reject:
    """Epoch seconds from RFC 3339 text, epoch seconds or epoch milliseconds.

    A missing ``ts`` is ``now``. A time after ``latest`` (see :func:`latest_ts`) is refused as
    in the future: one event dated 2099 must not move a replay's clock for every contact.
    Text without a time zone is refused rather than guessed to be UTC.
    """
    kind = type(value)  # exact types, cheapest first: this runs once per event
    if kind is str:
        ts = utc_text_seconds(value) if _BY_HAND else -1.0  # the usual shapes, by hand
        if ts >= 0.0:
            if ts > latest:
                return _out_of_range(value[:64], ts, latest)
            return ts
        try:
            dt = datetime.fromisoformat(value)  # type: ignore[arg-type]
        except ValueError:
            return Reject("bad_ts", f"field 'ts' is not RFC 3339: {value[:64]!r}")  # type: ignore[index]
        if dt.tzinfo is None:
            return Reject(
                "bad_ts",
                f"field 'ts' has no time zone: {value[:64]!r}; add Z for UTC or an offset "  # type: ignore[index]
                "such as +01:00 (2026-03-02T09:00:00Z)",
            )
        try:
            ts = dt.timestamp()
        except (OverflowError, ValueError, OSError):
            return Reject("bad_ts", f"field 'ts' is out of range: {value[:64]!r}")  # type: ignore[index]
        if not 0 <= ts <= latest:
            return _out_of_range(value[:64], ts, latest)  # type: ignore[index]
        return ts
    if kind is float or kind is int:
        try:
            ts = float(value)  # type: ignore[arg-type]
        except OverflowError:
            return Reject("bad_ts", f"field 'ts' is out of range: {str(value)[:32]}")
        if not math.isfinite(ts):
            return Reject("non_finite", "field 'ts' is NaN or infinite")
        if ts < 0:
            return Reject("bad_ts", f"field 'ts' is negative: {value!r}")
        ts = ts / 1000.0 if ts >= _MS_THRESHOLD else ts
        if ts > latest:
            return _out_of_range(value, ts, latest)
        return ts
    if value is None:
        return now
    if kind is bool:
        return Reject("wrong_type", "field 'ts' must be RFC 3339 text or an epoch number")
    return Reject("wrong_type", f"field 'ts' must be text or a number, got {_json_type(value)}")


def ts_seconds(value: object, now: float, latest: float = _MAX_TS) -> float:
    """What :func:`parse_ts` returns when that is a float, else NaN (ask parse_ts why).

    The typed parser's fast path: compiled, the usual text comes back as a C double, with no
    float object or Reject made for it; anything else is parse_ts's own answer.
    """
    if _BY_HAND and type(value) is str:
        ts = utc_text_seconds(value)  # type: ignore[arg-type]
        if 0.0 <= ts <= latest:
            return ts
    seconds = parse_ts(value, now, latest)
    return seconds if type(seconds) is float else math.nan


# Compiled (leadscore/accel.py), parse_ts reads the usual RFC 3339 text by hand: ~2k
# instructions instead of fromisoformat + timestamp's ~4k. Interpreted, that character loop
# costs ~44k, so the .py keeps the reference reading (the results are the same either way).
_BY_HAND = not __file__.endswith(".py")
# Days before each month (1-12) of a common year, and each month's length.
_DAYS_BEFORE_MONTH = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_EPOCH_DAY = 719162  # days from 0001-01-01 to 1970-01-01 in the proleptic Gregorian calendar
# The digit positions of YYYY-MM-DDTHH:MM:SS.fffZ, one bit each (the rest are separators).
_DIGIT_AT = sum(1 << i for i in (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22))


def utc_text_seconds(text: str) -> float:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM:SSZ`` or ``YYYY-MM-DDTHH:MM:SS.fffZ`` (years 1970 to
    2199), read by hand; -1.0 for any other text, which :func:`parse_ts` reads the reference way.

    ``datetime.fromisoformat(text).timestamp()`` to the bit (tests/test_events.py checks it,
    hypothesis-driven): that is the whole microseconds since 1970 over 10**6, correctly rounded,
    and until 2199 they are below 2**53, so a C double divides them exactly as Python's int / int
    does. Three quarters of parse_ts's cost was fromisoformat and an aware timestamp(), which
    builds a timedelta and divides Python ints; compiled, this is a few dozen C operations.
    """
    if _BY_HAND:  # compiled: the same reading in C, from the string's buffer (events.pxd)
        return _c_utc_text_seconds(text)  # type: ignore[no-any-return]  # noqa: F821
    n = len(text)
    if n != 24 and n != 20:
        return -1.0
    # One pass over the characters (compiled: a C loop over the text's buffer, where indexing
    # would check the bounds of each of the 24 reads): a digit position adds to the number
    # being read, a separator position must hold its separator and ends that number.
    year = month = day = hour = minute = second = millis = 0
    value = 0
    k = 0  # separators passed so far: which field the digits belong to
    for i, c in enumerate(text):
        if _DIGIT_AT >> i & 1:
            if not "0" <= c <= "9":
                return -1.0
            value = value * 10 + (ord(c) - 48)
        else:
            if k < 2:
                if c != "-":
                    return -1.0
                if k == 0:
                    year = value
                else:
                    month = value
            elif k == 2:
                if c != "T":
                    return -1.0
                day = value
            elif k < 5:
                if c != ":":
                    return -1.0
                if k == 3:
                    hour = value
                else:
                    minute = value
            elif k == 5:
                if n == 24:
                    if c != ".":
                        return -1.0
                elif c != "Z":
                    return -1.0
                second = value
            else:
                if c != "Z":
                    return -1.0
                millis = value
            value = 0
            k += 1
    if (
        not 1970 <= year <= 2199
        or not 1 <= month <= 12
        or day < 1
        or hour > 23
        or minute > 59
        or second > 59
    ):
        return -1.0
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    month_days = _DAYS_IN_MONTH[month]
    if day > month_days + (1 if leap and month == 2 else 0):
        return -1.0
    before = year - 1
    days = before * 365 + before // 4 - before // 100 + before // 400 - _EPOCH_DAY
    before_month = _DAYS_BEFORE_MONTH[month]
    days += before_month + (1 if leap and month > 2 else 0) + day - 1
    micros = ((days * 86400 + hour * 3600 + minute * 60 + second) * 1000 + millis) * 1000
    return micros / 1_000_000


def _out_of_range(value: object, ts: float, latest: float) -> Reject:
    if ts < 0:
        return Reject("bad_ts", f"field 'ts' is before 1970: {value!r}")
    if ts > _MAX_TS:
        return Reject("bad_ts", f"field 'ts' is after the year 9999: {value!r}")
    return Reject(
        "bad_ts",
        f"field 'ts' is in the future: {value!r} is after {format_ts(latest)}, the clock plus "
        "the allowed skew (max_future); check the sender's clock and time zone",
    )


def _format_ts_slow(ts: float) -> str:
    # The reference rendering; the fast path below must match it to the byte.
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# format_ts runs once per output record and an aware isoformat() costs microseconds (it asks
# the tzinfo for its offset), so the hour is cached as text and the rest is looked up: one
# dict probe, two table indexes and two concatenations.
_HOURS: dict[int, str] = {}  # epoch hour -> "YYYY-MM-DDTHH:"
_HOURS_MAX = 1 << 14  # ~2 years of distinct hours; cleared, not evicted, past that
_MINUTES_SECONDS = tuple(f"{m:02d}:{s:02d}." for m in range(60) for s in range(60))
_MILLIS = tuple(f"{ms:03d}Z" for ms in range(1000))


# The last rendering: an event's records (points, stage, triggers) share its time, so about
# a third of the calls repeat the previous one. One tuple, replaced whole: thread-safe. It
# sits in a list rather than being a module global rebound per call: compiled, every global
# lookup is cached against the module dict's version, which rebinding a global bumps.
_LAST_FORMATTED: list[tuple[float, str]] = [(math.nan, "")]


def format_ts(ts: float) -> str:
    """RFC 3339 in UTC with milliseconds, the form every output uses."""
    last = _LAST_FORMATTED[0]
    if ts == last[0]:  # equal numbers render alike (NaN never matches)
        return last[1]
    if 0.0 <= ts <= _MAX_TS:  # NaN, negative and huge values take the reference path
        whole = int(ts)  # the integer part: ts >= 0, so truncation is floor (compiled: a C cast)
        # fromtimestamp's rounding exactly: the fraction (exact for a float) to microseconds
        # half to even, carried into the second at 1e6; isoformat then truncates to millis.
        # floor(z + 0.5) is that rounding whenever z is not within a hair of a half (the
        # difference is exact there); round() takes the rest. z >= 0: int() is floor.
        z = (ts - whole) * 1e6
        us = int(z + 0.5)
        if not -0.5 < z - us < 0.5:
            us = round(z)
        if us >= 1_000_000:
            whole += 1
            us -= 1_000_000
        hour, rest = divmod(whole, 3600)
        prefix = _HOURS.get(hour)
        if prefix is None:
            if len(_HOURS) >= _HOURS_MAX:
                _HOURS.clear()
            prefix = _HOURS[hour] = _format_ts_slow(hour * 3600)[:14]
        text = f"{prefix}{_MINUTES_SECONDS[rest]}{_MILLIS[us // 1000]}"  # one allocation
    else:
        text = _format_ts_slow(ts)
    _LAST_FORMATTED[0] = (ts, text)
    return text


def round4(x: float) -> float:
    """``round(x, 4)`` exactly, without its decimal round trip (~1.5k instructions a call).

    With y = x * 1e4 (off the exact product by at most 2**-14 below 1e12) and q the integer
    nearest y: if y is clearly not a half-way case, q is round-half-even of the exact
    product, and q / 10000 (int / int, correctly rounded) is the double round() returns.
    When q is 0 that is a zero with x's sign, which x * 0.0 has (views round many 0.0
    scores). Huge, non-finite and near-half values take round() itself.
    """
    y = x * 10000.0
    if -1e12 < y < 1e12:
        q = int(y + 0.5)  # toward zero; floor(y + 0.5) is q or, below zero, q - 1
        if q > y + 0.5:
            q -= 1
        if -0.499 < y - q < 0.499:
            return q / 10000 if q else x * 0.0
    return round(x, 4)


def deeper_than(value: object, limit: int) -> bool:
    """Whether JSON containers nest more than ``limit`` levels (``value`` is level 1).

    Level by level, not recursion, so any depth a decoder hands us is safe to measure; and a
    shallow nest, the usual case, costs a comprehension per level."""
    if type(value) is not dict and type(value) is not list:
        return False
    return _levels_below([value], 1, limit)


def _levels_below(level: list[Any], depth: int, limit: int) -> bool:
    # ``level`` holds the containers at ``depth``: is any container deeper than ``limit``?
    while level:
        if depth > limit:
            return True
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is dict or type(child) is list
        ]
        depth += 1
    return False


def _too_deep() -> Reject:
    return Reject("too_deep", f"the event nests more than {MAX_DEPTH} levels deep")


_SHALLOW_BYTES = 2 * MAX_DEPTH  # nesting past MAX_DEPTH takes more brackets than this


def _too_deep_line(raw: bytes, obj: object) -> bool:
    """deeper_than(obj, MAX_DEPTH) for a long line, counting its brackets (in C) first."""
    return raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and deeper_than(obj, MAX_DEPTH)


def _undecodable(exc: orjson.JSONDecodeError) -> Reject:
    # orjson gives up at 1024 levels: that is a depth problem, not a syntax one.
    text = str(exc)
    return _too_deep() if text.startswith("depth limit") else Reject("invalid_json", text)


def validate_event(
    obj: object, now: float, size: int = 0, *, latest: float = _MAX_TS
) -> Event | Reject:
    """Check an already-decoded object against the contract; ``size`` is its raw byte size.

    ``now`` stands in for a missing ``ts``; ``latest`` is the latest time accepted (see
    :func:`latest_ts`; the default refuses only what RFC 3339 cannot write).
    """
    if size > MAX_EVENT_BYTES:
        return Reject("too_large", f"event is {size} bytes, the limit is {MAX_EVENT_BYTES}")
    if not isinstance(obj, dict):
        return Reject("not_an_object", f"an event must be a JSON object, got {_json_type(obj)}")
    if deeper_than(obj, MAX_DEPTH):
        return _too_deep()
    contact = obj.get("contact")
    if contact is None:
        return Reject("missing_field", "field 'contact' is required")
    if not isinstance(contact, str):
        return Reject("wrong_type", f"field 'contact' must be a string, got {_json_type(contact)}")
    if not contact or len(contact) > MAX_CONTACT_CHARS:
        return Reject("wrong_type", "field 'contact' must be 1 to 256 characters")
    action = obj.get("action")
    if action is None:
        return Reject("missing_field", "field 'action' is required")
    if not isinstance(action, str) or not action:
        return Reject("wrong_type", "field 'action' must be a non-empty string")
    ts = parse_ts(obj.get("ts"), now, latest)
    if type(ts) is Reject:
        return ts
    event_id = obj.get("id")
    if event_id is not None and not isinstance(event_id, str):
        if isinstance(event_id, int) and not isinstance(event_id, bool):
            event_id = str(event_id)
        else:
            return Reject("wrong_type", f"field 'id' must be a string, got {_json_type(event_id)}")
    props = obj.get("props")
    if props is None:
        props = {}
    elif not isinstance(props, dict):
        return Reject("wrong_type", f"field 'props' must be an object, got {_json_type(props)}")
    traits = obj.get("traits")
    if traits is not None and not isinstance(traits, dict):
        return Reject("wrong_type", f"field 'traits' must be an object, got {_json_type(traits)}")
    merge = obj.get("merge")
    if merge is not None:
        merge = merge_ids(merge, contact, action)
        if type(merge) is Reject:
            return merge
    # Slots set directly: calling the class costs ~0.15 µs more (it runs __init__ from C).
    event = Event.__new__(Event)
    event.contact = contact
    event.action = action
    event.ts = ts  # type: ignore[assignment]
    event.id = event_id
    event.props = props
    event.traits = traits
    event.merge = merge  # type: ignore[assignment]
    return event


def merge_ids(value: object, contact: str, action: str) -> tuple[str, ...] | Reject | None:
    """The ``merge`` field of an identify event: the ids to merge into ``contact``.

    Defined results for hostile lists: the contact itself and repeats are dropped (a contact
    merged into itself changes nothing), so a list of only those is no merge at all (None);
    more than MAX_MERGE ids, or ``merge`` on another action, is refused (``bad_merge``).
    An id that never existed is accepted: merging it adds nothing, and its later events go to
    ``contact``.
    """
    if not isinstance(value, list):
        return Reject(
            "wrong_type",
            f"field 'merge' must be an array of contact ids, got {_json_type(value)}",
        )
    if action != MERGE_ACTION:
        return Reject(
            "bad_merge",
            f"field 'merge' is only allowed on action {MERGE_ACTION!r}, not {action[:64]!r}",
        )
    if len(value) > MAX_MERGE:
        return Reject(
            "bad_merge",
            f"field 'merge' names {len(value)} ids; at most {MAX_MERGE} may be merged by one "
            "event: send several identify events",
        )
    ids: list[str] = []
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= MAX_CONTACT_CHARS:
            return Reject(
                "wrong_type",
                f"field 'merge' must hold contact ids (strings of 1 to {MAX_CONTACT_CHARS} "
                f"characters), got {_json_type(item)}",
            )
        if item != contact and item not in ids:
            ids.append(item)
    return tuple(ids) if ids else None


def parse_event(raw: bytes | str, now: float, latest: float = _MAX_TS) -> Event | Reject:
    """Decode one JSON event. orjson refuses NaN and Infinity, which the contract forbids.

    parse_events' inlined common case for one line (a one-item parse_events call would cost
    more than it saves); anything unusual takes :func:`_parse_event_checked`.
    """
    if type(raw) is bytes and len(raw) <= MAX_EVENT_BYTES:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _undecodable(exc)
        if type(obj) is dict:
            contact = obj.get("contact")
            action = obj.get("action")
            event_id = obj.get("id")
            props = obj.get("props")
            traits = obj.get("traits")
            value = obj.get("ts")
            if (
                "merge" not in obj  # identify with merge: validate_event checks the list
                and type(contact) is str
                and 0 < len(contact) <= MAX_CONTACT_CHARS
                and type(action) is str
                and action
                and (event_id is None or type(event_id) is str)
                and (props is None or type(props) is dict)
                and (traits is None or type(traits) is dict)
                and type(ts := parse_ts(value, now, latest)) is float
                and (len(raw) <= _SHALLOW_BYTES or not _too_deep_line(raw, obj))
            ):
                event = Event.__new__(Event)
                event.contact = contact
                event.action = action
                event.ts = ts
                event.id = event_id
                event.props = {} if props is None else props
                event.traits = traits
                event.merge = None
                return event
        return validate_event(obj, now, latest=latest)
    return _parse_event_checked(raw, now, latest)


def _parse_event_checked(raw: bytes | str, now: float, latest: float = _MAX_TS) -> Event | Reject:
    # Size, JSON, then every check of validate_event: what parse_events must agree with.
    size = len(raw) if type(raw) is bytes else len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_EVENT_BYTES:
        return Reject("too_large", f"event is {size} bytes, the limit is {MAX_EVENT_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _undecodable(exc)
    return validate_event(obj, now, latest=latest)


def parse_events(
    lines: Iterable[bytes | str], now: float, latest: float = _MAX_TS
) -> list[Event | Reject]:
    """``[parse_event(raw, now, latest) for raw in lines]``, for a chunk of lines at a time.

    The checks of the common case (bytes, a JSON object, text contact and action, text or
    numeric ts, the optional fields of the usual types) are inlined here with local names,
    saving three calls and a dozen global lookups per line. Anything else goes through
    validate_event (and the size and JSON checks before it), so every rejection and its
    reason come from one place.
    """
    out: list[Event | Reject] = []
    append = out.append
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    fromisoformat = datetime.fromisoformat
    new = Event.__new__
    event_type = Event
    max_ts = latest
    shallow_bytes = _SHALLOW_BYTES
    for raw in lines:
        if type(raw) is not bytes or len(raw) > MAX_EVENT_BYTES:
            append(_parse_event_checked(raw, now, latest))
            continue
        try:
            obj = loads(raw)
        except decode_error as exc:
            append(_undecodable(exc))
            continue
        if type(obj) is dict:
            get = obj.get
            contact = get("contact")
            action = get("action")
            event_id = get("id")
            props = get("props")
            traits = get("traits")
            if (
                "merge" not in obj  # identify with merge: validate_event checks the list
                and type(contact) is str
                and 0 < len(contact) <= MAX_CONTACT_CHARS
                and type(action) is str
                and action
                and (event_id is None or type(event_id) is str)
                and (props is None or type(props) is dict)
                and (traits is None or type(traits) is dict)
            ):
                value = get("ts")
                ts: float | Reject | None = None
                if type(value) is str:
                    try:
                        dt = fromisoformat(value)
                    except ValueError:
                        dt = None
                    # No time zone: validate_event below rejects it with its reason.
                    if dt is not None and dt.tzinfo is not None:
                        try:
                            ts = dt.timestamp()
                        except (OverflowError, ValueError, OSError):
                            ts = None
                        else:
                            if not 0 <= ts <= max_ts:
                                ts = None
                else:
                    ts = parse_ts(value, now, latest)
                # A line too short to nest past MAX_DEPTH is not measured (the usual case).
                if type(ts) is float and (
                    len(raw) <= shallow_bytes or not _too_deep_line(raw, obj)
                ):
                    event = new(event_type)
                    event.contact = contact
                    event.action = action
                    event.ts = ts
                    event.id = event_id
                    event.props = {} if props is None else props
                    event.traits = traits
                    event.merge = None
                    append(event)
                    continue
        append(validate_event(obj, now, latest=latest))
    return out


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
