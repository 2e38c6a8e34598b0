"""The ingest endpoints: the tracking pixel (``/t.gif``), the Segment-compatible tracking API
(``/v1/track|identify|page|batch``) and native events (``/v1/events``).

Each item of a request is accepted or rejected on its own: rejected ones are dead-lettered
with a reason code and counted, accepted ones go to the partition streams through
:meth:`Service.write <leadscore.service.backend.Service.write>`."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections import Counter as Tally
from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from leadscore.events import (
    MAX_CONTACT_CHARS,
    MAX_EVENT_BYTES,
    Event,
    Reject,
    format_ts,
    latest_ts,
    parse_event,
    validate_event,
)
from leadscore.segment import (
    BATCH_LIMIT,
    CALL_LIMIT,
    MAX_TS,
    MIN_TS,
    Invalid,
    build_action_map,
    map_message,
    parse_time,
)
from leadscore.service.auth import (
    authorize_write,
    contact_signature,
    presented_key,
    signature_ok,
)
from leadscore.service.backend import Service
from leadscore.service.body import KEEP_LEVELS, cut_deep, loads_json, read_body
from leadscore.service.errors import ApiError, json_response

log = logging.getLogger("leadscore.service")

log = logging.getLogger("leadscore.service")

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
PIXEL_HEADERS = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
PIXEL_MAX_QUERY = 8 * 1024
PIXEL_MAX_PROPS = 64
PIXEL_CONTACT_PARAMS = ("contact", "mtc_id", "ct")
VISITOR_PREFIX = "v-"  # the ids the pixel mints for anonymous visitors
PIXEL_PROP_PARAMS = {
    "url": "url",
    "page_url": "url",
    "title": "title",
    "page_title": "title",
    "referrer": "referrer",
    "page_referrer": "referrer",
}
PIXEL_IGNORED = frozenset(
    {"action", "id", "sig", "_", "cb", *PIXEL_CONTACT_PARAMS, *PIXEL_PROP_PARAMS}
)
PIXEL_ACTIONS = frozenset({"page.hit"})
"""What the pixel records by default: anyone can load it for any contact id, so it must not
be able to buy, unsubscribe or fill a form for them. Operators add actions they accept."""
DEAD_RAW_CHARS = 8 * 1024
MAX_ERRORS_LISTED = 100


def _dead_record(raw: str | bytes, reject: Reject, source: str) -> bytes:
    """A dead letter as the flow writes them (``raw``, ``reason``, ``code``), plus where it
    came in (``source``: pixel, segment or http); raw text is truncated to 8 KiB."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return orjson.dumps(
        {
            "raw": raw[:DEAD_RAW_CHARS],
            "reason": reject.reason,
            "code": reject.code,
            "source": source,
        }
    )


def _raw_json(obj: object) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError:  # orjson writes 254 levels at most
        try:
            return repr(obj)
        except RecursionError:
            return "(nested too deeply to record)"


