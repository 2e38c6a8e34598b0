"""``leadscore backtest``: what a rules change would have done to history, before publishing.

``leadscore.backtest`` replays and compares; this module checks options and renders tables,
the ``--json`` document and the ``--html`` report. Nothing is delivered, no Redis touched.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich import box
from rich.console import Console
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
from leadscore.cli.calibrate import (
    AS_OF_HELP,
    CONVERSION_HELP,
    EVENTS_HELP,
    OUTCOMES_HELP,
    WINDOW_HELP,
    write_output,
)

TOP_MOVERS = 10


@app.command(context_settings={"allow_extra_args": True})
def backtest(
    ctx: typer.Context,
    rules: Annotated[
        str,
        typer.Option("--rules", "-r", metavar="NEW", help="The candidate rules file (YAML)."),
    ],
    events: Annotated[list[str], typer.Option("--events", "-e", metavar="FILE", help=EVENTS_HELP)],
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", "-b", metavar="OLD", help="The rules in use now, to compare."),
    ] = None,
    conversion: Annotated[
        list[str] | None, typer.Option("--conversion", metavar="ACTION", help=CONVERSION_HELP)
    ] = None,
    outcomes: Annotated[
        str | None, typer.Option("--outcomes", metavar="CSV", help=OUTCOMES_HELP)
    ] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", metavar="TIME", help=AS_OF_HELP)] = None,
    window: Annotated[str, typer.Option("--window", metavar="DURATION", help=WINDOW_HELP)] = "30d",
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            "-p",
            min=1,
            metavar="P",
            help="Replay the sides in P processes. Default: one per side when cores allow.",
        ),
    ] = None,
    json_out: Annotated[
        str | None,
        typer.Option("--json", metavar="OUT", help="Write the comparison as JSON (- is stdout)."),
    ] = None,
    html_out: Annotated[
        str | None,
        typer.Option("--html", metavar="REPORT", help="Write a self-contained HTML report."),
    ] = None,
) -> None:
    """Replay history under new rules (and the current ones) and compare; nothing delivered.

    Shows trigger firings per trigger, contacts per stage, grade and segment, score
    quantiles, and the contacts whose triggers change with the rules that made the
    difference. With --conversion or --outcomes, also each side's AUC and the precision and
    recall of each at_least trigger at --as-of.
    """
    from leadscore.backtest import backtest as run_backtest
    from leadscore.backtest import describe
    from leadscore.calibrate import parse_as_of
    from leadscore.durations import parse_duration
    from leadscore.outcomes import OutcomeError, conversions

    paths = events_arg(events, ctx.args)
    events_exist(paths)
    if STDIO in paths:
        fail("backtest reads the events once per rules file: give files, not standard input (-)")
    load_rules_or_exit(rules)
    if baseline is not None:
        load_rules_or_exit(baseline)
    try:
        seconds = parse_duration(window)
    except ValueError as err:
        fail(f"--window: {err}")
    try:
        wanted = (
            conversions(conversion or [], outcomes, time.time()) if conversion or outcomes else None
        )
        if wanted is None and as_of is not None:
            fail("--as-of needs outcomes: add --conversion ACTION or --outcomes CSV")
        at = parse_as_of(as_of) if as_of is not None else None
        started = time.perf_counter()
        result = run_backtest(rules, paths, baseline, wanted, at, seconds, time.time(), processes)
        elapsed = time.perf_counter() - started
    except OutcomeError as err:
        fail(str(err))

    words = describe(result)
    if json_out is not None:
        data = orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n"
        if json_out == STDIO:
            sys.stdout.buffer.write(data)
        else:
            write_output(Path(json_out), data)
    if html_out is not None:
        from leadscore.report import backtest_html

        meta = {"events": ", ".join(paths), "words": words, "as_of": result.get("as_of")}
        meta["window"] = window
        write_output(Path(html_out), backtest_html(result, meta).encode())

    console = new_console(stderr=json_out == STDIO)
    _render(console, result)
    for line in words:
        console.print(line)
    lines = result["candidate"]["intake"]["lines"]
    console.print(f"{lines:,} lines replayed per rules file in {elapsed:.1f}s; nothing delivered")
    for path in (json_out, html_out):
        if path is not None and path != STDIO:
            console.print(f"wrote {path}")


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    return table


def _render(console: Console, result: dict[str, Any]) -> None:
    cand = result["candidate"]
    base = result.get("baseline")
    sides = [("baseline", base), ("candidate", cand)] if base else [("candidate", cand)]
    changed = result.get("changed", [])
    for side, data in sides:
        console.print(f"{side}: {data['rules']}: {data['contacts']:,} contacts")

    cols = [s for s, _ in sides]
    table = _table(
        "Trigger firings",
        "trigger",
        *cols,
        *(["change", "newly reach", "no longer"] if base else []),
    )
    for t in sorted({t for _, d in sides for t in d["triggers"]}):
        row = [t] + [f"{d['triggers'].get(t, 0):,}" for _, d in sides]
        if base:
            diff = cand["triggers"].get(t, 0) - base["triggers"].get(t, 0)
            row += [
                f"{diff:+,}",
                f"{sum(1 for c in changed if t in c['newly_reach']):,}",
                f"{sum(1 for c in changed if t in c['no_longer_reach']):,}",
            ]
        table.add_row(*row)
    console.print(table)

    table = _table("Total score quantiles at the end", "quantile", *cols)
    for q in cand["score_quantiles"]:
        table.add_row(q, *(f"{d['score_quantiles'].get(q, 0):,.2f}" for _, d in sides))
    console.print(table)

    for key, label in (("stages", "stage"), ("grades", "grade"), ("segments", "segment")):
        keys = sorted({k for _, d in sides for k in d.get(key, {})})
        if not keys:
            continue
        table = _table(f"Contacts per {label}", label, *cols)
        for k in keys:
            table.add_row(k, *(f"{d[key].get(k, 0):,}" for _, d in sides))
        console.print(table)

    if "auc" in cand:
        table = _table(f"Against conversions at {result['as_of']}", "figure", *cols)
        table.add_row("AUC (total)", *(str(d["auc"]) for _, d in sides))
        for t in cand.get("at_least", {}):
            for name, fmt in (("precision", "{:.1%}"), ("recall", "{:.1%}"), ("leads", "{:,}")):
                table.add_row(
                    f"{t} {name}",
                    *(
                        fmt.format(d["at_least"][t][name]) if t in d.get("at_least", {}) else "-"
                        for _, d in sides
                    ),
                )
        console.print(table)

    if base:
        table = _table(
            f"Contacts whose triggers change: {len(changed):,} (top {TOP_MOVERS} movers)",
            "contact",
            "newly reach",
            "no longer",
            "total",
            "why",
        )
        for c in changed[:TOP_MOVERS]:
            table.add_row(
                c["contact"],
                ", ".join(c["newly_reach"]),
                ", ".join(c["no_longer_reach"]),
                f"{c['baseline_total']:,.2f} -> {c['candidate_total']:,.2f}",
                "; ".join(c["why"]),
            )
        console.print(table)
