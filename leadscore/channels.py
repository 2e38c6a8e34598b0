"""Delivery channels declared in a rules file, and the URL policy they obey.

A trigger action `notify: sales` names a channel; `channels:` at the top of the rules file says
where that channel goes (a webhook URL or the environment variable holding it), which
environment variable holds its signing secret and which body format it takes. The rules file
is the one place that knows every `notify` name, so a typo is caught by `leadscore check`
instead of at 3 a.m. by the deliverer. Secrets never appear in the rules file: only the names
of the variables that hold them.

This module is pure (the environment is passed in) and imports nothing from the loader, so
`rules.py` can call it without an import circle.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from leadscore.suggest import did_you_mean

FORMATS = ("json", "slack")
#: The variable whose value signs `webhook: URL` actions that name no channel.
WEBHOOK_SECRET_ENV = "LEADSCORE_WEBHOOK_SECRET"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KEYS = {"webhook", "webhook_env", "secret_env", "format", "description"}


@dataclass(frozen=True, slots=True)
class Channel:
    """Where `notify: <name>` goes. Exactly one of ``webhook`` and ``webhook_env`` is set."""

    name: str
    webhook: str | None = None
    webhook_env: str | None = None
    secret_env: str | None = None
    format: str = "json"
    description: str = ""


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook target at all (syntax), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as err:
        return f"not a URL ({err}): {url!r}"
    if parts.scheme not in ("https", "http"):
        return f"expected an https:// URL, got {url!r}"
    if not parts.hostname:
        return f"the URL has no host: {url!r}"
    if parts.username is not None or parts.password is not None:
        return "the URL carries credentials; sign with secret_env instead"
    if any(c.isspace() for c in url):
        return f"the URL contains white space: {url!r}"
    return None


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_problem(url: str, allow_http: Iterable[str] = ()) -> str | None:
    """Why the deliverer must not POST to ``url``: a bad URL, or plain http to a host that is
    neither loopback nor listed in ``allow_http`` (``--allow-http HOST``)."""
    problem = url_problem(url)
    if problem is not None:
        return problem
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "http" and not is_loopback(host) and host not in set(allow_http):
        return (
            f"plain http to {host} would send leads and signatures in clear text: use https, "
            f"or allow it explicitly with --allow-http {host}"
        )
    return None


def parse_channels(node: object, problem: Callable[[str, str, str], None]) -> dict[str, Channel]:
    """The ``channels:`` section; every problem goes to ``problem(where, field, message)``."""
    if node is None:
        return {}
    if not isinstance(node, dict):
        problem("channels", "", f"expected a mapping of channel name to settings, got {node!r}")
        return {}
    out: dict[str, Channel] = {}
    for name, spec in node.items():
        where = f"channels.{name}"
        if not isinstance(name, str) or not _CHANNEL_NAME.match(name):
            problem("channels", str(name), "a channel name is letters, digits, '-', '_' or '.'")
            continue
        if not isinstance(spec, dict):
            problem(where, "", f"expected {{webhook: https://..., secret_env: NAME}}, got {spec!r}")
            continue
        for key in spec:
            if key == "secret":
                problem(
                    where,
                    "secret",
                    "secrets are never written in the rules file: put it in an environment "
                    "variable and name the variable with secret_env",
                )
            elif key not in _KEYS:
                problem(
                    where,
                    str(key),
                    f"unknown key; {did_you_mean(key, _KEYS)}expected one of {sorted(_KEYS)}",
                )
        fmt = spec.get("format", "json")
        if fmt not in FORMATS:
            problem(where, "format", f"expected one of {list(FORMATS)}, got {fmt!r}")
        if ("webhook" in spec) == ("webhook_env" in spec):
            problem(where, "", "expected exactly one of 'webhook' (a URL) or 'webhook_env'")
        url = spec.get("webhook")
        if url is not None:
            why = url_problem(url) if isinstance(url, str) else f"expected a URL, got {url!r}"
            if why:
                problem(where, "webhook", why)
        for key in ("webhook_env", "secret_env"):
            value = spec.get(key)
            if value is not None and not (isinstance(value, str) and _ENV_NAME.match(value)):
                problem(where, key, f"expected an environment variable name, got {value!r}")
        if fmt == "json" and "secret_env" not in spec:
            problem(
                where,
                "secret_env",
                "is required for json channels: receivers verify the signature with it",
            )
        text = {k: v for k, v in spec.items() if isinstance(v, str)}
        out[name] = Channel(
            name=name,
            webhook=text.get("webhook"),
            webhook_env=text.get("webhook_env"),
            secret_env=text.get("secret_env"),
            format=fmt if fmt in FORMATS else "json",
            description=text.get("description", ""),
        )
    return out


@dataclass(frozen=True, slots=True)
class DeliveryIssue:
    """A deployment problem of a rules file's deliveries: ``error`` stops `deliver` from
    starting; `leadscore check` shows every issue (errors about the environment as warnings,
    because the box running `check` need not hold production secrets)."""

    where: str
    message: str
    environment: bool = False  # depends on the environment, not on the file


def delivery_issues(
    channels: Mapping[str, Channel],
    actions: Iterable[tuple[str, dict[str, Any]]],
    environ: Mapping[str, str],
    allow_http: Iterable[str] = (),
) -> list[DeliveryIssue]:
    """What stands between these trigger actions and a delivery: URLs the policy refuses,
    variables missing from ``environ``. ``actions`` are ``(where, {kind: arg})`` pairs."""
    allow = tuple(allow_http)
    issues: list[DeliveryIssue] = []
    used: set[str] = set()
    direct = False
    for where, action in actions:
        if "notify" in action:
            used.add(action["notify"])
        elif "webhook" in action:
            direct = True
            why = transport_problem(action["webhook"], allow)
            if why:
                issues.append(DeliveryIssue(where, why))
    if direct and not environ.get(WEBHOOK_SECRET_ENV):
        issues.append(
            DeliveryIssue(
                "triggers",
                f"webhook actions are signed with ${WEBHOOK_SECRET_ENV}, which is not set",
                environment=True,
            )
        )
    for name in sorted(used):
        channel = channels.get(name)
        if channel is None:
            if not channels:
                issues.append(
                    DeliveryIssue(
                        "triggers",
                        f"notify: {name} names no channel: declare it under 'channels:' "
                        "so the deliverer knows where to send it",
                    )
                )
            continue  # with a channels section, the loader already refused the file
        where = f"channels.{name}"
        if channel.webhook_env is not None:
            url = environ.get(channel.webhook_env)
            if not url:
                issues.append(
                    DeliveryIssue(where, f"${channel.webhook_env} is not set", environment=True)
                )
            elif transport_problem(url, allow):  # its value is secret: do not quote it
                issues.append(
                    DeliveryIssue(
                        where,
                        f"${channel.webhook_env} does not hold an https URL (plain http only "
                        "to loopback or to a host given with --allow-http)",
                    )
                )
        elif channel.webhook is not None and (why := transport_problem(channel.webhook, allow)):
            issues.append(DeliveryIssue(where, why))
        if channel.secret_env is not None and not environ.get(channel.secret_env):
            issues.append(
                DeliveryIssue(where, f"${channel.secret_env} is not set", environment=True)
            )
    return issues
