"""The HTTP service (`leadscore serve`): tracking pixel, Segment-compatible collector, native
event intake, score API, Prometheus metrics.

It only moves bytes: events go into the Redis partition streams the scoring flow consumes
(through the group-committing :class:`~leadscore.collector.Collector`), scores come out of
the read model the flow writes. No scoring happens here, so the service can be scaled and
restarted independently of the flow.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import os
import secrets
import time
import zlib
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import orjson
import redis.asyncio as aioredis
import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadscore.collector import Collector
from leadscore.events import (
    MAX_CONTACT_CHARS,
    MAX_EVENT_BYTES,
    Event,
    Reject,
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
from state.keys import GROUP, LAYOUT_VERSION, Keys

log = logging.getLogger("leadscore.service")

DEFAULT_PARTITIONS = 16
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
PIXEL_HEADERS = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
PIXEL_MAX_QUERY = 8 * 1024
PIXEL_MAX_PROPS = 64
PIXEL_CONTACT_PARAMS = ("contact", "mtc_id", "ct")
PIXEL_PROP_PARAMS = {
    "url": "url",
    "page_url": "url",
    "title": "title",
    "page_title": "title",
    "referrer": "referrer",
    "page_referrer": "referrer",
}
PIXEL_IGNORED = frozenset({"action", "id", "_", "cb", *PIXEL_CONTACT_PARAMS, *PIXEL_PROP_PARAMS})
DEAD_RAW_CHARS = 8 * 1024
MAX_ERRORS_LISTED = 100
EXPLAIN_SCAN = 5000  # change records looked at per explain request, newest first
EXPLAIN_PAGE = 50  # stream entries per XREVRANGE (an entry packs up to 100 records)
EXPLAIN_MAX = 200
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


# --------------------------------------------------------------------------- configuration


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_action_map(text: str) -> dict[str, str]:
    """``{"Demo Requested": "form.submit"}`` (JSON) or ``Demo Requested=form.submit,...``."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        value = orjson.loads(text)
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError("expected a JSON object of event name -> action")
        return value
    mapping: dict[str, str] = {}
    for pair in _split(text):
        name, sep, action = pair.partition("=")
        if not sep:
            raise ValueError(f"expected 'Event Name=action', got {pair!r}")
        mapping[name.strip()] = action.strip()
    return mapping


