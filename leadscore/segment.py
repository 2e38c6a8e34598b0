"""Segment HTTP Tracking API messages -> leadscore events.

Pure functions, so the mapping can be unit-tested without a server and reused by importers.
A message that cannot be mapped is an :class:`Invalid` value naming the offending field, so
the HTTP layer can answer 400 for a single call and dead-letter one bad message of a batch
without dropping the rest (Segment's own libraries never retry a 400, they discard it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from leadscore.events import MAX_CONTACT_CHARS, MAX_DEPTH, Event, Reject, deeper_than

CALL_LIMIT = 32 * 1024
"""Segment's limit for one call (and for one message inside a batch), in bytes."""
BATCH_LIMIT = 500 * 1024
"""Segment's limit for one ``/v1/batch`` request body, in bytes."""
MAX_ACTION_CHARS = 128
MAX_ID_CHARS = 256
MIN_TS = -62135596800.0
MAX_TS = 253402300799.0
"""0001-01-01 to 9999-12-31T23:59:59Z: what ``format_ts`` can render as RFC 3339."""

SUPPORTED_TYPES = ("track", "identify", "page", "screen", "alias")

DEFAULT_EVENT_ACTIONS: Mapping[str, str] = {
    "Order Completed": "purchase",
    "Product Added": "cart.add",
    "Cart Abandoned": "cart.abandon",
    "Form Submitted": "form.submit",
    "Email Sent": "email.send",
    "Email Delivered": "email.send",
    "Email Opened": "email.open",
    "Email Link Clicked": "email.click",
    "Email Bounced": "email.bounce",
    "Unsubscribed": "email.unsubscribe",
    "Video Playback Started": "video.play",
    "Webinar Attended": "webinar.attend",
    "File Downloaded": "asset.download",
    "Asset Downloaded": "asset.download",
    "Page Viewed": "page.hit",
}
"""Segment spec event names for the standard leadscore vocabulary; config can extend it."""

_NON_WORD = re.compile(r"[\W_]+")
_LEAP_SECOND = re.compile(r"(?<=T\d\d:\d\d):60")


class Invalid:
    """A message that cannot become an event: a contract ``code``, the ``field`` at fault
    (dotted, e.g. ``batch[3].userId``) and a ``message`` that names it."""

    __slots__ = ("code", "field", "message")

    def __init__(self, code: str, field: str, message: str) -> None:
        self.code = code
        self.field = field
        self.message = message

    def reject(self) -> Reject:
        return Reject(self.code, self.message)

    def __repr__(self) -> str:
        return f"Invalid({self.code!r}, {self.field!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Invalid) and (self.code, self.field, self.message) == (
            other.code,
            other.field,
            other.message,
        )


@lru_cache(maxsize=4096)
def slugify(name: str) -> str:
    """``"Order Completed"`` -> ``"order.completed"``: lower case, word runs joined by dots.

    Unicode letters are kept (a French team's "Démo Demandée" stays readable). Cached: a
    workload repeats a handful of event names millions of times."""
    return _NON_WORD.sub(".", name.strip().lower()).strip(".")


