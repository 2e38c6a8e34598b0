"""``leadscore explain``: one contact's score, point by point (``leadscore.explain`` does the
replay and the explanation; this module renders them)."""

from __future__ import annotations

import sys
import time
from typing import Annotated

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
)
from leadscore.explain import Explanation, Replay, replay
from leadscore.explain import explain as explain_records
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
) -> None:
    """Explain one contact's score: every point with its rule, triggers, stages, decay.

    Replays the events through the engine (no Bytewax, no Redis) with the same rejections
    and end-of-input timers as `leadscore run`, so the final score matches its output.
    """
    paths = events_arg(events, ctx.args)
    events_exist(paths)
    compiled = load_rules_or_exit(rules)
    result = replay(compiled, [read_lines([path]) for path in paths], contact, time.time())
    if result.view is None:
        fail(
            f"no accepted events for contact {contact!r} in {', '.join(paths)} "
            f"({result.lines:,} lines read); check the id with: grep '\"{contact}\"' FILE"
        )
    story = explain_records(contact, result.records, result.view, compiled)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(story.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        return
    _render_explanation(new_console(), story, result)


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
    console.print(
        Text.assemble(
            ("contact ", "bold"),
            (story.contact, "bold cyan"),
            f": {result.events:,} events, duplicates dropped: {result.duplicates:,}",
        )
    )
    if story.points:
        table = _table(
            "Points", "at", "event", "rule", "group", "points", "score after",
            right=("points", "score after"),
        )  # fmt: skip
        for p in story.points:
            event = Text(p.action or "")
            if p.event_id:
                event.append(f"\n{p.event_id}", style="dim")
            rule = Text(p.rule, style="bold")
            if p.name:
                rule.append(f"\n{p.name}")
            if p.description:
                rule.append(f"\n{p.description}", style="dim")
            points = f"{p.applied:+.4g}"
            if p.capped:
                points += f"\n(capped from {p.delta:+g})"
            table.add_row(Text(p.at), event, rule, Text(p.group), points, num(p.score_after))
        console.print(table)
    if story.triggers:
        table = _table("Triggers fired", "at", "trigger", "score", "cause", right=("score",))
        for t in story.triggers:
            actions = ", ".join(f"{k} {v}" for a in t["actions"] or [] for k, v in a.items())
            cause = Text(t["cause"] or "")
            if actions:
                cause.append(f"\n-> {actions}", style="dim")
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
    ]
    console.print(Text("  ".join(f"{k}: {v}" for k, v in facts if v)))
