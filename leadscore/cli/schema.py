"""``leadscore schema``: the rules file's JSON Schema, for editors and CI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from leadscore.cli.app import STDIO, app, fail


@app.command()
def schema(
    out: Annotated[
        str, typer.Option("--out", "-o", metavar="FILE", help="Write to this file; - is stdout.")
    ] = STDIO,
) -> None:
    """Print the JSON Schema of the rules file, for editors and CI validation."""
    try:
        from leadscore.schema import rules_json_schema
    except ImportError as err:
        fail(f"the rules schema is not available in this installation ({err})")
    data = orjson.dumps(rules_json_schema(), option=orjson.OPT_INDENT_2) + b"\n"
    if out == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(out).write_bytes(data)
    except OSError as err:
        fail(f"cannot write {out}: {err}")
    typer.echo(f"wrote the rules JSON Schema to {out}", err=True)
