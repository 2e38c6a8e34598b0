"""How failures reach clients: :class:`ApiError` rendered as JSON ``{code, message, field}``,
and the handlers that give Starlette's own 404/405 and unexpected errors the same shape."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("leadscore.service")


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


def exception_handlers() -> dict[
    type[Exception], Callable[[Request, Exception], Awaitable[Response]]
]:
    """What the app factory hands Starlette: every error answers JSON."""
    return {ApiError: _api_error, HTTPException: _http_exception, Exception: _internal_error}
