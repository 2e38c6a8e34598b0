"""``leadscore rules --redis URL``: which rules a live deployment runs (state/versions.py)."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Annotated

import orjson
import typer

from leadscore.cli.app import (
    DEFAULT_REDIS,
    Cluster,
    Prefix,
    RedisUrl,
    app,
    fail,
    masked_url,
    redis_url_arg,
)


@app.command()
def rules(
    redis_url: RedisUrl = DEFAULT_REDIS,
    prefix: Prefix = "ls",
    cluster: Cluster = False,
    text_only: Annotated[
        bool,
        typer.Option("--text", help="Print only the rules file (e.g. > live.yaml)."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: version, sha256, published, text.")
    ] = False,
) -> None:
    """Print the rules the live deployment runs: version, sha256, when they were published,
    and the rules file itself."""
    from redis.exceptions import RedisError

    from state.generations import live_generation, publishing
    from state.redis_store import RedisStore, RetryPolicy, StoreError
    from state.versions import live_rules

    redis_url_arg(redis_url, "--redis")
    try:
        with RedisStore(
            redis_url, prefix=prefix, cluster=cluster, retry=RetryPolicy(attempts=3)
        ) as store:
            live = live_rules(store.r, store.keys)
            generation = live_generation(store.r, store.keys)
            job = publishing(store.r, store.keys)
    except (StoreError, RedisError, ValueError) as err:
        fail(f"cannot read the rules of {masked_url(redis_url)}: {err}")
    if live is None:
        fail(
            f"{prefix}:meta at {masked_url(redis_url)} records no rules yet: the first live "
            "run records its rules as v1 (see `leadscore run --publish`)"
        )
    published = dt.datetime.fromtimestamp(live.published, dt.UTC)
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    "version": live.version,
                    "sha256": live.sha256,
                    "published": published.isoformat().replace("+00:00", "Z"),
                    "text": live.text.decode(errors="replace"),
                    "generation": generation,
                    "publishing": None
                    if job is None
                    else {"target": job.target, "phase": job.phase},
                }
            )
        )
        return
    if not text_only:
        typer.echo(f"# version:   {live.version}")
        typer.echo(f"# sha256:    {live.sha256}")
        typer.echo(f"# published: {published:%Y-%m-%d %H:%M:%S} UTC")
        if generation or job is not None:
            typer.echo(f"# generation: {generation} (of state; see `leadscore publish`)")
        if job is not None:
            typer.echo(
                f"# publishing: v{job.version} as generation {job.generation}, unfinished "
                f"({job.phase}): run `leadscore publish` again to finish it"
            )
    sys.stdout.flush()
    sys.stdout.buffer.write(live.text)
    if live.text and not live.text.endswith(b"\n") and not text_only:
        sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()
