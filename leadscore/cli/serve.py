"""``leadscore serve``: the HTTP service (pixel, Segment API, native events, scores)."""

from __future__ import annotations

from typing import Annotated

import typer

from leadscore.cli.app import (
    app,
    fail,
    load_rules_or_exit,
    masked_url,
    require_redis,
    seconds_arg,
)


def _action_map_arg(pairs: list[str]) -> dict[str, str] | None:
    """``--action-map "Demo Requested=form.submit"`` (repeatable) -> ``{name: action}``."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, action = pair.partition("=")
        if not sep or not name.strip() or not action.strip():
            fail(f"--action-map expects 'Event Name=action', got {pair!r}")
        mapping[name.strip()] = action.strip()
    return mapping or None


@app.command()
def serve(
    host: Annotated[
        str, typer.Option("--host", metavar="ADDR", help="Address to listen on; 0.0.0.0: all.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", "-p", min=1, max=65535, metavar="PORT", help="TCP port.")
    ] = 8080,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis", metavar="URL", help="Redis URL. [default: redis://127.0.0.1:6379/0]"
        ),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions",
            min=1,
            metavar="P",
            help="Input streams, as the flow's. [default: from {prefix}:meta, else 16]",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", metavar="PREFIX", help="Key prefix, as the flow's. [default: ls]"),
    ] = None,
    rules: Annotated[
        str | None,
        typer.Option(
            "--rules",
            metavar="RULES",
            help="The flow's rules: with `predict`, ?explain=1 adds the likelihood's factors.",
        ),
    ] = None,
    write_keys: Annotated[
        list[str] | None,
        typer.Option(
            "--write-key",
            metavar="KEY",
            help="Key for the Segment and /v1/events endpoints; repeatable. "
            "LEADSCORE_WRITE_KEYS keeps keys out of `ps`.",
        ),
    ] = None,
    read_keys: Annotated[
        list[str] | None,
        typer.Option(
            "--read-key",
            metavar="KEY",
            help="Require this key (or a write key) on /v1/contacts; repeatable. [default: open]",
        ),
    ] = None,
    cors_origins: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            help="Browser origin allowed to call the API (https://www.acme.com); repeatable.",
        ),
    ] = None,
    action_map: Annotated[
        list[str] | None,
        typer.Option(
            "--action-map",
            metavar="NAME=ACTION",
            help="Segment event name to action ('Demo Requested=form.submit'); repeatable.",
        ),
    ] = None,
    cookie_domain: Annotated[
        str | None,
        typer.Option(
            "--cookie-domain",
            metavar="DOMAIN",
            help="Visitor cookie domain (acme.com: shared by its subdomains).",
        ),
    ] = None,
    cookie_secure: Annotated[
        bool,
        typer.Option("--cookie-secure", help="Mark the visitor cookie Secure even over http."),
    ] = False,
    flush_ms: Annotated[
        float | None,
        typer.Option(
            "--flush-ms",
            min=0.0,
            metavar="MS",
            help="How long writes wait to share a Redis round trip. [default: 2]",
        ),
    ] = None,
    pixel_actions: Annotated[
        list[str] | None,
        typer.Option(
            "--pixel-action",
            metavar="ACTION",
            help="Action the pixel may record besides page.hit (asset.download); repeatable. "
            "Others are refused: anyone can load the pixel for any contact id.",
        ),
    ] = None,
    body_timeout: Annotated[
        float | None,
        typer.Option(
            "--body-timeout",
            min=0.001,
            max=3600.0,
            metavar="SECONDS",
            help="Time a request body may take to arrive, then 408. [default: 5]",
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            min=1,
            metavar="N",
            help="Connections served at once; past that new requests get 503. [default: 1000]",
        ),
    ] = None,
    max_future: Annotated[
        str | None,
        typer.Option(
            "--max-future",
            metavar="DURATION",
            help="Reject events dated more than this past the service's clock (bad_ts: in "
            "the future). [default: 5m]",
        ),
    ] = None,
    pixel_only: Annotated[
        bool,
        typer.Option(
            "--pixel-only",
            help="Run without write keys: the Segment and /v1/events endpoints then refuse "
            "every request.",
        ),
    ] = False,
) -> None:
    """Serve the HTTP API: tracking pixel, Segment-compatible collector, native events,
    contact scores, Prometheus metrics and health checks (described at /openapi.json).

    Events go into the Redis streams the scoring flow reads; scores come from what the flow
    writes. A write key is required unless --pixel-only.

    Environment (options win): LEADSCORE_REDIS_URL, LEADSCORE_PREFIX, LEADSCORE_PARTITIONS,
    LEADSCORE_WRITE_KEYS, LEADSCORE_READ_KEYS, LEADSCORE_CORS_ORIGINS (comma-separated),
    LEADSCORE_ACTION_MAP, LEADSCORE_COOKIE_DOMAIN, LEADSCORE_COOKIE_SECURE,
    LEADSCORE_FLUSH_INTERVAL_MS, LEADSCORE_PIXEL_ACTIONS, LEADSCORE_BODY_TIMEOUT,
    LEADSCORE_MAX_CONNECTIONS, LEADSCORE_MAX_FUTURE, LEADSCORE_RULES. LEADSCORE_PIXEL_SECRET
    (environment only) makes the pixel count a contact id only with sig=HMAC-SHA256(secret,
    id) in hex.
    """
    from leadscore.service import ServiceConfig, run_server

    overrides = {
        "redis_url": redis_url,
        "partitions": partitions,
        "prefix": prefix,
        "rules": rules,
        "write_keys": tuple(write_keys) if write_keys else None,
        "read_keys": tuple(read_keys) if read_keys else None,
        "cors_origins": tuple(cors_origins) if cors_origins else None,
        "action_map": _action_map_arg(action_map or []),
        "cookie_domain": cookie_domain,
        "cookie_secure": True if cookie_secure else None,  # absent: the environment decides
        "flush_interval_ms": flush_ms,
        "pixel_actions": tuple(pixel_actions) if pixel_actions else None,
        "body_timeout": body_timeout,
        "max_connections": max_connections,
        "max_future": seconds_arg(max_future, "--max-future") if max_future else None,
    }
    try:
        config = ServiceConfig.from_env(**overrides)
    except ValueError as err:
        fail(f"bad service configuration: {err}")
    if config.rules:
        load_rules_or_exit(config.rules)  # every problem listed, as `check` does
    if not config.write_keys and not pixel_only:
        fail(
            "no write key configured, so the Segment and /v1/events endpoints would refuse "
            "every request. Set one or more (comma-separated) in LEADSCORE_WRITE_KEYS, e.g.\n"
            "  export LEADSCORE_WRITE_KEYS=\"$(python -c 'import secrets; "
            "print(secrets.token_urlsafe(24))')\"\n"
            "or pass --write-key KEY; or --pixel-only to serve only the pixel and the read API.",
            2,
        )
    require_redis(config.redis_url, "--redis (or LEADSCORE_REDIS_URL)")
    import logging

    from uvicorn.logging import DefaultFormatter

    # The service's own log lines (partitions in use, Redis warnings), formatted as uvicorn's.
    handler = logging.StreamHandler()
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(name)s: %(message)s"))
    service_log = logging.getLogger("leadscore")
    service_log.addHandler(handler)
    service_log.setLevel(logging.INFO)
    n = len(config.write_keys)
    reads = f"{len(config.read_keys)} read key(s)" if config.read_keys else "score API open"
    where = " (every interface)" if host in ("0.0.0.0", "::") else ""
    typer.echo(
        f"leadscore: serving http://{host}:{port}{where}; Redis "
        f"{masked_url(config.redis_url)}, prefix {config.prefix!r}, partitions "
        f"{config.partitions or 'from ' + config.prefix + ':meta (else 16)'}; "
        f"{n} write key{'s' if n != 1 else ''}, {reads}; pixel records "
        f"{', '.join(('page.hit', *config.pixel_actions))}"
        f"{', signed contact ids only' if config.pixel_secret else ''}",
        err=True,
    )
    run_server(config, host, port)