def pixel_event(
    params: list[tuple[str, str]],
    visitor: str | None,
    page_header: str | None,
    now: float,
    *,
    actions: Collection[str] = PIXEL_ACTIONS,
    secret: str | None = None,
) -> tuple[Event | Reject, str | None]:
    """The event a pixel hit describes, and the contact id to remember in the cookie.

    The contact comes from the query (``contact``, or Mautic's ``mtc_id``/``ct``), else the
    visitor cookie, else a fresh random visitor id. ``url`` falls back to the Referer header:
    a plain ``<img>`` without script still tells us which page embedded it.

    Only ``actions`` are recorded (``pixel_action_refused`` otherwise). With a ``secret``, a
    contact id in the query must come with ``sig``, its :func:`contact_signature`
    (``bad_signature`` otherwise). A refused hit remembers nothing new: the cookie stays."""
    first: dict[str, str] = {}
    for key, value in params:
        first.setdefault(key, value)
    contact = next((first[k] for k in PIXEL_CONTACT_PARAMS if first.get(k)), None)
    action = first.get("action") or "page.hit"
    if action not in actions:
        allowed = ", ".join(sorted(actions))
        return Reject(
            "pixel_action_refused",
            f"action {action[:64]!r} is not recorded from the pixel (it records {allowed}); "
            "send it with a write key to /v1/events or the Segment API",
        ), visitor
    signature = first.get("sig", "")
    if secret is not None and contact is not None and not signature_ok(secret, contact, signature):
        problem = "a wrong" if signature else "no"
        return Reject(
            "bad_signature",
            f"contact {contact[:64]!r} came with {problem} signature: sign contact ids "
            "on pixel URLs with the pixel secret (sig=HMAC-SHA256 hex)",
        ), visitor
    remembered = contact or visitor or f"{VISITOR_PREFIX}{secrets.token_urlsafe(15)}"
    props: dict[str, Any] = {}
    for key, prop in PIXEL_PROP_PARAMS.items():
        if first.get(key) and prop not in props:
            props[prop] = first[key]
    if "url" not in props and page_header:
        props["url"] = page_header
    extras = [k for k in first if k not in PIXEL_IGNORED]
    if len(extras) > PIXEL_MAX_PROPS:
        return Reject("too_large", f"more than {PIXEL_MAX_PROPS} extra parameters"), remembered
    for key in extras:
        props.setdefault(key, first[key])
    obj = {
        "contact": remembered,
        "action": action,
        "ts": now,
        "id": first.get("id") or None,
        "props": props,
    }
    return validate_event(obj, now), remembered


def pixel_link(visitor: str | None, event: Event) -> list[Event]:
    """The identify that links the browser's anonymous visitor id to the contact id a pixel
    hit names (a signed link in an email, a form's thank-you page), if it learns one.

    Only an id the pixel minted itself (``v-...``) is merged: a cookie that already names a
    contact (a shared computer, a forwarded email) never merges two known people."""
    if visitor is None or not visitor.startswith(VISITOR_PREFIX) or visitor == event.contact:
        return []
    return [Event(event.contact, "identify", event.ts, None, {}, None, (visitor,))]


def _raw_text(raw: object) -> str | bytes:
    return raw if isinstance(raw, bytes) else _raw_json(raw)


async def _native_items(body: bytes, stripped: bytes) -> list[object] | None:
    """The events of a JSON array body, or of one (possibly pretty-printed) JSON object;
    None for JSON lines. A JSON lines body fails the whole-body parse at its second line
    (also once a line nested past the decoder's limit is cut short)."""
    if stripped[:1] == b"[":
        items = await loads_json(body)
        if not isinstance(items, list):
            raise ApiError(400, "invalid_json", "body must be one JSON array", "body")
        return items
    if stripped[:1] == b"{" and b"\n" in stripped:
        try:
            return [orjson.loads(body)]
        except orjson.JSONDecodeError as exc:
            if not str(exc).startswith("depth limit"):
                return None
        try:
            return [orjson.loads(await asyncio.to_thread(cut_deep, body, KEEP_LEVELS))]
        except orjson.JSONDecodeError:
            return None
    return None


def _in_range(result: Event | Reject) -> Event | Reject:
    """Refuse times outside years 1-9999 here: downstream they cannot be rendered as RFC 3339."""
    if isinstance(result, Event) and not MIN_TS <= result.ts <= MAX_TS:
        return Reject("bad_ts", "field 'ts' is outside the years 1 to 9999")
    return result


def _not_future(result: Event | Invalid, latest: float, where: str = "") -> Event | Invalid:
    """A Segment message dated past the service's clock plus max_future (after Segment's
    clock-skew correction) is refused, as native events are: it would move the flow's clock."""
    if isinstance(result, Event) and result.ts > latest:
        return Invalid(
            "bad_ts",
            f"{where}timestamp",
            f"field '{where}timestamp' is in the future: {format_ts(result.ts)} is after "
            f"{format_ts(latest)}, the clock plus the allowed skew (max_future)",
        )
    return result


def _cookie(header: str | None, name: str) -> str | None:
    """One cookie's value, without parsing every other cookie of the site."""
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            return value.strip().strip('"')
    return None


def _segment_time(value: object) -> float | None:
    parsed = parse_time(value, "sentAt")
    if isinstance(parsed, Invalid):
        raise ApiError(400, parsed.code, parsed.message, parsed.field)
    return parsed


