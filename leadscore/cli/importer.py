"""`leadscore import`: a CRM export becomes `identify` events, one per row.

The work is :func:`leadscore.tables.import_table`; this module parses options and writes the
events as JSON lines, so `leadscore run` or `leadscore send` scores a CRM's leads with the
same flow (and the same model) as live events.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from leadscore.cli.app import STDIO, app, fail


@app.command("import")
def import_(
    table: Annotated[Path, typer.Option("--table", "-t", help="CSV export with a header row.")],
    id_column: Annotated[str, typer.Option("--id", help="The column holding the contact id.")],
    exclude: Annotated[
        str | None,
        typer.Option("--exclude", "-x", help="Columns not to send as traits, comma-separated."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(help="The events' time (RFC 3339 or epoch seconds); default: now."),
    ] = None,
    out: Annotated[
        str, typer.Option("--out", "-o", help="Where to write the events; - is stdout.")
    ] = STDIO,
) -> None:
    """Turn a CRM export into `identify` events (JSON lines), one per row.

    Each row's id column is the contact and every other column a trait: numbers as numbers,
    other values as text; blanks and placeholders such as "Select" are left out. Event ids
    hash the row, so sending the same export twice scores it once.
    """
    import orjson

    from leadscore.events import Reject, parse_ts
    from leadscore.tables import TableError, import_table

    when = time.time()
    if at is not None:
        value: object = float(at) if at.replace(".", "", 1).isdigit() else at
        parsed = parse_ts(value, when)
        if isinstance(parsed, Reject):
            fail(f"--at: {parsed.detail}; use RFC 3339 (2026-06-01T00:00:00Z) or epoch seconds")
        when = parsed
    columns = tuple(c.strip() for c in (exclude or "").split(",") if c.strip())
    try:
        result = import_table(table, id_column, when, columns)
    except TableError as err:
        fail(str(err))
    body = b"".join(orjson.dumps(e) + b"\n" for e in result.events)
    if out == STDIO:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    else:
        try:
            Path(out).write_bytes(body)
        except OSError as err:
            fail(f"cannot write {out}: {err.strerror}")
    numbers = sum(1 for c in result.columns if c.kind == "number")
    typer.echo(
        f"{len(result.events):,} identify events from {table} ({len(result.columns)} traits: "
        f"{numbers} numbers, {len(result.columns) - numbers} categories)"
        + (f" written to {out}" if out != STDIO else ""),
        err=True,
    )
    for line, why in result.skipped[:10]:
        typer.echo(f"skipped {table}:{line}: {why}", err=True)
    if len(result.skipped) > 10:
        typer.echo(f"... and {len(result.skipped) - 10} more rows skipped", err=True)
    for column, why in result.dropped:
        typer.echo(f"not sent: {column!r} ({why})", err=True)
