"""The service's configuration: :class:`ServiceConfig`, built from command-line options or
``LEADSCORE_*`` environment variables (options win), and checked once at start."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from leadscore.durations import parse_seconds
from leadscore.events import DEFAULT_MAX_FUTURE
from leadscore.segment import build_action_map

DEFAULT_PARTITIONS = 16
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


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
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "LEADSCORE_REDIS_URL": ("redis_url", str),
    "LEADSCORE_RULES": ("rules", lambda v: v or None),
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
    "LEADSCORE_BODY_TIMEOUT": ("body_timeout", float),
    "LEADSCORE_MAX_CONNECTIONS": ("max_connections", int),
    "LEADSCORE_PIXEL_ACTIONS": ("pixel_actions", _split),
    "LEADSCORE_PIXEL_SECRET": ("pixel_secret", lambda v: v or None),
    "LEADSCORE_MAX_FUTURE": ("max_future", parse_seconds),
}


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Everything deployment-specific; built by the CLI from options or from the environment.

    ``partitions=None`` means: use what the flow recorded in ``{prefix}:meta``, or 16.
    ``write_keys`` guard every write endpoint; with none configured, writes are refused (the
    pixel excepted) rather than silently open. ``read_keys``, when set, guard the score API
    (a write key is accepted there too).

    ``body_timeout`` bounds the time to receive a request body (408 after it) and
    ``max_connections`` the connections served at once (503 past it), so clients that send
    slowly or never finish cannot pile up. The pixel records ``page.hit`` and the actions in
    ``pixel_actions``, nothing else; with a ``pixel_secret``, a contact id on the pixel URL
    counts only with its HMAC signature (see :func:`leadscore.service.auth.contact_signature`)."""

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
    body_timeout: float = 5.0
    max_connections: int = 1000
    pixel_actions: tuple[str, ...] = ()
    pixel_secret: str | None = field(default=None, repr=False)
    # Seconds an event's time may be past the service's clock before it is rejected (bad_ts).
    max_future: float = DEFAULT_MAX_FUTURE
    rules: str | None = None  # the flow's rules: with `predict`, ?explain=1 explains likelihood

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
        if not self.max_future >= 0:
            problems.append("max_future must not be negative")
        if self.max_body_bytes < 1024:
            problems.append("max_body_bytes must be at least 1024")
        if not self.cookie_name or not self.cookie_name.replace("_", "").isalnum():
            problems.append(f"cookie_name must be letters, digits and _, got {self.cookie_name!r}")
        if not 0 < self.body_timeout <= 3600:
            problems.append(
                f"body_timeout must be above 0 and at most 3600 s, got {self.body_timeout}"
            )
        if self.max_connections < 1:
            problems.append(f"max_connections must be at least 1, got {self.max_connections}")
        if self.pixel_secret is not None and len(self.pixel_secret) < 16:
            problems.append("the pixel secret must be at least 16 characters")
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