def _env_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "LEADSCORE_REDIS_URL": ("redis_url", str),
    "LEADSCORE_PREFIX": ("prefix", str),
    "LEADSCORE_PARTITIONS": ("partitions", int),
    "LEADSCORE_WRITE_KEYS": ("write_keys", _split),
    "LEADSCORE_READ_KEYS": ("read_keys", _split),
    "LEADSCORE_CORS_ORIGINS": ("cors_origins", _split),
    "LEADSCORE_ACTION_MAP": ("action_map", _parse_action_map),
    "LEADSCORE_COOKIE_NAME": ("cookie_name", str),
    "LEADSCORE_COOKIE_DOMAIN": ("cookie_domain", lambda v: v or None),
    "LEADSCORE_COOKIE_SECURE": ("cookie_secure", _env_bool),
    "LEADSCORE_COOKIE_MAX_AGE": ("cookie_max_age", int),
    "LEADSCORE_FLUSH_INTERVAL_MS": ("flush_interval_ms", float),
    "LEADSCORE_FLUSH_MAX_EVENTS": ("flush_max_events", int),
    "LEADSCORE_MAX_BODY_BYTES": ("max_body_bytes", int),
    "LEADSCORE_DEAD_MAXLEN": ("dead_maxlen", int),
}


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Everything deployment-specific; built by the CLI from options or from the environment.

    ``partitions=None`` means: use what the flow recorded in ``{prefix}:meta``, or 16.
    ``write_keys`` guard every write endpoint; with none configured, writes are refused (the
    pixel excepted) rather than silently open. ``read_keys``, when set, guard the score API
    (a write key is accepted there too)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "ls"
    partitions: int | None = None
    write_keys: tuple[str, ...] = ()
    read_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    action_map: Mapping[str, str] = field(default_factory=dict)
    cookie_name: str = "ls_vid"
    cookie_domain: str | None = None
    cookie_secure: bool = False
    cookie_max_age: int = 400 * 86400  # browsers cap cookie lifetimes at 400 days
    flush_interval_ms: float = 2.0
    flush_max_events: int = 100
    max_body_bytes: int = 4 * 1024 * 1024
    dead_maxlen: int = 100_000
    pixel_timeout: float = 0.5

    def __post_init__(self) -> None:
        problems = []
        if not self.prefix:
            problems.append("prefix must not be empty")
        if self.partitions is not None and self.partitions < 1:
            problems.append(f"partitions must be at least 1, got {self.partitions}")
        if self.flush_interval_ms < 0:
            problems.append("flush_interval_ms must not be negative")
        if self.flush_max_events < 1:
            problems.append("flush_max_events must be at least 1")
        if self.max_body_bytes < 1024:
            problems.append("max_body_bytes must be at least 1024")
        if not self.cookie_name or not self.cookie_name.replace("_", "").isalnum():
            problems.append(f"cookie_name must be letters, digits and _, got {self.cookie_name!r}")
        if any(not key for key in (*self.write_keys, *self.read_keys)):
            problems.append("write and read keys must not be empty")
        try:
            build_action_map(self.action_map)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServiceConfig:
        """Read ``LEADSCORE_*`` variables; keyword ``overrides`` (CLI options) win.

        A bad value raises ValueError naming the variable."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for var, (name, convert) in _ENV.items():
            if var in source:
                try:
                    values[name] = convert(source[var])
                except ValueError as exc:
                    raise ValueError(f"{var}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A client-visible failure; rendered as JSON ``{code, message, field}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


class StorageUnavailable(Exception):
    """Redis could not be reached or disagrees with our configuration."""


def json_response(
    content: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, "application/json")


def error_response(exc: ApiError) -> Response:
    body = {"code": exc.code, "message": exc.message, "field": exc.field}
    return json_response(body, exc.status, exc.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message, field = exc.detail, None
    if exc.status_code == 404:
        message = f"no route for {request.url.path[:200]!r}; see /openapi.json"
        field = "path"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path[:200]!r}"
        field = "method"
    return error_response(ApiError(exc.status_code, code, message, field, exc.headers))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(ApiError(500, "internal", "internal error; see the service log"))


# --------------------------------------------------------------------------- metrics


class Metrics:
    """One registry per app, so two apps in one process (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.accepted = Counter(
            "leadscore_http_events_accepted",
            "Events written to the input streams, by source.",
            ["source"],
            registry=r,
        )
        self.rejected = Counter(
            "leadscore_http_events_rejected",
            "Events refused and dead-lettered, by source and reason code.",
            ["source", "reason"],
            registry=r,
        )
        self.write_failures = Counter(
            "leadscore_http_write_failures",
            "Events that could not be written to Redis, by source.",
            ["source"],
            registry=r,
        )
        self.requests = Counter(
            "leadscore_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "leadscore_http_request_duration_seconds",
            "Time from request start to last response byte, by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.flush_seconds = Histogram(
            "leadscore_collector_flush_seconds",
            "Duration of one pipelined flush to Redis.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.flush_events = Histogram(
            "leadscore_collector_flush_events",
            "Events and dead letters carried by one flush.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
            registry=r,
        )
        self.stream_length = Gauge(
            "leadscore_stream_length",
            "Entries (XLEN) of a partition stream: in = input, dead = dead letters; an entry "
            "holds one or more events or dead letters.",
            ["stream", "partition"],
            registry=r,
        )
        self.lag = Gauge(
            "leadscore_consumer_group_lag",
            "Input entries not yet delivered to the scoring flow's consumer group.",
            ["partition"],
            registry=r,
        )
        self.pending = Gauge(
            "leadscore_consumer_group_pending",
            "Input entries delivered to the flow but not yet acknowledged.",
            ["partition"],
            registry=r,
        )
        self.redis_up = Gauge(
            "leadscore_redis_up", "1 if the last metrics scrape reached Redis.", registry=r
        )

    def observe_flush(self, events: int, entries: int, seconds: float) -> None:
        self.flush_seconds.observe(seconds)
        self.flush_events.observe(events)


class _JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, with refused preflights answered as JSON like every
    other 4xx (it says which request header was refused)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        text = bytes(response.body).decode()
        field = "Origin"
        if "method" in text:
            field = "Access-Control-Request-Method"
        elif "headers" in text:
            field = "Access-Control-Request-Headers"
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        headers.pop("content-type", None)
        body = {"code": "cors_refused", "message": text, "field": field}
        return json_response(body, 400, headers)


class _Timing:
    """Pure ASGI middleware (BaseHTTPMiddleware costs a task per request): latency and
    status per route template, read from ``scope["route"]`` after routing."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            children = self._children.get((path, method, status))
            if children is None:  # labels() costs a lock and a lookup: resolve once
                label = path.replace(":path}", "}")
                children = self._children[(path, method, status)] = (
                    self.metrics.latency.labels(label, method),
                    self.metrics.requests.labels(label, method, str(status)),
                )
            children[0].observe(time.perf_counter() - started)
            children[1].inc()


# --------------------------------------------------------------------------- request helpers


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
    except TypeError:
        return repr(obj)


def _presented_key(request: Request) -> str | None:
    """The key in ``Authorization``: Basic (Segment: key as user name, empty password) or
    Bearer. None when the header is absent; "" when it is unreadable (never a valid key)."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer":
        return value
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[0]
    return ""


def _key_in(key: str, keys: tuple[str, ...]) -> bool:
    """Constant-time membership, so response timing does not reveal key prefixes."""
    candidate = key.encode()
    found = False
    for known in keys:
        found |= hmac.compare_digest(candidate, known.encode())
    return found


async def _read_body(request: Request, limit: int, *, status: int = 400) -> bytes:
    """The request body, decompressed if gzip, refusing more than ``limit`` bytes without
    buffering an arbitrarily large upload (or a gzip bomb)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise ApiError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding[:32]!r} is not supported; use gzip or none",
            "Content-Encoding",
        )
    too_large = ApiError(
        status, "too_large", f"request body is larger than the {limit} byte limit", "body"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and encoding != "gzip" and int(declared) > limit:
        raise too_large
    raw_limit = limit + 1024 if encoding == "gzip" else limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > raw_limit:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    if encoding != "gzip":
        return body
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, "invalid_gzip", f"body is not valid gzip: {exc}", "body") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise too_large
    return out


def _loads(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}", "body") from None


def pixel_event(
    params: list[tuple[str, str]],
    visitor: str | None,
    page_header: str | None,
    now: float,
) -> tuple[Event | Reject, str]:
    """The event a pixel hit describes, and the contact id to remember in the cookie.

    The contact comes from the query (``contact``, or Mautic's ``mtc_id``/``ct``), else the
    visitor cookie, else a fresh random visitor id. ``url`` falls back to the Referer header:
    a plain ``<img>`` without script still tells us which page embedded it."""
    first: dict[str, str] = {}
    for key, value in params:
        first.setdefault(key, value)
    contact = next((first[k] for k in PIXEL_CONTACT_PARAMS if first.get(k)), None)
    remembered = contact or visitor or f"v-{secrets.token_urlsafe(15)}"
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
        "action": first.get("action") or "page.hit",
        "ts": now,
        "id": first.get("id") or None,
        "props": props,
    }
    return validate_event(obj, now), remembered


def _raw_text(raw: object) -> str | bytes:
    return raw if isinstance(raw, bytes) else _raw_json(raw)


def _native_items(body: bytes, stripped: bytes) -> list[object] | None:
    """The events of a JSON array body, or of one (possibly pretty-printed) JSON object;
    None for JSON lines. A JSON lines body fails the whole-body parse at its second line."""
    if stripped[:1] == b"[":
        items = _loads(body)
        if not isinstance(items, list):
            raise ApiError(400, "invalid_json", "body must be one JSON array", "body")
        return items
    if stripped[:1] == b"{" and b"\n" in stripped:
        try:
            return [orjson.loads(body)]
        except orjson.JSONDecodeError:
            return None
    return None


def _in_range(result: Event | Reject) -> Event | Reject:
    """Refuse times outside years 1-9999 here: downstream they cannot be rendered as RFC 3339."""
    if isinstance(result, Event) and not MIN_TS <= result.ts <= MAX_TS:
        return Reject("bad_ts", "field 'ts' is outside the years 1 to 9999")
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


def _flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ApiError(400, "wrong_type", f"query parameter '{name}' must be true or false", name)


# --------------------------------------------------------------------------- the service


class Service:
    """Holds the Redis client, the collector and the metrics for one app instance."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.action_map = build_action_map(config.action_map)
        self.metrics = Metrics()
        self.redis: aioredis.Redis | None = None
        self.collector: Collector | None = None
        self._keys: Keys | None = None
        self._keys_lock = asyncio.Lock()
        self._cookie_attributes = (
            f"; Max-Age={config.cookie_max_age}; Path=/; SameSite=Lax; HttpOnly"
        )
        if config.cookie_domain:
            self._cookie_attributes += f"; Domain={config.cookie_domain}"
        if config.cookie_secure:
            self._cookie_attributes += "; Secure"

    # -- lifecycle

    async def start(self) -> None:
        cfg = self.config
        self.redis = aioredis.Redis.from_url(
            cfg.redis_url, socket_timeout=5.0, socket_connect_timeout=2.0
        )
        self.collector = Collector(
            self.redis,
            Keys(cfg.prefix),
            interval=cfg.flush_interval_ms / 1000.0,
            max_events=cfg.flush_max_events,
            dead_maxlen=cfg.dead_maxlen,
            observer=self.metrics.observe_flush,
        )
        self.collector.start()
        try:
            keys = await asyncio.wait_for(self.keys(), 2.0)
            log.info("serving %d partitions under prefix %r", keys.partitions, keys.prefix)
        except (StorageUnavailable, TimeoutError, RedisError, OSError) as exc:
            log.warning("Redis not ready at start-up (will retry on first use): %s", exc)

    async def stop(self) -> None:
        if self.collector is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.collector.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def keys(self) -> Keys:
        """The key layout, with the partition count agreed with ``{prefix}:meta``.

        A partition count that disagrees with the flow's would route events to streams
        nobody reads, so a mismatch refuses writes instead of guessing."""
        if self._keys is not None:
            return self._keys
        async with self._keys_lock:
            if self._keys is not None:
                return self._keys
            cfg = self.config
            assert self.redis is not None
            meta = Keys(cfg.prefix).meta
            try:
                recorded = await self.redis.hget(meta, "partitions")
                if recorded is None:
                    wanted = cfg.partitions or DEFAULT_PARTITIONS
                    pipe = self.redis.pipeline(transaction=True)
                    pipe.hsetnx(meta, "partitions", wanted)
                    pipe.hsetnx(meta, "version", LAYOUT_VERSION)
                    pipe.hget(meta, "partitions")
                    recorded = (await pipe.execute())[-1]
            except (RedisError, OSError) as exc:
                raise StorageUnavailable(f"cannot read {meta}: {exc}") from exc
            try:
                partitions = int(recorded)
            except (TypeError, ValueError):
                raise StorageUnavailable(
                    f"{meta} partitions is not a number: {recorded!r}"
                ) from None
            if cfg.partitions is not None and cfg.partitions != partitions:
                raise StorageUnavailable(
                    f"configured for {cfg.partitions} partitions but {meta} says {partitions}"
                )
            self._keys = Keys(cfg.prefix, partitions)
            return self._keys

    # -- writing

    async def write(self, events: list[Event], dead: list[bytes], source: str) -> None:
        """Write events (and dead letters) and count them; raise 503 if Redis fails."""
        try:
            keys = await self.keys()
            assert self.collector is not None
            lines = [(keys.partition(e.contact), orjson.dumps(e.to_dict())) for e in events]
            await self.collector.write(lines, dead)
        except (StorageUnavailable, RedisError, OSError) as exc:
            self.metrics.write_failures.labels(source).inc(len(events))
            log.warning("write of %d events failed: %s", len(events), exc)
            raise ApiError(
                503,
                "unavailable",
                f"events could not be stored, retry later: {exc}",
                None,
                {"Retry-After": "1"},
            ) from None
        if events:
            self.metrics.accepted.labels(source).inc(len(events))

    def count_rejects(self, source: str, codes: list[str]) -> None:
        for code, n in Tally(codes).items():
            self.metrics.rejected.labels(source, code).inc(n)

    def authorize_write(self, key: str | None) -> None:
        if not self.config.write_keys:
            raise ApiError(
                401,
                "unauthorized",
                "no write keys are configured on this server (set LEADSCORE_WRITE_KEYS)",
                "writeKey",
            )
        if key is None:
            raise ApiError(
                401,
                "unauthorized",
                "a write key is required: HTTP Basic auth with the key as user name",
                "writeKey",
            )
        if not _key_in(key, self.config.write_keys):
            raise ApiError(401, "unauthorized", "the write key is not valid", "writeKey")

    # -- endpoints

    async def pixel(self, request: Request) -> Response:
        """Always a GIF, fast: a visitor's page must never wait on, or see, our problems."""
        response = Response(GIF, 200, PIXEL_HEADERS, "image/gif")
        if request.method != "GET":  # HEAD from link checkers is not a visit
            return response
        try:
            await self._record_pixel(request, response)
        except Exception:
            log.exception("pixel failed")
            self.metrics.write_failures.labels("pixel").inc()
        return response

    async def _record_pixel(self, request: Request, response: Response) -> None:
        cfg = self.config
        now = time.time()
        # Straight from the scope: Request.url and .query_params build objects the pixel,
        # the hottest route, does not need.
        headers = request.headers
        cookie = _cookie(headers.get("cookie"), cfg.cookie_name)
        visitor = unquote(cookie) if cookie else None
        if visitor is not None and not 0 < len(visitor) <= MAX_CONTACT_CHARS:
            visitor = None
        query = request.scope["query_string"].decode("latin-1")
        if len(query) > PIXEL_MAX_QUERY:
            result: Event | Reject = Reject(
                "too_large", f"query string is {len(query)} bytes, the limit is {PIXEL_MAX_QUERY}"
            )
            remembered = visitor
        else:
            params = parse_qsl(query, keep_blank_values=True)
            result, remembered = pixel_event(params, visitor, headers.get("referer"), now)
        if remembered is not None and remembered != visitor and len(remembered) <= 256:
            # Percent-encoded, so no quoting is needed: cheaper than http.cookies per hit.
            cookie = f"{cfg.cookie_name}={quote(remembered, safe='')}{self._cookie_attributes}"
            if not cfg.cookie_secure and request.scope.get("scheme") == "https":
                cookie += "; Secure"
            response.raw_headers.append((b"set-cookie", cookie.encode("latin-1")))
        if isinstance(result, Reject):
            self.count_rejects("pixel", [result.code])
            record = _dead_record(f"{request.scope['path']}?{query}", result, "pixel")
            events, dead = [], [record]
        else:
            events, dead = [result], []
        try:
            async with asyncio.timeout(cfg.pixel_timeout):  # no extra task, unlike wait_for
                await self.write(events, dead, "pixel")
        except ApiError:
            pass  # counted by write(); the visitor still gets the GIF
        except TimeoutError:
            self.metrics.write_failures.labels("pixel").inc(len(events))

    async def segment(self, request: Request) -> Response:
        """``/v1/track|identify|page|batch``: Segment's HTTP Tracking API contract."""
        kind = request.url.path.rsplit("/", 1)[-1]
        header_key = _presented_key(request)
        if header_key is not None:
            self.authorize_write(header_key)
        limit = BATCH_LIMIT if kind == "batch" else CALL_LIMIT
        body = await _read_body(request, limit)
        obj = _loads(body)
        if not isinstance(obj, dict):
            raise ApiError(400, "not_an_object", "body must be a JSON object", "body")
        if header_key is None:
            body_key = obj.get("writeKey")
            self.authorize_write(body_key if isinstance(body_key, str) else None)
        now = time.time()
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
                results.append(
                    map_message(
                        msg,
                        None,
                        received_at=now,
                        action_map=self.action_map,
                        batch_sent_at=sent_at,
                        where=f"batch[{i}].",
                    )
                )
        else:
            messages = [obj]
            results = [map_message(obj, kind, received_at=now, action_map=self.action_map)]
        events = [r for r in results if isinstance(r, Event)]
        bad = [(i, r) for i, r in enumerate(results) if isinstance(r, Invalid)]
        dead = [_dead_record(_raw_json(messages[i]), r.reject(), "segment") for i, r in bad]
        self.count_rejects("segment", [r.code for _, r in bad])
        await self.write(events, dead, "segment")
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
        self.authorize_write(_presented_key(request))
        body = await _read_body(request, self.config.max_body_bytes, status=413)
        now = time.time()
        stripped = body.lstrip()
        if not stripped:
            raise ApiError(
                400, "missing_field", "body is empty: send a JSON array or JSON lines", "body"
            )
        items = _native_items(body, stripped)
        if items is None:  # JSON lines
            lines = [line for line in body.split(b"\n") if line.strip()]
            results = [_in_range(parse_event(line, now)) for line in lines]
            raws: list[bytes] | list[object] = lines
        else:
            check_size = len(body) > MAX_EVENT_BYTES
            results = []
            for item in items:
                if check_size and len(_raw_json(item)) > MAX_EVENT_BYTES:
                    reject = Reject("too_large", f"event is over the {MAX_EVENT_BYTES} byte limit")
                    results.append(reject)
                else:
                    results.append(_in_range(validate_event(item, now)))
            raws = items
        events = [r for r in results if isinstance(r, Event)]
        bad = [(i, r) for i, r in enumerate(results) if isinstance(r, Reject)]
        dead = [_dead_record(_raw_text(raws[i]), r, "http") for i, r in bad]
        self.count_rejects("http", [r.code for _, r in bad])
        await self.write(events, dead, "http")
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

    async def contact(self, request: Request) -> Response:
        """The read model the flow maintains; ``?explain=1`` adds its recent change records."""
        cfg = self.config
        if cfg.read_keys:
            key = _presented_key(request)
            if key is None or not (_key_in(key, cfg.read_keys) or _key_in(key, cfg.write_keys)):
                raise ApiError(401, "unauthorized", "a valid read key is required", "Authorization")
        contact = request.path_params["id"]
        if not 0 < len(contact) <= MAX_CONTACT_CHARS:
            raise ApiError(400, "wrong_type", "contact id must be 1 to 256 characters", "id")
        explain = _flag(request.query_params.get("explain"), "explain")
        limit_text = request.query_params.get("limit", "20")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= EXPLAIN_MAX:
            raise ApiError(
                400, "wrong_type", f"query parameter 'limit' must be 1 to {EXPLAIN_MAX}", "limit"
            )
        try:
            keys = await self.keys()
            assert self.redis is not None
            raw = await self.redis.get(keys.contact_read_model(contact))
            if raw is None:
                raise ApiError(404, "not_found", f"no contact {contact[:64]!r} yet", "id")
            if not explain:
                return Response(raw, 200, media_type="application/json")
            view = orjson.loads(raw)
            view["changes"] = await self._changes(keys, contact, int(limit_text))
        except (StorageUnavailable, RedisError, OSError) as exc:
            raise ApiError(
                503, "unavailable", f"read model unavailable: {exc}", None, {"Retry-After": "1"}
            ) from None
        return json_response(view)

    async def _changes(self, keys: Keys, contact: str, limit: int) -> list[Any]:
        """The newest ``limit`` change records of one contact, oldest first.

        An entry of ``{prefix}:{p}:changes`` packs one or more JSON records joined by ``\\n``
        (the flow writes a checkpoint's records together), and neighbours in the partition
        share it. At most EXPLAIN_SCAN records are looked at, newest first, so a busy
        partition cannot make this slow; an entry without the contact's id is skipped whole.
        """
        assert self.redis is not None
        stream = keys.changes(keys.partition(contact))
        needle = orjson.dumps(contact)
        found: list[Any] = []
        scanned = 0
        upper = "+"
        while scanned < EXPLAIN_SCAN and len(found) < limit:
            entries = await self.redis.xrevrange(stream, upper, "-", count=EXPLAIN_PAGE)
            if not entries:
                break
            for _id, fields in entries:
                payload = fields.get(b"c") or b""
                scanned += payload.count(b"\n") + 1
                if needle not in payload:
                    continue
                for record in reversed(payload.split(b"\n")):
                    if needle not in record:
                        continue
                    with contextlib.suppress(orjson.JSONDecodeError):
                        change = orjson.loads(record)
                        if isinstance(change, dict) and change.get("contact") == contact:
                            found.append(change)
                            if len(found) == limit:
                                break
                if len(found) == limit or scanned >= EXPLAIN_SCAN:
                    break
            upper = "(" + entries[-1][0].decode()  # exclusive: continue below the last one
        found.reverse()
        return found

    async def metrics_endpoint(self, request: Request) -> Response:
        await self._stream_metrics()
        return Response(generate_latest(self.metrics.registry), 200, None, CONTENT_TYPE_LATEST)

    async def _stream_metrics(self) -> None:
        """Stream lengths and consumer-group lag, read at scrape time (one pipeline)."""
        m = self.metrics
        try:
            keys = await asyncio.wait_for(self.keys(), 1.0)
            assert self.redis is not None
            pipe = self.redis.pipeline(transaction=False)
            for p in range(keys.partitions):
                pipe.xlen(keys.input(p))
                pipe.xinfo_groups(keys.input(p))
                pipe.xlen(keys.dead(p))
            replies = await asyncio.wait_for(pipe.execute(raise_on_error=False), 2.0)
        except (StorageUnavailable, RedisError, OSError, TimeoutError):
            m.redis_up.set(0)
            return
        m.redis_up.set(1)
        for p in range(keys.partitions):
            length, groups, dead = replies[3 * p : 3 * p + 3]
            length = length if isinstance(length, int) else 0
            m.stream_length.labels("in", str(p)).set(length)
            m.stream_length.labels("dead", str(p)).set(dead if isinstance(dead, int) else 0)
            lag, pending = length, 0
            for group in groups if isinstance(groups, list) else []:
                name = group.get("name")
                if name in (GROUP, GROUP.encode()):
                    pending = int(group.get("pending") or 0)
                    if group.get("lag") is not None:
                        lag = int(group["lag"])
                    elif group.get("entries-read") is not None:
                        lag = max(0, length - int(group["entries-read"]))
            m.lag.labels(str(p)).set(lag)
            m.pending.labels(str(p)).set(pending)

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        try:
            assert self.redis is not None
            await asyncio.wait_for(self.redis.ping(), 1.0)
            keys = await asyncio.wait_for(self.keys(), 1.0)
        except (StorageUnavailable, RedisError, OSError, TimeoutError, AssertionError) as exc:
            return json_response(
                {
                    "status": "unavailable",
                    "code": "redis_unavailable",
                    "message": f"Redis is not usable: {exc or type(exc).__name__}",
                },
                503,
            )
        return json_response({"status": "ready", "partitions": keys.partitions})


def _segment_time(value: object) -> float | None:
    parsed = parse_time(value, "sentAt")
    if isinstance(parsed, Invalid):
        raise ApiError(400, parsed.code, parsed.message, parsed.field)
    return parsed


# --------------------------------------------------------------------------- app


def create_app(config: ServiceConfig) -> Starlette:
    """The ASGI app; Redis is connected in the lifespan, so creating it does no I/O."""
    service = Service(config)
    document = openapi_document(config)

    async def openapi(request: Request) -> Response:
        return json_response(document)

    def route(
        path: str, endpoint: Callable[[Request], Awaitable[Response]], *methods: str
    ) -> Route:
        return Route(path, endpoint, methods=list(methods))

    routes = [
        route("/t.gif", service.pixel, "GET"),
        route("/v1/track", service.segment, "POST"),
        route("/v1/identify", service.segment, "POST"),
        route("/v1/page", service.segment, "POST"),
        route("/v1/batch", service.segment, "POST"),
        route("/v1/events", service.native_events, "POST"),
        route("/v1/contacts/{id:path}", service.contact, "GET"),
        route("/metrics", service.metrics_endpoint, "GET"),
        route("/healthz", service.healthz, "GET"),
        route("/readyz", service.readyz, "GET"),
        route("/openapi.json", openapi, "GET"),
    ]
    middleware = [Middleware(_Timing, metrics=service.metrics)]
    if config.cors_origins:
        middleware.append(
            Middleware(
                _JsonCORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
                max_age=3600,
            )
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_exception,
            Exception: _internal_error,
        },
    )
    app.state.service = service
    return app


def run_server(config: ServiceConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (what `leadscore serve` calls)."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=host,
            port=port,
            lifespan="on",
            access_log=False,
            server_header=False,
            log_level="info",
        )
    )
    server.run()


