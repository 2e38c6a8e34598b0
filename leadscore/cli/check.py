"""``leadscore check``: validate a rules file and summarise what it scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from leadscore.cli.app import app, duration, new_console
from leadscore.rules import (
    REPEAT_COOLDOWN,
    REPEAT_EVERY,
    REPEAT_ONCE,
    REPEAT_WINDOW,
    ActionRule,
    Rules,
    RulesError,
    Trigger,
    load_rules,
)


@app.command()
def check(
    rules: Annotated[
        str, typer.Argument(metavar="RULES", help="The rules file (YAML) to validate.")
    ],
    allow_http: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-http",
            metavar="HOST",
            help="As `leadscore deliver --allow-http`: plain http to this host is fine.",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit 1 on warnings about the file too (for CI); warnings about this "
            "machine's environment (delivery secrets not set) never fail.",
        ),
    ] = False,
) -> None:
    """Validate a rules file: list every problem (exit 1) or summarise it (exit 0).

    Each problem line names the file, the rule, the field and what was expected, so an
    editor can fix them all in one pass. Warnings do not stop the file from loading: an `on:`
    action that is neither standard nor in `known_actions` (most likely a typo; with --strict,
    exit 1), and what would stop `leadscore deliver` here (a channel's variable not set,
    plain http).
    """
    try:
        compiled = load_rules(rules)
    except RulesError as err:
        for problem in err.problems:
            typer.echo(str(problem), err=True)
        n = len(err.problems)
        typer.echo(
            f"{rules}: {n} problem{'s' if n != 1 else ''}; fix them and check again", err=True
        )
        raise typer.Exit(1) from None
    warned = _delivery_warnings(compiled, allow_http or ())
    console = new_console()
    console.print(Text(compiled.summary()))
    if compiled.actions:
        table = Table(title="Actions", title_justify="left")
        for name in ("id", "name", "on", "points", "group", "repeat"):
            table.add_column(name, justify="right" if name == "points" else "left")
        for r in compiled.actions:
            table.add_row(
                Text(r.id),
                Text(r.name),
                Text(", ".join(r.on)),
                f"{r.points:+g}",
                Text(r.group),
                Text(_repeat_text(r)),
            )
        console.print(table)
    if compiled.fit:
        table = Table(title="Fit", title_justify="left")
        for name in ("id", "trait", "points", "group"):
            table.add_column(name, justify="right" if name == "points" else "left")
        for f in compiled.fit:
            table.add_row(Text(f.id), Text(f.trait), f"{f.points:+g}", Text(f.group))
        console.print(table)
    if compiled.triggers:
        table = Table(title="Triggers", title_justify="left")
        for name in ("id", "when", "actions"):
            table.add_column(name)
        for t in compiled.triggers:
            actions = ", ".join(f"{k} {v}" for a in t.actions for k, v in a.items())
            table.add_row(Text(t.id), Text(_trigger_text(t)), Text(actions))
        console.print(table)
    for warning in compiled.warnings:
        typer.echo(str(warning), err=True)
    n = warned + len(compiled.warnings)
    if n:
        typer.echo(f"{rules}: valid, {n} warning{'s' if n != 1 else ''}", err=True)
    if strict and compiled.warnings:
        raise typer.Exit(1)


def _repeat_text(r: ActionRule) -> str:
    """How often a rule awards, in the rules file's words: "cooldown 1d, from hit 3"."""
    parts = {
        REPEAT_EVERY: "every time",
        REPEAT_ONCE: "once",
        REPEAT_WINDOW: f"max {r.repeat_max} per {duration(r.repeat_per)}",
        REPEAT_COOLDOWN: f"cooldown {duration(r.cooldown)}",
    }
    text = [parts.get(r.repeat, "?")]
    if r.hits:
        text.append(f"from hit {r.hits}")
    if r.returns_within is not None:
        text.append(f"returns within {duration(r.returns_within)}")
    if r.returns_after is not None:
        text.append(f"returns after {duration(r.returns_after)}")
    return ", ".join(text)


def _trigger_text(t: Trigger) -> str:
    """When a trigger fires: "total >= 50, re-arm < 30"."""
    if t.below:
        text = f"{t.score} < {t.threshold:g}"
    else:
        text = f"{t.score} >= {t.threshold:g}"
        if t.rearm_below is not None:
            text += f", re-arm < {t.rearm_below:g}"
    if t.after:
        text += f", after {t.after}"
    return text


def _delivery_warnings(compiled: Rules, allow_http: Sequence[str]) -> int:
    """What `leadscore deliver` would refuse to start with, against this environment: warnings,
    since the machine running `check` need not hold production secrets. Returns how many."""
    import os

    from leadscore.channels import delivery_issues
    from leadscore.delivery import trigger_actions

    issues = delivery_issues(compiled.channels, trigger_actions(compiled), os.environ, allow_http)
    for issue in issues:
        typer.echo(f"{compiled.source}: warning: {issue.where}: {issue.message}", err=True)
    return len(issues)
