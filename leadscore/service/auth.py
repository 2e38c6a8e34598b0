"""Who may call what: write keys guard the ingest endpoints (the pixel excepted), read keys,
when configured, the score API. Keys come as HTTP Basic (Segment's way: key as user name,
empty password) or Bearer, and are compared in constant time. The pixel, which takes no
key, can require signed contact ids instead (:func:`contact_signature`)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from starlette.requests import Request

from leadscore.service.errors import ApiError


def presented_key(request: Request) -> str | None:
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


def key_in(key: str, keys: tuple[str, ...]) -> bool:
    """Constant-time membership, so response timing does not reveal key prefixes."""
    candidate = key.encode()
    found = False
    for known in keys:
        found |= hmac.compare_digest(candidate, known.encode())
    return found


def authorize_write(write_keys: tuple[str, ...], key: str | None) -> None:
    """Raise 401 unless ``key`` is one of ``write_keys`` (none configured: refuse all)."""
    if not write_keys:
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
    if not key_in(key, write_keys):
        raise ApiError(401, "unauthorized", "the write key is not valid", "writeKey")


def authorize_read(
    read_keys: tuple[str, ...], write_keys: tuple[str, ...], request: Request
) -> None:
    """With read keys configured, the score API wants one of them (or a write key)."""
    if not read_keys:
        return
    key = presented_key(request)
    if key is None or not (key_in(key, read_keys) or key_in(key, write_keys)):
        raise ApiError(401, "unauthorized", "a valid read key is required", "Authorization")


def contact_signature(secret: str, contact: str) -> str:
    """HMAC-SHA256 of a contact id under the pixel secret, in lower-case hex: what a signed
    pixel URL carries as ``sig`` (``/t.gif?contact=ID&sig=HEX``), as email links carry one."""
    return hmac.new(secret.encode(), contact.encode(), hashlib.sha256).hexdigest()


def signature_ok(secret: str, contact: str, signature: str) -> bool:
    """Whether ``signature`` signs ``contact`` (hex in either case), in constant time."""
    expected = contact_signature(secret, contact).encode()
    return hmac.compare_digest(expected, signature.strip().lower().encode("utf-8", "replace"))