class Ingest:
    """The ingest endpoints of one app, bound to its :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.config = config = service.config
        self.action_map = build_action_map(config.action_map)
        self.pixel_actions = PIXEL_ACTIONS | frozenset(config.pixel_actions)
        self._cookie_attributes = (
            f"; Max-Age={config.cookie_max_age}; Path=/; SameSite=Lax; HttpOnly"
        )
        if config.cookie_domain:
            self._cookie_attributes += f"; Domain={config.cookie_domain}"
        if config.cookie_secure:
            self._cookie_attributes += "; Secure"

    async def pixel(self, request: Request) -> Response:
        """Always a GIF, fast: a visitor's page must never wait on, or see, our problems."""
        response = Response(GIF, 200, PIXEL_HEADERS, "image/gif")
        if request.method != "GET":  # HEAD from link checkers is not a visit
            return response
        try:
            await self._record_pixel(request, response)
        except Exception:
            log.exception("pixel failed")
            self.service.metrics.write_failures.labels("pixel").inc()
        return response

    def _visitor(self, cookie: str | None) -> str | None:
        """The contact id the visitor cookie remembers; with a pixel secret, only when the
        cookie carries its signature (``id.sig``: percent-encoding leaves no bare dot out)."""
        if not cookie:
            return None
        secret = self.config.pixel_secret
        if secret is not None:
            cookie, _, signature = cookie.rpartition(".")
            visitor = unquote(cookie)
            if not signature_ok(secret, visitor, signature):
                return None
        else:
            visitor = unquote(cookie)
        return visitor if 0 < len(visitor) <= MAX_CONTACT_CHARS else None

    async def _record_pixel(self, request: Request, response: Response) -> None:
        cfg = self.config
        now = time.time()
        # Straight from the scope: Request.url and .query_params build objects the pixel,
        # the hottest route, does not need.
        headers = request.headers
        visitor = self._visitor(_cookie(headers.get("cookie"), cfg.cookie_name))
        query = request.scope["query_string"].decode("latin-1")
        if len(query) > PIXEL_MAX_QUERY:
            result: Event | Reject = Reject(
                "too_large", f"query string is {len(query)} bytes, the limit is {PIXEL_MAX_QUERY}"
            )
            remembered = visitor
        else:
            params = parse_qsl(query, keep_blank_values=True)
            result, remembered = pixel_event(
                params,
                visitor,
                headers.get("referer"),
                now,
                actions=self.pixel_actions,
                secret=cfg.pixel_secret,
            )
        if remembered is not None and remembered != visitor and len(remembered) <= 256:
            # Percent-encoded, so no quoting is needed: cheaper than http.cookies per hit.
            value = quote(remembered, safe="")
            if cfg.pixel_secret is not None:  # signed too: a cookie is as forgeable as a URL
                value += "." + contact_signature(cfg.pixel_secret, remembered)
            cookie = f"{cfg.cookie_name}={value}{self._cookie_attributes}"
            if not cfg.cookie_secure and request.scope.get("scheme") == "https":
                cookie += "; Secure"
            response.raw_headers.append((b"set-cookie", cookie.encode("latin-1")))
        if isinstance(result, Reject):
            self.service.count_rejects("pixel", [result.code])
            record = _dead_record(f"{request.scope['path']}?{query}", result, "pixel")
            events, dead = [], [record]
        else:
            events, dead = [*pixel_link(visitor, result), result], []
        try:
            async with asyncio.timeout(cfg.pixel_timeout):  # no extra task, unlike wait_for
                await self.service.write(events, dead, "pixel")
        except ApiError:
            pass  # counted by write(); the visitor still gets the GIF
        except TimeoutError:
            self.service.metrics.write_failures.labels("pixel").inc(len(events))

    async def segment(self, request: Request) -> Response:
        """``/v1/track|identify|page|batch``: Segment's HTTP Tracking API contract."""
        kind = request.url.path.rsplit("/", 1)[-1]
        header_key = presented_key(request)
        if header_key is not None:
            authorize_write(self.config.write_keys, header_key)
        limit = BATCH_LIMIT if kind == "batch" else CALL_LIMIT
        body = await read_body(request, limit, timeout=self.config.body_timeout)
        obj = await loads_json(body)
        if not isinstance(obj, dict):
            raise ApiError(400, "not_an_object", "body must be a JSON object", "body")
        if header_key is None:
            body_key = obj.get("writeKey")
            authorize_write(self.config.write_keys, body_key if isinstance(body_key, str) else None)
        now = time.time()
        latest = latest_ts(now, self.config.max_future)
        if kind == "batch":
            messages = obj.get("batch")
            if messages is None:
                raise ApiError(400, "missing_field", "field 'batch' is required", "batch")
            if not isinstance(messages, list):
                raise ApiError(400, "wrong_type", "field 'batch' must be an array", "batch")
            sent_at = _segment_time(obj.get("sentAt"))
            check_size = len(body) > CALL_LIMIT
            results: list[Event | Invalid] = []
            for i, msg in enumerate(messages):
                if check_size and len(_raw_json(msg)) > CALL_LIMIT:
                    results.append(
                        Invalid(
                            "too_large",
                            f"batch[{i}]",
                            f"message batch[{i}] is larger than {CALL_LIMIT} bytes",
                        )
                    )
                    continue
                result = map_message(
                    msg,
                    None,
                    received_at=now,
                    action_map=self.action_map,
                    batch_sent_at=sent_at,
                    where=f"batch[{i}].",
                )
                results.append(_not_future(result, latest, f"batch[{i}]."))
        else:
            messages = [obj]
            result = map_message(obj, kind, received_at=now, action_map=self.action_map)
            results = [_not_future(result, latest)]
        events = [r for r in results if isinstance(r, Event)]
        bad = [(i, r) for i, r in enumerate(results) if isinstance(r, Invalid)]
        dead = [_dead_record(_raw_json(messages[i]), r.reject(), "segment") for i, r in bad]
        self.service.count_rejects("segment", [r.code for _, r in bad])
        await self.service.write(events, dead, "segment")
        if kind != "batch" and bad:
            raise ApiError(400, bad[0][1].code, bad[0][1].message, bad[0][1].field)
        errors = [
            {"index": i, "code": r.code, "field": r.field, "message": r.message}
            for i, r in bad[:MAX_ERRORS_LISTED]
        ]
        return json_response(
            {"success": True, "accepted": len(events), "rejected": len(bad), "errors": errors}
        )

    async def native_events(self, request: Request) -> Response:
        """``/v1/events``: the native contract, as a JSON array, one object or JSON lines."""
        authorize_write(self.config.write_keys, presented_key(request))
        cfg = self.config
        body = await read_body(request, cfg.max_body_bytes, status=413, timeout=cfg.body_timeout)
        now = time.time()
        latest = latest_ts(now, self.config.max_future)
        stripped = body.lstrip()
        if not stripped:
            raise ApiError(
                400, "missing_field", "body is empty: send a JSON array or JSON lines", "body"
            )
        items = await _native_items(body, stripped)
        if items is None:  # JSON lines
            lines = [line for line in body.split(b"\n") if line.strip()]
            results = [_in_range(parse_event(line, now, latest)) for line in lines]
            raws: list[bytes] | list[object] = lines
        else:
            check_size = len(body) > MAX_EVENT_BYTES
            results = []
            for item in items:
                if check_size and len(_raw_json(item)) > MAX_EVENT_BYTES:
                    reject = Reject("too_large", f"event is over the {MAX_EVENT_BYTES} byte limit")
                    results.append(reject)
                else:
                    results.append(_in_range(validate_event(item, now, latest=latest)))
            raws = items
        events = [r for r in results if isinstance(r, Event)]
        bad = [(i, r) for i, r in enumerate(results) if isinstance(r, Reject)]
        dead = [_dead_record(_raw_text(raws[i]), r, "http") for i, r in bad]
        self.service.count_rejects("http", [r.code for _, r in bad])
        await self.service.write(events, dead, "http")
        return json_response(
            {
                "accepted": len(events),
                "rejected": len(bad),
                "reasons": dict(Tally(r.code for _, r in bad)),
                "errors": [
                    {"index": i, "code": r.code, "message": r.detail}
                    for i, r in bad[:MAX_ERRORS_LISTED]
                ],
            }
        )
