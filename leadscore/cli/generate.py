"""``leadscore generate``: realistic synthetic events for demos, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leadscore.cli.app import STDIO, app, fail


@app.command()
def generate(
    contacts: Annotated[
        int, typer.Option("--contacts", "-n", min=1, metavar="N", help="How many contacts.")
    ],
    events: Annotated[
        int, typer.Option("--events", "-m", min=0, metavar="M", help="How many event lines.")
    ],
    seed: Annotated[
        int, typer.Option("--seed", "-s", metavar="S", help="Same seed, same bytes.")
    ] = 0,
    out: Annotated[
        str,
        typer.Option(
            "--out", "-o", metavar="FILE", help="Output file (.gz is compressed); - is stdout."
        ),
    ] = STDIO,
    malformed_rate: Annotated[
        float,
        typer.Option(
            "--malformed-rate",
            metavar="RATE",
            min=0.0,
            max=1.0,
            help="Share of lines broken on purpose, to exercise dead letters.",
        ),
    ] = 0.001,
    days: Annotated[
        float,
        typer.Option("--days", metavar="DAYS", help="Roughly how many days the stream covers."),
    ] = 56.0,
    conversions: Annotated[
        float,
        typer.Option(
            "--conversions",
            metavar="RATE",
            min=0.0,
            max=1.0,
            help="Add deals closed by sales (purchase events weeks after engagement, likelier "
            "the more engaged the contact) at this rate; 0 adds none.",
        ),
    ] = 0.0,
) -> None:
    """Write realistic synthetic events (JSON lines) for demos, tests and benchmarks.

    Busy contacts and a long tail, browsing sessions, email funnels, forms, slightly
    out-of-order timestamps and a few malformed lines. Deterministic for the same options.
    """
    from leadscore.generate import write_events

    if days <= 0:
        fail(f"--days must be positive, got {days:g}")
    if out != STDIO:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    try:
        written = write_events(
            out,
            contacts,
            events,
            seed,
            malformed_rate=malformed_rate,
            days=days,
            conversions=conversions,
        )
    except (ValueError, OSError) as err:
        fail(f"cannot generate: {err}")
    malformed = round(events * malformed_rate)
    where = "standard output" if out == STDIO else out
    typer.echo(
        f"wrote {written:,} events for {contacts:,} contacts to {where} "
        f"(seed {seed}, {malformed:,} malformed on purpose)",
        err=True,
    )
