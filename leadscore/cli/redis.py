"""``leadscore send`` and ``leadscore show``: events into the live flow's Redis streams, and a
contact's score out of its read model."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import orjson
import typer
from rich.table import Table
from rich.text import Text

from leadscore.cli.app import (
    DEFAULT_REDIS,
    STDIO,
    Cluster,
    Prefix,
    RedisUrl,
    app,
    bytes_bar,
    events_arg,
    events_exist,
    fail,
    masked_url,
    new_console,
    num,
    redis_url_arg,
    require_redis,
)
from leadscore.inputs import input_size
from leadscore.readmodel import view_at
from leadscore.rules import READ_MODEL_KEYS


@app.command(context_settings={"allow_extra_args": True})
def send(
    ctx: typer.Context,
    events: Annotated[
        list[str],
        typer.Option(
            "--events",
            "-e",
            metavar="FILE",
            help="Events files (JSON lines, .gz too); - reads standard input. "
            "Give several after one --events or repeat the option.",
        ),
    ],
    redis_url: RedisUrl = DEFAULT_REDIS,
    batch: Annotated[
        int,
        typer.Option(
            "--batch",
            min=1,
            metavar="N",
            help="Events per stream entry; 100 costs ~7x less than 1 on both sides.",
        ),
    ] = 100,
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions",
            min=1,
            metavar="P",
            help="Input streams, as the flow's. [default: from {prefix}:meta, else 16]",
        ),
    ] = None,
    prefix: Prefix = "ls",
    cluster: Cluster = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar on stderr; default: when stderr is a terminal and no input is -.",
        ),
    ] = None,
) -> None:
    """Load events (JSON lines) into the Redis input streams that `leadscore run --source`
    scores.

    Each event goes to its contact's partition, up to --batch events per stream entry, in
    file order. Lines without a readable contact go to partition 0, where the flow
    dead-letters them with their reason. Sending is at-least-once: give events an `id` and
    a repeated one is scored once.
    """
    from redis.exceptions import RedisError

    from state.redis_store import StoreError
    from state.send import send_files

    paths = events_arg(events, ctx.args)
    events_exist(paths)
    redis_url_arg(redis_url, "--redis")
    require_redis(redis_url, "--redis (or LEADSCORE_REDIS_URL)")
    where = masked_url(redis_url)
    show = new_console(stderr=True).is_terminal if progress is None else progress
    show = show and STDIO not in paths
    bar = bytes_bar("sending", disable=not show)
    task = bar.add_task("sending", total=sum(input_size(p) for p in paths) if show else None)
    started = time.perf_counter()
    try:
        with bar:
            partitions, result = send_files(
                redis_url,
                paths,
                prefix=prefix,
                cluster=cluster,
                partitions=partitions,
                batch=batch,
                on_bytes=lambda n: bar.advance(task, n),
            )
    except (StoreError, RedisError, ValueError) as err:
        fail(f"cannot send to {where}: {err}")
    seconds = time.perf_counter() - started
    rate = result.events / seconds if seconds > 0 else 0.0
    console = new_console()
    console.print(
        Text(
            f"sent {result.events:,} events in {result.entries:,} stream entries to "
            f"{partitions} partitions of {where} (prefix {prefix!r}) in {seconds:.2f} s "
            f"({rate:,.0f} events/s)"
        )
    )
    if result.malformed:
        console.print(
            Text(
                f"{result.malformed:,} lines without a readable contact went to partition 0; "
                "the flow dead-letters them with their reason"
            )
        )
    if result.blank:
        console.print(Text(f"{result.blank:,} blank lines skipped"))


@app.command()
def show(
    contact: Annotated[str, typer.Argument(metavar="CONTACT", help="The contact id.")],
    redis_url: RedisUrl = DEFAULT_REDIS,
    prefix: Prefix = "ls",
    cluster: Cluster = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the answer as JSON (what the HTTP service answers)."),
    ] = False,
) -> None:
    """Print a contact's score as of now, from the read model the live flow stores.

    The scores, total, normalized score and grade are decayed to the moment of the read
    (`as of`), exactly as the HTTP service answers them (leadscore.readmodel.view_at);
    `updated at` is the contact's last event or trigger. Exit 1 when the contact has never
    been scored.
    """
    from redis.exceptions import RedisError

    from state.redis_store import RedisStore, RetryPolicy, StoreError

    redis_url_arg(redis_url, "--redis")
    require_redis(redis_url, "--redis (or LEADSCORE_REDIS_URL)")
    where = masked_url(redis_url)
    try:
        with RedisStore(
            redis_url, prefix=prefix, cluster=cluster, retry=RetryPolicy(attempts=3)
        ) as store:
            doc = store.read_model(contact)
            keys = store.keys
    except (StoreError, RedisError, ValueError) as err:
        fail(f"cannot read from {where}: {err}")
    p = keys.partition(contact)
    if doc is None:
        fail(
            f"no score for contact {contact!r} in {where} (prefix {prefix!r}, partition {p} of "
            f"{keys.partitions}): the flow has not scored it. Check the id (case and spaces "
            "count) and the prefix, and that `leadscore run --source` has run since its "
            "events were sent."
        )
    view = view_at(doc, time.time())  # decayed to now: the flow writes on change only
    merged = doc.get("merged_into")  # the id was merged into another contact (identify)
    if merged:
        view["requested"], view["merged_into"] = contact, merged
        p = keys.partition(view.get("contact", contact))
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(view) + b"\n")
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    scores = view.get("scores") or {}
    grid.add_row("contact", Text(f"{view.get('contact', contact)}  (partition {p})"))
    if merged:
        grid.add_row("merged", Text(f"{contact} was merged into " + " then ".join(merged)))
    grid.add_row("total", num(view.get("total")))
    if view.get("normalized") is not None:
        grid.add_row("normalized", num(view.get("normalized")))
    grid.add_row("scores", Text(", ".join(f"{k} {num(v)}" for k, v in scores.items())))
    for name in ("grade", "stage"):
        if view.get(name):
            grid.add_row(name, Text(str(view[name])))
    for name in ("segments", "tags"):
        if view.get(name):
            grid.add_row(name, Text(", ".join(view[name])))
    for name, value in view.items():  # e.g. `likelihood`, when the rules `predict`
        if name not in READ_MODEL_KEYS and isinstance(value, int | float):
            grid.add_row(name, num(value))
    grid.add_row("updated at", Text(view.get("updated_at") or "", style="dim"))
    grid.add_row("as of", Text(view.get("as_of") or "", style="dim"))
    new_console().print(grid)