def build_action_map(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Defaults plus ``overrides``, keyed by slug so lookups ignore case and punctuation.

    Raises ValueError for an empty key or action, so a bad config fails at start-up."""
    merged: dict[str, str] = {}
    for source in (DEFAULT_EVENT_ACTIONS, overrides or {}):
        for name, action in source.items():
            key = slugify(name)
            if not key or not isinstance(action, str) or not action.strip():
                raise ValueError(f"action mapping {name!r} -> {action!r}: both must be non-empty")
            merged[key] = action.strip()
    return merged


def action_for(event_name: str, action_map: Mapping[str, str]) -> str:
    """The leadscore action for a Segment event name; unmapped names become their slug."""
    slug = slugify(event_name)
    return action_map.get(slug, slug)


def parse_time(value: object, field: str) -> float | Invalid | None:
    """Epoch seconds from ISO 8601 text (Segment's format) or an epoch number; None if absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        return Invalid("wrong_type", field, f"field '{field}' must be an ISO 8601 date-time")
    if isinstance(value, int | float):
        ts = float(value)
        if not math.isfinite(ts):
            return Invalid("non_finite", field, f"field '{field}' is NaN or infinite")
        if ts < 0:
            return Invalid("bad_ts", field, f"field '{field}' is a negative epoch: {value!r}")
        ts = ts / 1000.0 if ts >= 1e11 else ts
    elif isinstance(value, str):
        dt = _iso_datetime(value)
        if dt is None:
            return Invalid("bad_ts", field, f"field '{field}' is not ISO 8601: {value[:64]!r}")
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            # A valid date-time a few hours outside years 1-9999 once shifted to UTC
            # (0001-01-01T00:00+01:00) is pinned to the edge rather than refused.
            ts = min(max(dt.timestamp(), MIN_TS), MAX_TS)
        except (OverflowError, ValueError, OSError):
            return Invalid("bad_ts", field, f"field '{field}' is out of range: {value[:64]!r}")
    else:
        return Invalid("wrong_type", field, f"field '{field}' must be an ISO 8601 date-time string")
    if not MIN_TS <= ts <= MAX_TS:
        return Invalid("bad_ts", field, f"field '{field}' is out of range: {value!r:.64}")
    return ts


def _iso_datetime(text: str) -> datetime | None:
    """``fromisoformat`` plus the RFC 3339 spellings it refuses: lower-case ``t``/``z`` and a
    leap second (``:60``, read as ``:59``)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(_LEAP_SECOND.sub(":59", text.upper(), count=1))
    except ValueError:
        return None


def event_time(timestamp: float | None, sent_at: float | None, received_at: float) -> float:
    """Segment's clock-skew correction: ``receivedAt - (sentAt - timestamp)``.

    A device whose clock is an hour fast sends both fields an hour ahead; the difference is
    the true age of the event, measured on one clock. A correction that lands outside the
    representable years (absurd sentAt) is not one: the timestamp is kept as sent. An event
    "sent before it happened" (timestamp after sentAt) is dated at receipt: no correction may
    date an event after it arrived, which would move the flow's clock into the future."""
    if timestamp is None:
        return received_at
    if sent_at is None:
        return timestamp
    corrected = received_at - (sent_at - timestamp)
    if not MIN_TS <= corrected <= MAX_TS:
        return timestamp
    return min(corrected, received_at)


def _identifier(value: object, where: str, key: str) -> str | Invalid | None:
    if type(value) is str:  # the common case, checked first: this runs 3x per message
        if len(value) <= MAX_CONTACT_CHARS:
            return value or None
    elif value is None:
        return None
    elif isinstance(value, bool) or not isinstance(value, int):
        field = where + key
        return Invalid("wrong_type", field, f"field '{field}' must be a string")
    text = str(value)
    if len(text) > MAX_CONTACT_CHARS:
        field = where + key
        return Invalid(
            "wrong_type", field, f"field '{field}' must be at most {MAX_CONTACT_CHARS} characters"
        )
    return text


def _object(msg: Mapping[str, Any], key: str, where: str) -> dict[str, Any] | Invalid | None:
    value = msg.get(key)
    if value is None or type(value) is dict:
        return value
    field = where + key
    return Invalid("wrong_type", field, f"field '{field}' must be an object")


def _time(msg: Mapping[str, Any], key: str, where: str) -> float | Invalid | None:
    value = msg.get(key)
    return None if value is None else parse_time(value, where + key)


def map_message(
    msg: object,
    kind: str | None,
    *,
    received_at: float,
    action_map: Mapping[str, str],
    batch_sent_at: float | None = None,
    where: str = "",
) -> Event | Invalid:
    """One Segment message -> Event.

    ``kind`` is the call type fixed by the endpoint (``/v1/track`` -> ``"track"``) or None to
    read the message's ``type`` (batch). ``where`` prefixes field names (``"batch[3]."``).
    ``batch_sent_at`` is the batch's ``sentAt``, used when the message has none.
    Field names are only built on the error paths: a batch maps 100 of these per request.
    """
    if type(msg) is not dict:
        return Invalid("not_an_object", where.rstrip(".") or "body", "a message must be an object")
    if deeper_than(msg, MAX_DEPTH):
        return Invalid(
            "too_deep",
            where.rstrip(".") or "body",
            f"the message nests more than {MAX_DEPTH} levels deep",
        )
    if kind is None:
        kind = msg.get("type")
        if kind is None:
            return Invalid("missing_field", where + "type", f"field '{where}type' is required")
        if not isinstance(kind, str):
            return Invalid("wrong_type", where + "type", f"field '{where}type' must be a string")
    if kind not in SUPPORTED_TYPES:
        return Invalid(
            "unknown_action",
            where + "type",
            f"field '{where}type': {str(kind)[:32]!r} is not supported, expected one of "
            + ", ".join(SUPPORTED_TYPES),
        )

    user = _identifier(msg.get("userId"), where, "userId")
    if isinstance(user, Invalid):
        return user
    anon = _identifier(msg.get("anonymousId"), where, "anonymousId")
    if isinstance(anon, Invalid):
        return anon
    merge: tuple[str, ...] | None = None
    if kind == "alias":
        # Segment's alias: previousId (usually the anonymous id) becomes userId.
        previous = _identifier(msg.get("previousId"), where, "previousId")
        if isinstance(previous, Invalid):
            return previous
        if user is None:
            return Invalid("missing_field", where + "userId", f"field '{where}userId' is required")
        if previous is None:
            return Invalid(
                "missing_field", where + "previousId", f"field '{where}previousId' is required"
            )
        merge = (previous,) if previous != user else None
    elif kind == "identify" and user is not None and anon is not None and anon != user:
        merge = (anon,)  # the anonymous history becomes the user's (issue 18)
    contact = user or anon
    if contact is None:
        return Invalid(
            "missing_field",
            where + "userId",
            f"field '{where}userId' or '{where}anonymousId' is required",
        )

    message_id = _identifier(msg.get("messageId"), where, "messageId")
    if isinstance(message_id, Invalid):
        return message_id

    timestamp = _time(msg, "timestamp", where)
    if isinstance(timestamp, Invalid):
        return timestamp
    sent_at = _time(msg, "sentAt", where)
    if isinstance(sent_at, Invalid):
        return sent_at
    ts = event_time(timestamp, sent_at if sent_at is not None else batch_sent_at, received_at)

    context = _object(msg, "context", where)
    if isinstance(context, Invalid):
        return context
    context = context or {}
    properties = _object(msg, "properties", where)
    if isinstance(properties, Invalid):
        return properties
    props: dict[str, Any] = dict(properties) if properties else {}
    traits = _object(msg, "traits", where)
    if isinstance(traits, Invalid):
        return traits
    if traits is None and type(context.get("traits")) is dict:
        traits = context["traits"]

    if kind == "track":
        name = msg.get("event")
        if name is None:
            return Invalid("missing_field", where + "event", f"field '{where}event' is required")
        if not isinstance(name, str):
            return Invalid("wrong_type", where + "event", f"field '{where}event' must be a string")
        action = action_for(name, action_map)
        if not action:
            return Invalid(
                "wrong_type",
                where + "event",
                f"field '{where}event' must contain a letter or digit, got {name[:32]!r}",
            )
        if len(action) > MAX_ACTION_CHARS:
            return Invalid(
                "wrong_type",
                where + "event",
                f"field '{where}event' must be at most {MAX_ACTION_CHARS} characters",
            )
    elif kind == "identify" or kind == "alias":
        action = "identify"
        if traits is None:
            traits = {}
    else:
        action = "page.hit" if kind == "page" else "screen.view"
        page = context.get("page")
        if kind == "page" and isinstance(page, dict):
            for key in ("url", "title", "referrer", "path"):
                if key not in props and page.get(key) is not None:
                    props[key] = page[key]
        for key in ("name", "category"):
            value = msg.get(key)
            if key not in props and isinstance(value, str) and value:
                props[key] = value
    return Event(contact, action, ts, message_id, props, traits, merge)
