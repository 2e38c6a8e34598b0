"""The ``leadscore`` typer app and the helpers every command shares.

One module per command or family of commands lives beside this one (``run.py``,
``explain.py``, ``redis.py`` for ``send`` and ``show``, ...). A command module parses options,
calls the library function that does the work (in ``leadscore/``, ``flows/`` or ``state/``,
where tests call it without a subprocess) and renders the result with the helpers below.

Adding a command is one new module plus one line:

1. write ``leadscore/cli/<name>.py`` with a function decorated ``@app.command()`` (``app``
   imported from here); import heavy libraries (Bytewax, Redis, Starlette) inside the
   function so that ``leadscore --help`` and the other commands stay fast;
2. add ``"<name>": ("<command>", ...)`` to ``COMMANDS`` below, where it should appear in
   ``leadscore --help``.

A command's module is imported when that command runs (``_Commands``), all of them only to
list them (``leadscore --help``) or for a name that is none of them: ``leadscore run`` does
not pay for reading the other fourteen (and what they import) before it starts scoring. This
module imports no command module by name, so there is no import circle.

Expected failures (a bad rules file, a missing input) end with ``fail``: a short message on
stderr and a non-zero exit, never a traceback. The person reading it is fixing a file, not
debugging Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup
from typer.main import get_command_from_info, get_command_name

from leadscore.rules import Rules, RulesError, load_rules

if TYPE_CHECKING:
    from rich.progress import Progress

# The command modules, in the order `leadscore --help` lists them, and the commands each one
# registers (tests/test_cli_imports.py checks that they match).
COMMANDS: dict[str, tuple[str, ...]] = {
    "run": ("run",),
    "redis": ("send", "show"),
    "rules": ("rules",),
    "preview": ("preview",),
    "publish": ("publish",),
    "check": ("check",),
    "explain": ("explain",),
    "calibrate": ("calibrate",),
    "backtest": ("backtest",),
    "generate": ("generate",),
    "schema": ("schema",),
    "serve": ("serve",),
    "deliver": ("deliver",),
    "train": ("train",),
    "importer": ("import",),
}
_MODULE_OF = {command: module for module, names in COMMANDS.items() for command in names}


class _Commands(TyperGroup):
    """The root command: imports a command's module when that command is looked up, so a
    process pays only for the command it runs (the other modules, their imports, and typer
    reading their parameters: ~0.1 s of `leadscore run`, bench/README.md, `pgo6`)."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands:
            # an unknown name loads every module: typer's "did you mean" needs them all
            module = _MODULE_OF.get(cmd_name)
            self._load(COMMANDS if module is None else (module,))
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: Any) -> list[str]:
        self._load(COMMANDS)
        return [name for names in COMMANDS.values() for name in names if name in self.commands]

    def _load(self, modules: Iterable[str]) -> None:
        for module in modules:
            import_module(f"{__package__}.{module}")  # registers its commands on `app`
        for info in app.registered_commands:
            if (info.name or get_command_name(info.callback.__name__)) in self.commands:
                continue
            command = get_command_from_info(
                info,
                pretty_exceptions_short=app.pretty_exceptions_short,
                rich_markup_mode=app.rich_markup_mode,
            )
            if command.name:
                self.commands[command.name] = command


STDIO = "-"  # the path that means standard input or output

# The options every command that talks to a live deployment takes, declared once so that
# they read and behave the same everywhere (`redis_url: RedisUrl = DEFAULT_REDIS`).
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
RedisUrl = Annotated[
    str,
    typer.Option(
        "--redis",
        metavar="URL",
        envvar="LEADSCORE_REDIS_URL",
        help="Redis URL: redis://[:PASSWORD@]HOST:PORT/DB, rediss:// for TLS.",
    ),
]
Prefix = Annotated[
    str,
    typer.Option("--prefix", metavar="PREFIX", envvar="LEADSCORE_PREFIX", help="Redis key prefix."),
]
Cluster = Annotated[
    bool, typer.Option("--cluster", help="The URL names a node of a Redis Cluster.")
]
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

