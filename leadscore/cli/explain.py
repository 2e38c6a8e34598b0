"""``leadscore explain``: one contact's score, point by point (``leadscore.explain`` does the
replay and the explanation; this module renders them)."""

from __future__ import annotations

import io
import sys
import time
from typing import Annotated, Any

import orjson
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from leadscore.cli.app import (
    app,
    events_arg,
    events_exist,
    fail,
    load_rules_or_exit,
    new_console,
    num,
    seconds_arg,
    time_arg,
)
from leadscore.explain import AsOfTooEarly, Explanation, Replay, replay
from leadscore.explain import explain as explain_records
from leadscore.identity import merge_groups, merge_lines
from leadscore.inputs import read_lines


@app.command(context_settings={"allow_extra_args": True})
def explain(
    ctx: typer.Context,
    rules: Annotated[
        str, typer.Option("--rules", "-r", metavar="RULES", help="The rules file (YAML).")
    ],
    events: Annotated[
        list[str],
        typer.Option(
            "--events",
            "-e",
            metavar="FILE",
            help="Events files (JSON lines, .gz too), read in the order given; - reads stdin.",
        ),
    ],
    contact: Annotated[
        str, typer.Option("--contact", "-c", metavar="ID", help="The contact id to explain.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON.")] = False,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            metavar="TIME",
            help="Final scores as of TIME (RFC 3339 with Z or an offset, epoch seconds, or "
            "now), at or after the replay's clock (its latest accepted event), as `run --as-of`.",
        ),
    ] = None,
    max_future: Annotated[
        str,
        typer.Option(
            "--max-future",
            metavar="DURATION",
            envvar="LEADSCORE_MAX_FUTURE",
            help="Reject events dated more than this past the wall clock, as `run` does.",
        ),
    ] = "5m",
) -> None:
    """Explain one contact's score: every event with what it earned or why it earned
    nothing, every point with its rule, triggers, stages, decay.

    Replays the events through the engine (no Bytewax, no Redis) with the same rejections
    and end-of-input timers as `leadscore run`, so the final score matches its output: as of
    the replay's clock, or --as-of. An event that earned nothing says why: no rule scores its
    action, a `where` condition did not match, once-ever already awarded, cooldown, window
    full, hits not reached, returns_within/returns_after not met, rule inactive, cap reached,
    duplicate id.
    """
    paths = events_arg(events, ctx.args)
    events_exist(paths)
    compiled = load_rules_or_exit(rules)
    tolerance = seconds_arg(max_future, "--max-future")
    at = time_arg(as_of, "--as-of")
    parts = [read_lines([path]) for path in paths]
    # Identifies with merge join ids as `run` does: a first pass over the files finds which.
    groups = None if "-" in paths else merge_groups(merge_lines(paths))
    try:
        result = replay(
            compiled, parts, contact, time.time(), max_future=tolerance, as_of=at, groups=groups
        )
    except AsOfTooEarly as err:
        fail(str(err))
    if result.view is None:
        fail(
            f"no accepted events for contact {contact!r} in {', '.join(paths)} "
            f"({result.lines:,} lines read); check the id with: grep '\"{contact}\"' FILE"
        )
    story = explain_records(
        result.contact, result.records, result.view, compiled, result.events_seen
    )
    if as_json:
        data = story.to_dict()
        if result.likelihood is not None:
            data["likelihood_factors"] = result.likelihood
        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        return
    console = new_console()
    if console.is_terminal:
        _render_explanation(console, story, result)
        if result.likelihood is not None and compiled.predict is not None:
            _render_likelihood(console, compiled.predict.name, result.likelihood)
        return
    # Piped: one table row per line, never wrapped mid-word (grep, less -S, files), and no
    # padding after the last column.
    buffer = io.StringIO()
    wide = Console(file=buffer, highlight=False, width=1 << 16)
    _render_explanation(wide, story, result)
    if result.likelihood is not None and compiled.predict is not None:
        _render_likelihood(wide, compiled.predict.name, result.likelihood)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


def _table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    """A compact table; time columns never wrap so a timestamp is never cut."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in columns:
        table.add_column(
            name,
            justify="right" if name in right else "left",
            no_wrap=name == "at",
            min_width=24 if name == "at" else None,
            overflow="fold",
        )
    return table


def _render_explanation(console: Console, story: Explanation, result: Replay) -> None:
    final = story.final or {}
    # On a terminal a cell's parts go on lines of their own; piped, a row stays on one line.
    nl = "\n" if console.is_terminal else "  "
    console.print(
        Text.assemble(
            ("contact ", "bold"),
            (story.contact, "bold cyan"),
            f": {result.events:,} events, duplicates dropped: {result.duplicates:,}",
        )
    )
    if story.merges:
        table = _table("Merged in (their points are listed as earned)", "at", "id", "brought")
        for m in story.merges:
            brought = ", ".join(f"{g} {v:+.4g}" for g, v in m["points"].items()) or "nothing"
            table.add_row(Text(m["at"]), Text(m["from"]), Text(brought))
        console.print(table)
    if story.events:
        header = "rules, or why no points"
        table = _table("Events", "at", "event", "points", header, right=("points",))
        for e in story.events:
            event = Text(e.action)
            if e.contact:
                event.append(f"{nl}as {e.contact}", style="magenta")
            if e.event_id:
                event.append(f"{nl}{e.event_id}", style="dim")
            earned = f"{e.earned:+.4g}" if e.rules else ""
            why = Text(nl.join(r.text for r in e.reasons), style="yellow" if e.reasons else "")
            if e.rules:
                why = Text(", ".join(e.rules), style="dim")
            table.add_row(Text(e.at), event, earned, why)
        console.print(table)
    if story.points:
        table = _table(
            "Points", "at", "event", "rule", "group", "points", "score after",
            right=("points", "score after"),
        )  # fmt: skip
        for p in story.points:
            event = Text(p.action or "")
            if p.earned_as:  # earned before a merge, under another id
                event.append(f"{nl}as {p.earned_as}", style="magenta")
            if p.event_id:
                event.append(f"{nl}{p.event_id}", style="dim")
            rule = Text(p.rule, style="bold")
            if p.name:
                rule.append(f"{nl}{p.name}")
            if p.description:
                rule.append(f"{nl}{p.description}", style="dim")
            points = f"{p.applied:+.4g}"
            if p.capped:
                points += f"{nl}(capped from {p.delta:+g})"
            table.add_row(Text(p.at), event, rule, Text(p.group), points, num(p.score_after))
        console.print(table)
    if story.triggers:
        table = _table("Triggers fired", "at", "trigger", "score", "cause", right=("score",))
        for t in story.triggers:
            actions = ", ".join(f"{k} {v}" for a in t["actions"] or [] for k, v in a.items())
            cause = Text(t["cause"] or "")
            if actions:
                cause.append(f"{nl}-> {actions}", style="dim")
            table.add_row(Text(t["at"]), Text(t["trigger"]), num(t["score"]), cause)
        console.print(table)
    moves = [
        *(
            (s["at"], f"stage {s['previous'] or '(none)'} -> {s['stage']}", s["cause"])
            for s in story.stages
        ),
        *(
            (s["at"], f"segment {'+' if s['added'] else '-'}{s['segment']}", s["cause"])
            for s in story.segments
        ),
        *((s["at"], f"tag {'+' if s['added'] else '-'}{s['tag']}", s["cause"]) for s in story.tags),
    ]
    if moves:
        table = _table("Stage, segment and tag changes", "at", "change", "cause")
        for at, change, cause in sorted(moves, key=lambda m: m[0]):
            table.add_row(Text(at), Text(change), Text(cause or ""))
        console.print(table)
    table = _table(
        "Final score", "score", "value", "from rules", "decay",
        right=("value", "from rules", "decay"),
    )  # fmt: skip
    decay = story.decay or {}
    for group, value in (final.get("scores") or {}).items():
        table.add_row(
            Text(group),
            num(value),
            num(story.applied.get(group, 0.0)),
            num(decay.get(group, 0.0)),
        )
    table.add_row(
        Text("total", style="bold"),
        num(final.get("total")),
        num(story.applied_total),
        num(story.decay_total),
    )
    console.print(table)
    facts = [
        ("normalized", num(final.get("normalized"))),
        ("grade", final.get("grade") or ""),
        ("stage", final.get("stage") or ""),
        ("segments", ", ".join(final.get("segments") or [])),
        ("tags", ", ".join(final.get("tags") or [])),
        ("updated at", final.get("updated_at") or ""),
        ("as of", final.get("as_of") or ""),
    ]
    console.print(Text("  ".join(f"{k}: {v}" for k, v in facts if v)))


def _render_likelihood(console: Console, name: str, factors: dict[str, Any]) -> None:
    """The model's likelihood and the features raising and lowering it most."""
    table = _table(
        f"{name} {factors['likelihood']:g}%: top factors (contributions to the logit "
        f"{factors['logit']:+.3f}, from a base of {factors['base']:+.3f})",
        "feature", "value", "contribution",
        right=("contribution",),
    )  # fmt: skip
    for f in [*factors["raising"], *factors["lowering"]]:
        value = "(missing)" if f["value"] is None else str(f["value"])
        table.add_row(Text(f["feature"]), Text(value), f"{f['contribution']:+.3f}")
    console.print(table)
