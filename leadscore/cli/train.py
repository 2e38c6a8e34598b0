"""`leadscore train`: learn a likelihood-to-convert model from a CRM export.

The work is :func:`leadscore.train.train_table` (scikit-learn, the ``train`` extra); this
module parses options and renders what it measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from leadscore.cli.app import app, events_arg, events_exist, fail, load_rules_or_exit, new_console


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


@app.command(context_settings={"allow_extra_args": True})
def train(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the model (JSON).")],
    table: Annotated[
        Path | None,
        typer.Option("--table", "-t", help="CSV export: one row per lead, with a header."),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option("--label", "-l", help="With --table: the column saying who converted."),
    ] = None,
    rules: Annotated[
        str | None,
        typer.Option("--rules", "-r", help="Train from event history: the rules file."),
    ] = None,
    events: Annotated[
        list[str] | None,
        typer.Option("--events", "-e", metavar="FILE", help="With --rules: event files."),
    ] = None,
    conversion: Annotated[
        list[str] | None,
        typer.Option("--conversion", metavar="ACTION", help="An action that is a conversion."),
    ] = None,
    outcomes: Annotated[
        str | None, typer.Option("--outcomes", metavar="CSV", help="contact,converted_at CSV.")
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", metavar="TIME", help="Snapshot time; default: last event - window."
        ),
    ] = None,
    window: Annotated[
        str, typer.Option("--window", metavar="DURATION", help="How long a conversion counts.")
    ] = "30d",
    id_column: Annotated[
        str | None, typer.Option("--id", help="The lead id column (never a feature).")
    ] = None,
    exclude: Annotated[
        str | None,
        typer.Option("--exclude", "-x", help="Columns not to learn from, comma-separated."),
    ] = None,
    keep: Annotated[
        str | None,
        typer.Option(
            "--keep",
            help="Columns to use even though the leakage guard refuses them (known before "
            "the outcome), comma-separated.",
        ),
    ] = None,
    min_class: Annotated[
        int, typer.Option(help="Fewest converters and non-converters to train on.")
    ] = 100,
    leak_auc: Annotated[
        float, typer.Option(help="A column whose AUC alone reaches this is refused.")
    ] = 0.9,
    holdout: Annotated[float, typer.Option(help="Share of rows held out to measure.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the hold-out split and folds.")] = 0,
    max_counters: Annotated[
        int,
        typer.Option(
            help="With --events: most counts needing a new counter in each live state (hits "
            "of a rule without a tracker, events of an action), best alone first; -1: all.",
        ),
    ] = 4,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a report page (HTML).")
    ] = None,
) -> None:
    """Train a calibrated likelihood-to-convert model, honestly measured.

    From a CRM export (--table, --label) or from event history (--rules, --events, and
    --conversion or --outcomes): contacts in play at --as-of, labelled by a conversion within
    --window after, as calibrate does. Table columns become traits: numbers stay numbers,
    the rest are categories; blanks and placeholders such as "Select" are missing. A column
    that alone predicts the label almost perfectly (AUC >= --leak-auc) is named and refused
    unless --keep says it is known before the outcome. A stratified --holdout share is never
    seen while fitting: the AUC, Brier score, log loss, top-decile lift and calibration table
    are measured on it and written into the model. Use the model with
    `predict: {model: FILE, as: likelihood}` in the rules.
    """
    from leadscore.model import save_model
    from leadscore.model_report import model_html
    from leadscore.tables import TableError
    from leadscore.train import TrainOptions, train_events, train_table

    if (table is None) == (rules is None):
        fail("give --table FILE --label COLUMN, or --rules FILE --events FILE... (not both)")
    if table is not None and label is None:
        fail("--table needs --label: the column that says who converted")

    if not 0.05 <= holdout <= 0.5:
        fail(f"--holdout must be between 0.05 and 0.5, got {holdout}")
    if not 0.5 < leak_auc <= 1.0:
        fail(f"--leak-auc must be above 0.5 and at most 1, got {leak_auc}")
    if min_class < 1:
        fail(f"--min-class must be at least 1, got {min_class}")
    if max_counters < -1:
        fail(f"--max-counters must be -1 (no limit) or more, got {max_counters}")
    options = TrainOptions(
        label=label or "converted",
        id=id_column,
        exclude=_names(exclude),
        keep=_names(keep),
        min_class=min_class,
        leak_auc=leak_auc,
        holdout=holdout,
        seed=seed,
        max_counters=max_counters,
    )
    console = new_console()
    try:
        if table is not None:
            with console.status(f"training on {table}"):
                result = train_table(table, options)
        else:
            assert rules is not None
            result = _train_history(
                rules,
                events_arg(events or [], ctx.args),
                conversion,
                outcomes,
                as_of,
                window,
                options,
                train_events,
            )
    except TableError as err:
        fail(str(err))
    try:
        save_model(result.doc, out)
        if html is not None:
            html.write_text(model_html(result.doc), encoding="utf-8")
    except OSError as err:
        fail(f"cannot write {err.filename}: {err.strerror}")
    doc = result.doc
    training = doc["training"]
    q = doc["quality"]["holdout"]
    for column, auc in result.leaky:
        console.print(
            f"[bold yellow]refused[/] {column!r}: alone it predicts {label!r} with AUC {auc} "
            "(filled in after the outcome?); --keep it if it is known before"
        )
    for column, auc in result.kept_leaky:
        console.print(f"[yellow]kept[/] {column!r} despite AUC {auc} alone (--keep)")
    for column, why in result.dropped:
        console.print(f"not used: {column!r} ({why})")
    console.print(
        f"{training['rows']:,} rows ({training['converters']:,} converters), "
        f"{len(doc['features'])} features; held out {training['holdout_rows']:,} rows:"
    )
    console.print(
        f"  AUC {q['auc']}  Brier {q['brier']}  log loss {q['log_loss']}  "
        f"top-decile lift {q['lift_top_decile']}x  "
        f"(cross-validated AUC {doc['quality']['cross_validated_auc']})"
    )
    console.print("  decile  predicted  observed")
    for d in q["calibration"]:
        console.print(f"  {d['decile']:>6}  {d['predicted']:>9.1%}  {d['observed']:>8.1%}")
    top = ", ".join(f["feature"] for f in training["importance"][:5])
    console.print(f"  moves the likelihood most: {top}")
    console.print(f"model written to {out}" + (f", report to {html}" if html else ""))


def _train_history(
    rules: str,
    paths: list[str],
    conversion: list[str] | None,
    outcomes: str | None,
    as_of: str | None,
    window: str,
    options: Any,
    train_events: Any,
) -> Any:
    """`train --rules`: the options of `calibrate`, checked the same way."""
    import time

    from leadscore.durations import parse_duration
    from leadscore.events import parse_ts
    from leadscore.outcomes import OutcomeError, conversions

    if not paths:
        fail("--rules needs --events: the event history to learn from")
    events_exist(paths)
    compiled = load_rules_or_exit(rules)
    try:
        seconds = parse_duration(window)
    except ValueError as err:
        fail(f"--window: {err}")
    at = None
    if as_of is not None:
        text = as_of.strip()
        parsed = parse_ts(float(text) if text.replace(".", "", 1).isdigit() else text, 0.0)
        if type(parsed) is not float:
            fail(f"--as-of takes an RFC 3339 time or epoch seconds, got {as_of!r}")
        at = parsed
    try:
        wanted = conversions(conversion or [], outcomes, time.time())
    except OutcomeError as err:
        fail(str(err))
    return train_events(compiled, paths, wanted, seconds, options, at, time.time())
