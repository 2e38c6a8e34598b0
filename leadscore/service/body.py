"""Reading request bodies safely: a size limit enforced while streaming, gzip inflated
within the same limit (no gzip bombs), and JSON errors answered as 400s."""

from __future__ import annotations

import asyncio
import re
import zlib

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadscore.events import MAX_DEPTH
from leadscore.service.errors import ApiError


async def read_body(
    request: Request, limit: int, *, status: int = 400, timeout: float = 5.0
) -> bytes:
    """The request body, decompressed if gzip, refusing more than ``limit`` bytes without
    buffering an arbitrarily large upload (or a gzip bomb), and a body that takes more than
    ``timeout`` seconds to arrive (408): a client that declares a size and goes quiet, or
    trickles a chunked body forever, is let go instead of holding the connection."""
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
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > raw_limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within {timeout:g} s; send it at once",
            "body",
        ) from None
    body = b"".join(chunks)
    if encoding != "gzip" or not body:
        return body
    return _gunzip(body, limit, too_large)


def _gunzip(body: bytes, limit: int, too_large: ApiError) -> bytes:
    """Every member of a gzip body (RFC 1952 allows several, and ``cat a.gz b.gz`` makes
    them), within ``limit`` bytes in all; a cut member or data after the last one is a 400,
    never silently dropped."""
    out: list[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise ApiError(400, "invalid_gzip", f"body is not valid gzip: {exc}", "body") from None
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise too_large
        if not inflater.eof:
            raise ApiError(400, "invalid_gzip", "the gzip body is cut short", "body")
        out.append(part)
        rest = inflater.unused_data
        if not rest:
            return b"".join(out)
        if not rest.startswith(b"\x1f\x8b\x08"):
            raise ApiError(
                400,
                "invalid_gzip",
                f"{len(rest)} bytes after the end of the gzip body are not gzip",
                "body",
            )


async def loads_json(body: bytes) -> object:
    """The body as JSON. A body nested past what the decoder takes (1024 levels) is read
    with its deepest parts cut to ``null``: each item still nests more than any event may
    (``MAX_DEPTH``), so it is rejected as ``too_deep`` on its own and its neighbours stand.
    The cut runs in a thread: a pathological 4 MiB body costs seconds of CPU, and the event
    loop must keep answering meanwhile."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = exc
    if str(error).startswith("depth limit"):
        try:
            return orjson.loads(await asyncio.to_thread(cut_deep, body, KEEP_LEVELS))
        except orjson.JSONDecodeError as exc:
            error = exc
    raise ApiError(400, "invalid_json", f"body is not valid JSON: {error}", "body") from None


KEEP_LEVELS = 2 * MAX_DEPTH
"""Levels kept by :func:`cut_deep`: an item of a batch (level 3) keeps more than MAX_DEPTH."""

# A JSON string, or a run of opening or of closing brackets: the tokens depth depends on.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]+|[\]}]+', re.DOTALL)


def cut_deep(body: bytes, keep: int) -> bytes:
    """``body`` with every array or object nested deeper than ``keep`` levels replaced by
    ``null``, in one linear pass that skips strings. Valid JSON stays valid JSON; invalid
    JSON stays invalid."""
    out: list[bytes] = []
    depth = 0
    copied = 0  # body[copied:] is still to be copied
    for match in _TOKENS.finditer(body):
        start, end = match.span()
        first = body[start]
        if first == 0x22:  # a string
            continue
        run = end - start
        if first in (0x5B, 0x7B):  # [ or {
            if depth <= keep < depth + run and copied >= 0:
                cut = start + keep - depth  # the bracket that opens level keep + 1
                out.append(body[copied:cut])
                out.append(b"null")
                copied = -1  # skipping
            depth += run
        else:
            if depth - run <= keep < depth and copied < 0:
                copied = start + depth - keep  # just after the bracket closing keep + 1
            depth -= run
    if copied >= 0:
        out.append(body[copied:])
    return b"".join(out)


class CloseUnreadBodies:
    """Pure ASGI middleware: a response sent before its request body was read to the end
    (a 401, a 408, a 413 ...) says ``Connection: close``, so the server hangs up instead of
    reading and discarding whatever the client keeps sending on a kept-alive connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pending = any(
            (name == b"content-length" and value.strip() not in (b"", b"0"))
            or name == b"transfer-encoding"
            for name, value in scope["headers"]
        )

        async def tracked_receive() -> Message:
            nonlocal pending
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                pending = False
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and pending:
                headers = list(message.get("headers", []))
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, tracked_receive if pending else receive, closing_send)