app = typer.Typer(
    name="leadscore",
    cls=_Commands,
    help="Real-time lead scoring: rules in YAML, every event scored and every point explained.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def main() -> None:
    """Console-script entry point (declared in pyproject.toml)."""
    app()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"leadscore {version('leadscore')}")
        except PackageNotFoundError:
            typer.echo("leadscore (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Real-time lead scoring: rules in YAML, every event scored and every point explained."""


# --------------------------------------------------------------------------- helpers


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr saying what happened and what to do, then exit non-zero."""
    typer.echo(f"leadscore: {message}", err=True)
    raise typer.Exit(code)


def load_rules_or_exit(path: str) -> Rules:
    """The compiled rules, or every problem on stderr (one per line) and exit 1."""
    try:
        return load_rules(path)
    except RulesError as err:
        for problem in err.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(1) from None


def new_console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) that leaves user data uncoloured."""
    # No highlighting: numbers and paths in user data should not change colour at random.
    return Console(stderr=stderr, highlight=False)


def bytes_bar(label: str, *, disable: bool = False) -> Progress:
    """A transient progress bar of input bytes on stderr (``run``, ``send``). rich.progress is
    imported only here, when a bar is made: a run without one does not pay for it."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn(label),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=new_console(stderr=True),
        transient=True,
        disable=disable,
    )


def duration(seconds: float) -> str:
    """Seconds back to the rules file's duration notation, e.g. 86400 -> 1d."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def num(value: float | None) -> str:
    """A score for a table: four significant digits, thousands separated."""
    return "" if value is None else f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def events_arg(events: list[str], extra: list[str]) -> list[str]:
    """``--events a b c`` as well as ``--events a --events b``; stdin at most once; a
    directory (an ``--archive``) stands for its JSONL files, oldest first."""
    from pathlib import Path

    from leadscore.inputs import expand_inputs

    paths = [*events, *extra]
    if paths.count(STDIO) > 1:
        fail("standard input (-) can be given only once in --events")
    for path in paths:
        if path != STDIO and Path(path).is_dir() and not expand_inputs([path]):
            fail(f"no .jsonl or .jsonl.gz files in the events directory {path}")
    return expand_inputs(paths)


def events_exist(paths: list[str]) -> None:
    """Exit with a message naming the first events file that does not exist."""
    from pathlib import Path

    for path in paths:
        if path != STDIO and not Path(path).is_file():
            fail(f"events file not found: {path}")


def redis_url_arg(url: str, option: str) -> str:
    """``url`` if it is a Redis URL, else exit saying what one looks like."""
    if not url.startswith(_REDIS_SCHEMES):
        fail(
            f"{option} takes a Redis URL such as redis://HOST:6379/0 (rediss:// for TLS, "
            f"redis://:PASSWORD@HOST:6379/0 with a password), got {url!r}"
        )
    return url


def require_redis(url: str, option: str) -> None:
    """Exit with one line within seconds when nothing answers at ``url``.

    Without it a Redis that is down costs the whole retry budget (meant for a Redis lost
    mid-run): half a minute of warnings before the same conclusion.
    """
    from state.redis_store import StoreUnreachable, check_reachable

    try:
        check_reachable(url)
    except StoreUnreachable as err:
        where = masked_url(url)
        if err.refused_credentials:
            fail(
                f"Redis at {where} refused the connection ({err.reason}): check the password "
                f"(and user) in {option}"
            )
        fail(
            f"cannot reach Redis at {where} ({err.reason}): check that Redis is running there "
            f"and that {option} names the right host and port"
        )


def masked_url(url: str) -> str:
    """The URL with its password replaced by ``***``, safe to print."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def time_arg(text: str | None, option: str) -> float | None:
    """A time option (``--as-of``): RFC 3339 with Z or an offset, a bare date (its 00:00
    UTC), epoch seconds, or ``now``."""
    if text is None:
        return None
    from leadscore.events import Reject, parse_ts

    value = text.strip()
    if len(value) == 10 and value[4] == "-" and value[7] == "-":
        value += "T00:00:00Z"
    if value.lower() == "now":
        import time

        return time.time()
    try:
        given: float | str = float(value)
    except ValueError:
        given = value
    ts = parse_ts(given, 0.0)
    if type(ts) is Reject:
        fail(f"{option} {text!r}: {ts.detail.replace(chr(39) + 'ts' + chr(39), 'the time')}")
    return ts  # type: ignore[return-value]


def seconds_arg(text: str, option: str) -> float:
    """A tolerance option (``--max-future``): a duration such as 5m, or seconds."""
    from leadscore.durations import parse_seconds

    try:
        return parse_seconds(text)
    except ValueError as err:
        fail(f"{option}: {err}")
