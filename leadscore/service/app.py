"""The app factory: wires the endpoints of :mod:`~leadscore.service.ingest`,
:mod:`~leadscore.service.read`, :mod:`~leadscore.service.metrics` and
:mod:`~leadscore.service.openapi` to their routes, with the middleware and error handlers,
and serves it under uvicorn (``leadscore serve``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from leadscore.service.backend import Service
from leadscore.service.body import CloseUnreadBodies
from leadscore.service.config import ServiceConfig
from leadscore.service.errors import exception_handlers, json_response
from leadscore.service.ingest import Ingest
from leadscore.service.metrics import Timing, exposition
from leadscore.service.openapi import openapi_document
from leadscore.service.read import Reads


class JsonCORSMiddleware(CORSMiddleware):
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


def create_app(config: ServiceConfig) -> Starlette:
    """The ASGI app; Redis is connected in the lifespan, so creating it does no I/O."""
    service = Service(config)
    ingest = Ingest(service)
    reads = Reads(service)
    document = openapi_document(config)

    async def openapi(request: Request) -> Response:
        return json_response(document)

    async def metrics(request: Request) -> Response:
        return await exposition(service.metrics, service.redis, service.keys)

    def route(
        path: str, endpoint: Callable[[Request], Awaitable[Response]], *methods: str
    ) -> Route:
        return Route(path, endpoint, methods=list(methods))

    routes = [
        route("/t.gif", ingest.pixel, "GET"),
        route("/v1/track", ingest.segment, "POST"),
        route("/v1/identify", ingest.segment, "POST"),
        route("/v1/alias", ingest.segment, "POST"),
        route("/v1/page", ingest.segment, "POST"),
        route("/v1/batch", ingest.segment, "POST"),
        route("/v1/events", ingest.native_events, "POST"),
        route("/v1/contacts/{id:path}", reads.contact, "GET"),
        route("/metrics", metrics, "GET"),
        route("/healthz", reads.healthz, "GET"),
        route("/readyz", reads.readyz, "GET"),
        route("/openapi.json", openapi, "GET"),
    ]
    middleware = [Middleware(Timing, metrics=service.metrics), Middleware(CloseUnreadBodies)]
    if config.cors_origins:
        middleware.append(
            Middleware(
                JsonCORSMiddleware,
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
        exception_handlers=exception_handlers(),
    )
    app.state.service = service
    return app


class _HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus a deadline for request headers: uvicorn waits
    forever on a connection that sends nothing, or its headers a byte at a time, and each
    such connection holds one of ``max_connections``. Once a connection is open, or idle
    between requests with data coming in, its next request's headers must arrive within
    ``timeout`` seconds, else it is closed."""

    timeout: float = 5.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still waiting for a request's headers
            if self._deadline is None:
                self._arm()
        else:
            self._disarm()

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.timeout, self._overdue)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _overdue(self) -> None:
        self._deadline = None
        idle = self.cycle is None or self.cycle.response_complete
        if self.conn.their_state is h11.IDLE and idle and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(config: ServiceConfig, host: str, port: int) -> uvicorn.Config:
    """How `leadscore serve` runs the app. ``limit_concurrency`` answers 503 past
    ``max_connections`` open connections, so slow clients cannot pile up without bound: a
    request's headers must arrive within ``body_timeout`` (else the connection closes), then
    its body (else 408), and an idle kept-alive connection closes after 5 s."""
    protocol = type("HeaderDeadline", (_HeaderDeadline,), {"timeout": config.body_timeout})
    return uvicorn.Config(
        create_app(config),
        host=host,
        port=port,
        http=protocol,
        lifespan="on",
        access_log=False,
        server_header=False,
        log_level="info",
        limit_concurrency=config.max_connections,
        timeout_keep_alive=5,
    )


def run_server(config: ServiceConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (what `leadscore serve` calls)."""
    uvicorn.Server(uvicorn_config(config, host, port)).run()
