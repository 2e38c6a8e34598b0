"""Reading request bodies safely: a size limit enforced while streaming, gzip inflated
within the same limit (no gzip bombs), and JSON errors answered as 400s."""

from __future__ import annotations

import zlib

import orjson
from starlette.requests import Request

from leadscore.service.errors import ApiError


async def read_body(request: Request, limit: int, *, status: int = 400) -> bytes:
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


def loads_json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}", "body") from None
