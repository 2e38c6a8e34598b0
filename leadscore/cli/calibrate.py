"""``leadscore calibrate``: how well the score predicts conversion, and where to set the bar.

``leadscore.calibrate`` replays and calibrates; this module checks options and renders the
band table, the recommendation, and the ``--json`` / ``--html`` files.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich import box
from rich.table import Table

from leadscore.cli.app import (
    STDIO,
    app,
    events_arg,
    events_exist,
    fail,
    load_rules_or_exit,
    new_console,
)

EVENTS_HELP = "Events files (JSON lines, .gz too), read in the order given; - reads stdin."
CONVERSION_HELP = "An action that counts as a conversion (e.g. purchase); repeat for several."
OUTCOMES_HELP = "A CSV of contact,converted_at (a CRM export); with or without --conversion."
AS_OF_HELP = "Score time: RFC 3339 or epoch seconds. Default: the last event time minus --window."
WINDOW_HELP = "How long after --as-of a conversion counts, e.g. 30d or 2w."


@app.command(context_settings={"allow_extra_args": True})
def calibrate(
    ctx: typer.Context,
    rules: Annotated[
        str, typer.Option("--rules", "-r", metavar="RULES", help="The rules file (YAML).")
    ],
    events: Annotated[list[str], typer.Option("--events", "-e", metavar="FILE", help=EVENTS_HELP)],
    conversion: Annotated[
        list[str] | None, typer.Option("--conversion", metavar="ACTION", help=CONVERSION_HELP)
    ] = None,
    outcomes: Annotated[
        str | None, typer.Option("--outcomes", metavar="CSV", help=OUTCOMES_HELP)
    ] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", metavar="TIME", help=AS_OF_HELP)] = None,
    window: Annotated[str, typer.Option("--window", metavar="DURATION", help=WINDOW_HELP)] = "30d",
    score: Annotated[
        str,
        typer.Option(
            "--score", metavar="SCORE", help="total, normalized, or a group name (e.g. fit)."
        ),
    ] = "total",
    bands: Annotated[
        str | None,
        typer.Option(
            "--bands", metavar="EDGES", help="Band edges, e.g. 0,10,20,50. Default: deciles."
        ),
    ] = None,
    min_precision: Annotated[
        float | None,
        typer.Option(
            "--min-precision",
            metavar="P",
            min=0.0,
            max=1.0,
            help="Recommend the lowest threshold whose precision is at least P.",
        ),
    ] = None,
    capacity: Annotated[
        int | None,
        typer.Option(
            "--capacity",
            metavar="N",
            min=1,
            help="Recommend the lowest threshold sending at most N leads per window.",
        ),
    ] = None,
    json_out: Annotated[
        str | None,
        typer.Option("--json", metavar="OUT", help="Write the figures as JSON (- is stdout)."),
    ] = None,
    html_out: Annotated[
        str | None,
        typer.Option("--html", metavar="REPORT", help="Write a self-contained HTML report."),
    ] = None,
) -> None:
    """Calibrate the score against conversions: rate by band, best threshold, AUC.

    Replays the events through the engine up to --as-of (no Bytewax, no Redis, nothing
    delivered). The population is every contact with an event by then that had not yet
    converted; each is labelled by whether it converts within --window after. Events after
    --as-of never count, so a conversion's own points cannot inflate its score.
    """
    from leadscore.calibrate import calibrate_files, parse_as_of
    from leadscore.calibration import CalibrationError, fmt, parse_bands
    from leadscore.durations import format_duration, parse_duration
    from leadscore.events import format_ts
    from leadscore.outcomes import OutcomeError, conversions

    paths = events_arg(events, ctx.args)
    events_exist(paths)
    if min_precision is not None and capacity is not None:
        fail("give --min-precision or --capacity, not both")
    compiled = load_rules_or_exit(rules)
    try:
        seconds = parse_duration(window)
    except ValueError as err:
        fail(f"--window: {err}")
    try:
        wanted = conversions(conversion or [], outcomes, time.time())
        edges = parse_bands(bands) if bands is not None else None
        at = parse_as_of(as_of) if as_of is not None else None
        result = calibrate_files(
            compiled,
            paths,
            wanted,
            seconds,
            at,
            score,
            edges,
            min_precision,
            capacity,
            time.time(),
        )
    except (OutcomeError, CalibrationError) as err:
        fail(str(err))

    doc = result.to_dict()
    if json_out is not None:
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
        if json_out == STDIO:
            sys.stdout.buffer.write(data)
        else:
            write_output(Path(json_out), data)
    if html_out is not None:
        from leadscore.report import calibration_html

        page = calibration_html(
            result.calibration,
            result.scores,
            result.labels,
            result.words(),
            {
                "as_of": doc["as_of"],
                "window": doc["window"],
                "score": score,
                "rules": rules,
                "events": ", ".join(paths),
            },
        )
        write_output(Path(html_out), page.encode())

    console = new_console(stderr=json_out == STDIO)
    cal = result.calibration
    pop = result.population
    intake = pop.intake
    rejected = sum(intake.rejected.values())
    console.print(
        f"as of {doc['as_of']}, window {format_duration(pop.window)}, score {score}: "
        f"{cal.population:,} contacts in play ({pop.excluded:,} had already converted), "
        f"{cal.converted:,} converted, base rate {cal.base_rate:.2%}, AUC {cal.auc:.3f}"
    )
    console.print(
        f"{intake.lines:,} lines read, {intake.accepted:,} accepted, {rejected:,} rejected"
        + (
            " (" + ", ".join(f"{k} {v:,}" for k, v in sorted(intake.rejected.items())) + ")"
            if rejected
            else ""
        )
        + f", {intake.duplicates:,} duplicates"
    )
    if intake.last_ts is not None and pop.as_of + pop.window > intake.last_ts:
        console.print(
            f"note: the window ends after the last event ({format_ts(intake.last_ts)}), so "
            "conversions after that are missing; an earlier --as-of gives a full window"
        )
    table = Table(
        title=f"Conversion by {score} score",
        caption="each band runs from its lower edge up to, not including, the next; "
        "the last includes its top",
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for name in ("from", "to", "contacts", "converted", "rate", "lift"):
        table.add_column(name, justify="right")
    for b in cal.bands:
        lift = b.rate / cal.base_rate if cal.base_rate else 0.0
        table.add_row(
            fmt(b.lo),
            fmt(b.hi),
            f"{b.contacts:,}",
            f"{b.converted:,}",
            f"{b.rate:.2%}",
            f"{lift:.2f}x",
        )
    console.print(table)
    rec = cal.recommended
    console.print(
        f"recommended threshold: {score} >= {fmt(rec.threshold)} ({cal.policy}): "
        f"sends {rec.leads:,} leads, precision {rec.precision:.1%}, recall {rec.recall:.1%}, "
        f"lift {rec.lift:.2f}x"
    )
    for line in result.words()[1:2]:
        console.print(line)
    for path in (json_out, html_out):
        if path is not None and path != STDIO:
            console.print(f"wrote {path}")


def write_output(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as err:
        fail(f"cannot write {path}: {err.strerror or err}; pick another path")
