"""What a delivery is: its stable id, its body, its signature and the retry policy.

Pure: no Redis, no HTTP, no clock (times are passed in). `leadscore/deliverer.py` is the
process that reads the triggers streams and POSTs; this module decides everything that must
be the same on every retry and after every restart (the id and the body) and what a response
means (done, retry later, give up), so both can be tested without a network.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from leadscore.channels import WEBHOOK_SECRET_ENV, delivery_issues, transport_problem
from leadscore.events import parse_ts
from leadscore.rules import Rules

DELIVERY_KINDS = ("notify", "webhook")
#: A direct `webhook: URL` action's channel label in metrics and dead letters.
DIRECT = "webhook"
SIGNATURE_HEADER = "X-Leadscore-Signature"


class DeliveryConfigError(Exception):
    """The rules and the environment cannot deliver: one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Target:
    """Where one delivery goes. ``name`` is the channel (``webhook`` for a direct URL): the
    label of metrics and dead letters, safe to show (the URL of a channel may be secret)."""

    name: str
    url: str
    secret: bytes
    format: str = "json"

    def __repr__(self) -> str:  # never print the secret or a possibly secret URL
        return f"Target({self.name!r}, format={self.format!r})"


def delivery_id(prefix: str, p: int, entry_id: str, index: int) -> str:
    """The same on every retry and restart: the firing's stream entry and the action's place."""
    return f"{prefix}:{p}:{entry_id}:{index}"


def entry_time(entry_id: str) -> float:
    """The epoch time Redis gave a stream entry id (when the firing was committed)."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


def fired_at(record: Mapping[str, Any], entry_id: str) -> float:
    """When the firing happened: its commit, or its own time if earlier (a backlog replayed
    through Redis commits old firings now; their age is that of the firing, not the commit)."""
    committed = entry_time(entry_id)
    at = record.get("at")
    own = parse_ts(at, committed) if isinstance(at, str) else None
    if not isinstance(own, float) or not math.isfinite(own):
        return committed
    return min(committed, own)


def sign(secret: bytes, body: bytes, t: int) -> str:
    """``t=<unix>,v1=<hex HMAC-SHA256 of "t.body">``: the scheme Stripe's receivers know."""
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: bytes, header: str, body: bytes, now: float, tolerance: float = 300.0) -> bool:
    """Receiver side: the signature matches and its timestamp is within ``tolerance`` seconds
    of ``now`` (an old, captured request replayed later is refused)."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - t) > tolerance:
        return False
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(record: Mapping[str, Any], trigger_names: Mapping[str, str] | None = None) -> str:
    """One readable sentence for a Slack channel."""
    trigger = str(record.get("trigger", "?"))
    name = (trigger_names or {}).get(trigger, trigger)
    score = record.get("score")
    score_text = f"{score:g}" if isinstance(score, int | float) else str(score)
    text = (
        f"Lead *{_slack_escape(str(record.get('contact', '?')))}* fired "
        f"*{_slack_escape(name)}* with a score of {score_text} at {record.get('at', '?')}"
    )
    cause = record.get("cause")
    if cause:
        text += f" ({_slack_escape(str(cause))})"
    return text + "."


def render_body(
    target: Target,
    record: Mapping[str, Any],
    did: str,
    trigger_names: Mapping[str, str] | None = None,
) -> bytes:
    """The bytes POSTed, the same on every attempt (the signature's time changes, not this).

    json: the trigger record with the delivery ``id`` and ``channel`` in front; slack:
    ``{"text": ...}`` (the id is in the Idempotency-Key header only)."""
    if target.format == "slack":
        return orjson.dumps({"text": slack_text(record, trigger_names)})
    channel = None if target.name == DIRECT else target.name
    return orjson.dumps({"id": did, "channel": channel, **record})


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off with jitter, bounded by attempts and by the firing's age.

    The n-th retry waits a uniform time in ``[d/2, d]`` with ``d = min(cap, base * 2**(n-1))``,
    so deliverers that failed together do not retry together. ``max_age`` bounds how old a
    firing may be when it is (re)sent: a stale "call this lead now" is worse than none."""

    max_attempts: int = 10
    base: float = 1.0
    cap: float = 300.0
    max_age: float = 86_400.0
    max_retry_after: float = 3_600.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        d = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return rng.uniform(d / 2, d)


#: What one attempt's outcome means.
DONE, RETRY, FINAL = "done", "retry", "final"


def classify(status: int | None) -> str:
    """2xx done; 408, 429 and 5xx (and ``None``: timeout or connection error) retry; any other
    status is final (other 4xx are the receiver refusing this body; 3xx: redirects are not
    followed, a moved endpoint must be fixed in the rules)."""
    if status is None or status in (408, 429) or status >= 500:
        return RETRY
    if 200 <= status < 300:
        return DONE
    return FINAL


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- the plan


@dataclass(slots=True)
class Plan:
    """Channels resolved against the environment: what each trigger action delivers to."""

    channels: dict[str, Target]
    webhook_secret: bytes | None
    allow_http: tuple[str, ...] = ()
    trigger_names: dict[str, str] = field(default_factory=dict)

    def target(self, action: Mapping[str, Any]) -> Target | str | None:
        """The action's target; None if it is not a delivery (``add_segment`` ...); a text
        saying why it cannot be delivered (a channel the rules no longer declare, ...)."""
        if "notify" in action:
            name = action["notify"]
            target = self.channels.get(name)
            return target if target is not None else f"unknown channel {name!r}"
        if "webhook" in action:
            url = action["webhook"]
            if not isinstance(url, str):
                return f"bad webhook {url!r}"
            if why := transport_problem(url, self.allow_http):
                return why
            if self.webhook_secret is None:
                return f"${WEBHOOK_SECRET_ENV} is not set"
            return Target(DIRECT, url, self.webhook_secret)
        return None


def trigger_actions(rules: Rules) -> Iterable[tuple[str, dict[str, Any]]]:
    for t in rules.triggers:
        for i, action in enumerate(t.actions):
            yield f"triggers ({t.id}) actions[{i}]", action


def build_plan(rules: Rules, environ: Mapping[str, str], allow_http: Iterable[str] = ()) -> Plan:
    """Resolve every channel; raise DeliveryConfigError if anything the rules deliver to has
    no URL, no secret or a URL the policy refuses (`deliver` refuses to start)."""
    allow = tuple(allow_http)
    issues = delivery_issues(rules.channels, trigger_actions(rules), environ, allow)
    if issues:
        raise DeliveryConfigError([f"{rules.source}: {i.where}: {i.message}" for i in issues])
    targets: dict[str, Target] = {}
    for name, channel in rules.channels.items():
        url = channel.webhook or environ.get(channel.webhook_env or "", "")
        secret_env = channel.secret_env
        secret = environ.get(secret_env, "").encode() if secret_env else b""
        if not url or transport_problem(url, allow) or (secret_env and not secret):
            continue  # unused by any trigger (or it would be an issue): not deliverable
        targets[name] = Target(name, url, secret, channel.format)
    direct = environ.get(WEBHOOK_SECRET_ENV)
    names = {t.id: t.id for t in rules.triggers}
    return Plan(targets, direct.encode() if direct else None, allow, names)