# --------------------------------------------------------------------------- OpenAPI


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_ID = {
    "type": ["string", "integer"],
    "minLength": 1,
    "maxLength": MAX_CONTACT_CHARS,
    "description": "string, or an integer (stringified)",
}
_TIME = {"type": "string", "format": "date-time"}
_OBJECT = {"type": ["object", "null"], "additionalProperties": True}
_EVENT_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "pattern": "[A-Za-z0-9]",
    "description": "mapped to an action (configurable); unmapped names become their "
    "lower-case dotted slug",
}


def _segment_message(extra: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "userId": _ID,
            "anonymousId": _ID,
            "messageId": {**_ID, "description": "becomes the event id: retries are deduplicated"},
            "timestamp": _TIME,
            "sentAt": {**_TIME, "description": "client clock at send time, for skew correction"},
            "context": _OBJECT,
            "integrations": _OBJECT,
            "writeKey": {"type": "string", "description": "alternative to Basic auth"},
            **extra,
        },
        "anyOf": [{"required": ["userId"]}, {"required": ["anonymousId"]}],
    }
    if required:
        schema["required"] = required
    return schema


def openapi_document(config: ServiceConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every endpoint (fuzzed by schemathesis in the tests)."""
    segment_errors = {
        "400": _error("Invalid JSON, a message that cannot be mapped, or over the size limit"),
        "401": _error("Missing or wrong write key; nothing was written"),
        "415": _error("Unsupported Content-Encoding (only gzip)"),
        "503": _error("Redis unavailable; retry (Retry-After)"),
    }
    segment_ok = _json(_ref("SegmentResult"), "Stored in Redis")
    segment_security = [{"writeKeyBasic": []}, {"writeKeyBearer": []}, {}]

    def segment_op(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "description": "Segment HTTP Tracking API compatible. The write key is the "
                "Basic auth user name (empty password) or `writeKey` in the body. Bodies may "
                "be gzip-encoded. 32 KB per call.",
                "security": segment_security,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema}},
                },
                "responses": {"200": segment_ok, **segment_errors},
            }
        }

    string_param = {"type": "string"}
    pixel_params: list[dict[str, Any]] = [
        {"name": name, "in": "query", "required": False, "schema": string_param, "description": d}
        for name, d in (
            ("contact", "contact id; else the visitor cookie"),
            ("mtc_id", "Mautic contact id (alias of contact)"),
            ("ct", "Mautic click-through id (alias of contact)"),
            ("action", "event action, default page.hit"),
            ("id", "event id, for deduplication"),
            ("url", "page URL; default: the Referer header"),
            ("title", "page title"),
            ("referrer", "the page's referrer"),
            ("page_url", "Mautic alias of url"),
            ("page_title", "Mautic alias of title"),
            ("page_referrer", "Mautic alias of referrer"),
        )
    ]
    pixel_params.append(
        {
            "name": "props",
            "in": "query",
            "required": False,
            "style": "form",
            "explode": True,
            "schema": {"type": "object", "additionalProperties": {"type": "string"}},
            "description": "any other parameter becomes an event prop",
        }
    )
    pixel_params.append(
        {
            "name": config.cookie_name,
            "in": "cookie",
            "required": False,
            "schema": string_param,
            "description": "first-party visitor id, set by this endpoint when absent",
        }
    )
    event_schema = {
        "type": "object",
        "required": ["contact", "action"],
        "properties": {
            "contact": {"type": "string", "minLength": 1, "maxLength": MAX_CONTACT_CHARS},
            "action": {"type": "string", "minLength": 1},
            "ts": {
                "type": ["string", "number"],
                "description": "RFC 3339, or epoch seconds / milliseconds; default now",
            },
            "id": {"type": ["string", "integer"]},
            "props": _OBJECT,
            "traits": {"type": ["object", "null"]},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "leadscore",
            "version": "1",
            "description": "Real-time lead scoring: event intake (pixel, Segment-compatible, "
            "native) into Redis streams, and the scores the flow computes.",
        },
        "paths": {
            "/t.gif": {
                "get": {
                    "summary": "Tracking pixel",
                    "description": "Always answers a 1x1 GIF. Bad input is counted and "
                    "dead-lettered, never shown to the visitor.",
                    "parameters": pixel_params,
                    "responses": {
                        "200": {
                            "description": "A transparent 1x1 GIF, never cached",
                            "headers": {
                                "Cache-Control": {"schema": string_param},
                                "Set-Cookie": {"schema": string_param},
                            },
                            "content": {
                                "image/gif": {"schema": {"type": "string", "format": "binary"}}
                            },
                        }
                    },
                }
            },
            "/v1/track": segment_op(
                "Segment track",
                _segment_message({"event": _EVENT_NAME, "properties": _OBJECT}, ["event"]),
            ),
            "/v1/identify": segment_op("Segment identify", _segment_message({"traits": _OBJECT})),
            "/v1/page": segment_op(
                "Segment page",
                _segment_message(
                    {
                        "name": {"type": "string"},
                        "category": {"type": "string"},
                        "properties": _OBJECT,
                    }
                ),
            ),
            "/v1/batch": segment_op(
                "Segment batch (500 KB per call, 32 KB per message)",
                {
                    "type": "object",
                    "required": ["batch"],
                    "properties": {
                        "batch": {"type": "array", "items": _ref("SegmentBatchMessage")},
                        "sentAt": _TIME,
                        "writeKey": {"type": "string"},
                        "context": _OBJECT,
                    },
                },
            ),
            "/v1/events": {
                "post": {
                    "summary": "Native events",
                    "description": "A JSON array of events, one JSON event, or JSON lines "
                    "(one event per line), whatever the content type. Each event is accepted "
                    "or rejected on its own; rejected ones are also dead-lettered.",
                    "security": [{"writeKeyBasic": []}, {"writeKeyBearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"type": "array", "items": _ref("Event")}
                            },
                            "application/x-ndjson": {
                                "schema": {
                                    "type": "string",
                                    "description": "one JSON event (see Event) per line",
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": _json(_ref("EventsResult"), "Per-event outcome"),
                        "400": _error("Body empty or not JSON"),
                        "401": _error("Missing or wrong write key; nothing was written"),
                        "413": _error("Body over the configured limit"),
                        "415": _error("Unsupported Content-Encoding (only gzip)"),
                        "503": _error("Redis unavailable; retry (Retry-After)"),
                    },
                }
            },
            "/v1/contacts/{id}": {
                "get": {
                    "summary": "A contact's scores (the read model)",
                    "security": [{"readKeyBasic": []}, {"readKeyBearer": []}, {}],
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                        },
                        {
                            "name": "explain",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean"},
                            "description": "also return the newest change records (points, stage, "
                            "segment, tag), oldest first",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": EXPLAIN_MAX,
                                "default": 20,
                            },
                            "description": "how many change records explain returns",
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("Contact"), "The read model"),
                        "400": _error("Bad id, explain or limit"),
                        "401": _error("Read keys are configured and none was given"),
                        "404": _error("No such contact (yet)"),
                        "503": _error("Redis unavailable"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: the process answers",
                    "responses": {"200": _json(_ref("Status"), "Alive")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: Redis reachable and partitions agreed",
                    "responses": {
                        "200": _json(_ref("Status"), "Ready"),
                        "503": _json(_ref("Status"), "Redis unavailable"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "writeKeyBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "write key as user name, empty password",
                },
                "writeKeyBearer": {"type": "http", "scheme": "bearer"},
                "readKeyBasic": {"type": "http", "scheme": "basic"},
                "readKeyBearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message", "field"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {
                            "type": ["string", "null"],
                            "description": "the field, parameter or header at fault",
                        },
                    },
                },
                "SegmentResult": {
                    "type": "object",
                    "required": ["success", "accepted", "rejected", "errors"],
                    "properties": {
                        "success": {"type": "boolean"},
                        "accepted": {"type": "integer", "minimum": 0},
                        "rejected": {"type": "integer", "minimum": 0},
                        "errors": {
                            "type": "array",
                            "maxItems": MAX_ERRORS_LISTED,
                            "items": {
                                "type": "object",
                                "required": ["index", "code", "field", "message"],
                                "properties": {
                                    "index": {"type": "integer", "minimum": 0},
                                    "code": {"type": "string"},
                                    "field": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "SegmentBatchMessage": {
                    **_segment_message(
                        {
                            "type": {
                                "type": "string",
                                "enum": ["track", "identify", "page", "screen"],
                            },
                            "event": _EVENT_NAME,
                            "name": {"type": "string"},
                            "category": {"type": "string"},
                            "properties": _OBJECT,
                            "traits": _OBJECT,
                        },
                        ["type"],
                    ),
                    "description": "A message as in the single calls, plus its `type`; one "
                    "that cannot be mapped is dead-lettered and listed in `errors`.",
                },
                "Event": event_schema,
                "EventsResult": {
                    "type": "object",
                    "required": ["accepted", "rejected", "reasons", "errors"],
                    "properties": {
                        "accepted": {"type": "integer", "minimum": 0},
                        "rejected": {"type": "integer", "minimum": 0},
                        "reasons": {
                            "type": "object",
                            "additionalProperties": {"type": "integer", "minimum": 1},
                        },
                        "errors": {
                            "type": "array",
                            "maxItems": MAX_ERRORS_LISTED,
                            "items": {
                                "type": "object",
                                "required": ["index", "code", "message"],
                                "properties": {
                                    "index": {"type": "integer", "minimum": 0},
                                    "code": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "Contact": {
                    "type": "object",
                    "description": "The flow's read model (engine view); `changes` only with "
                    "explain.",
                    "properties": {
                        "score": {"type": "number"},
                        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
                        "total": {"type": "number"},
                        "normalized": {"type": "number"},
                        "grade": {"type": ["string", "null"]},
                        "stage": {"type": ["string", "null"]},
                        "segments": {"type": "array", "items": {"type": "string"}},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "updated_at": {"type": ["string", "null"]},
                        "changes": {"type": "array", "items": {"type": "object"}},
                    },
                    "additionalProperties": True,
                },
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "ready", "unavailable"]},
                        "partitions": {"type": "integer", "minimum": 1},
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }
