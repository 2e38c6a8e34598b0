"""``leadscore deliver``: POST the live flow's trigger actions to their channels and webhooks."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from leadscore.cli.app import (
    Prefix,
    app,
    fail,
    load_rules_or_exit,
    masked_url,
    redis_url_arg,
    require_redis,
)

_RETRY = "Retries"
_MANY = "Several deliverers"


def _seconds(text: str, option: str) -> float:
    from leadscore.durations import parse_duration

    try:
        return parse_duration(text)
    except (ValueError, TypeError):
        fail(f"{option} takes a duration such as 30s, 5m, 2h or 1d, got {text!r}")


@app.command()
def deliver(
    redis_url: Annotated[
        str,
        typer.Option(
            "--redis",
            metavar="URL",
            envvar="LEADSCORE_REDIS_URL",
            help="The Redis the live flow writes: redis://[:PASSWORD@]HOST:PORT/DB.",
        ),
    ],
    rules: Annotated[
        str,
        typer.Option(
            "--rules",
            "-r",
            metavar="RULES",
            envvar="LEADSCORE_RULES",
            help="The rules file: its `channels:` say where each `notify` goes.",
        ),
    ],
    replay_dead: Annotated[
        bool,
        typer.Option(
            "--replay-dead",
            help="Re-send every dead letter once more (same ids), report, and exit.",
        ),
    ] = False,
    prefix: Prefix = "ls",
    allow_http: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-http",
            metavar="HOST",
            help="Allow plain http to this host (loopback always is); repeatable.",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, metavar="N", help="Requests at a time.")
    ] = 16,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.01, metavar="SECONDS", help="Per attempt: connect, send, answer."
        ),
    ] = 10.0,
    max_attempts: Annotated[
        int,
        typer.Option(
            "--max-attempts", min=1, metavar="N", help="Then: dead letter.", rich_help_panel=_RETRY
        ),
    ] = 10,
    max_age: Annotated[
        str,
        typer.Option(
            "--max-age",
            metavar="DURATION",
            help="Send no firing older than this (dead letter instead).",
            rich_help_panel=_RETRY,
        ),
    ] = "1d",
    backoff: Annotated[
        str,
        typer.Option(
            "--backoff",
            metavar="DURATION",
            help="First retry's back-off; doubles each time, with jitter.",
            rich_help_panel=_RETRY,
        ),
    ] = "1s",
    backoff_cap: Annotated[
        str,
        typer.Option(
            "--backoff-cap", metavar="DURATION", help="Longest back-off.", rich_help_panel=_RETRY
        ),
    ] = "5m",
    max_inflight: Annotated[
        int,
        typer.Option(
            "--max-inflight",
            min=1,
            metavar="N",
            help="Firings read and not yet acknowledged: at most what a crash re-sends.",
        ),
    ] = 1000,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="This deliverer's consumer name, distinct per deliverer. [default: HOST-PID]",
            rich_help_panel=_MANY,
        ),
    ] = None,
    lease_ttl: Annotated[
        str,
        typer.Option(
            "--lease-ttl",
            metavar="DURATION",
            help="A dead deliverer's partitions move after this.",
            rich_help_panel=_MANY,
        ),
    ] = "10s",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            metavar="PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics.",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host",
            metavar="ADDR",
            help="Address of the metrics endpoint; 0.0.0.0: every interface (containers).",
        ),
    ] = "127.0.0.1",
) -> None:
    """Deliver trigger actions: each `notify` and `webhook` of every firing the live flow
    commits is POSTed, signed, at least once, in order per contact (docs/delivery.md).

    Secrets come from the environment: each channel's `secret_env`, and
    LEADSCORE_WEBHOOK_SECRET for `webhook:` actions. Runs until SIGTERM or Ctrl-C, which
    let requests under way finish and hand the partitions over.
    """
    import asyncio
    import logging

    from leadscore import deliverer
    from leadscore.delivery import DeliveryConfigError, RetryPolicy, build_plan

    redis_url_arg(redis_url, "--redis")
    compiled = load_rules_or_exit(rules)
    try:
        plan = build_plan(compiled, os.environ, allow_http or ())
    except DeliveryConfigError as err:
        for problem in err.problems:
            typer.echo(problem, err=True)
        fail("nothing started: fix the rules or set the variables above, then start again")
    policy = RetryPolicy(
        max_attempts=max_attempts,
        base=_seconds(backoff, "--backoff"),
        cap=_seconds(backoff_cap, "--backoff-cap"),
        max_age=_seconds(max_age, "--max-age"),
    )
    config = deliverer.DeliverConfig(
        redis_url=redis_url,
        prefix=prefix,
        name=name or deliverer.default_name(),
        concurrency=concurrency,
        max_inflight=max_inflight,
        timeout=timeout,
        policy=policy,
        lease_ttl=_seconds(lease_ttl, "--lease-ttl"),
    )
    require_redis(redis_url, "--redis (or LEADSCORE_REDIS_URL)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if replay_dead:
        result = asyncio.run(deliverer.replay_dead(config, plan))
        typer.echo(f"re-sent {result.sent} dead letters; {result.failed} still failing", err=True)
        raise typer.Exit(1 if result.failed else 0)
    channels = ", ".join(sorted(plan.channels)) or "none"
    typer.echo(
        f"delivering from {masked_url(redis_url)} (prefix {prefix}) as {config.name}; "
        f"channels: {channels}; Ctrl-C stops",
        err=True,
    )
    try:
        ok = deliverer.run_deliverer(config, plan, metrics_port, metrics_host)
    except OSError as err:
        fail(f"cannot serve metrics on {metrics_host}:{metrics_port}: {err}")
    if not ok:
        fail("the deliverer stopped on an error (logged above); what it held stays pending")
