"""``leadscore run``: score events files with the Bytewax flow, in one process or several,
or live from Redis (``--source``).

The work is in ``flows.runner`` (running, the processes, the report's data); this module
checks the options, shows progress and renders the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from leadscore.cli.app import (
    STDIO,
    app,
    bytes_bar,
    events_arg,
    fail,
    load_rules_or_exit,
    masked_url,
    new_console,
    num,
    redis_url_arg,
    require_redis,
    seconds_arg,
    time_arg,
)
from leadscore.inputs import input_size

if TYPE_CHECKING:
    from flows.config import FlowConfig
    from flows.runner import FileRunReport

_LIVE = "Live from Redis (--source)"  # the help panel of `run`'s live options


@app.command(context_settings={"allow_extra_args": True})
def run(
    ctx: typer.Context,
    rules: Annotated[
        str, typer.Option("--rules", "-r", metavar="RULES", help="The rules file (YAML).")
    ],
    events: Annotated[
        list[str] | None,
        typer.Option(
            "--events",
            "-e",
            metavar="FILE",
            help="Events files (JSON lines, .gz too); - reads standard input. "
            "Give several after one --events or repeat the option.",
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Output directory; - writes every output to standard output. [default: out]",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", "-w", min=1, metavar="N", help="Bytewax worker threads per process."
        ),
    ] = 1,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            "-p",
            min=1,
            metavar="P",
            help="Processes on this machine, joined into one Bytewax cluster. Threads share "
            "one core (Python's GIL); processes use several. Live runs (--source) too: one "
            "cluster, supervised (one process dying stops the others).",
        ),
    ] = 1,
    shards: Annotated[
        int,
        typer.Option(
            "--shards",
            min=1,
            metavar="S",
            help="Fixed state shards; results do not depend on --workers.",
        ),
    ] = 64,
    top: Annotated[
        int, typer.Option("--top", min=0, metavar="N", help="Leads to list in the report.")
    ] = 10,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            metavar="TIME",
            help="Bring every contact's scores to TIME (RFC 3339 with Z or an offset, epoch "
            "seconds, or now) instead of the run's clock (its latest accepted event). Must "
            "be at or after the clock. Reads scores there; fires nothing. File runs only.",
        ),
    ] = None,
    max_future: Annotated[
        str,
        typer.Option(
            "--max-future",
            metavar="DURATION",
            envvar="LEADSCORE_MAX_FUTURE",
            help="Reject events dated more than this past the wall clock (bad_ts: in the "
            "future), so no sender's clock moves the run's.",
        ),
    ] = "5m",
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar on stderr; default: when stderr is a terminal and no input is -.",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            metavar="URL",
            help="Score live from Redis instead of files: redis://[:PASSWORD@]HOST:PORT/DB "
            "(rediss:// for TLS). Runs until SIGTERM or Ctrl-C, which checkpoint what was "
            "read and exit 0.",
            rich_help_panel=_LIVE,
        ),
    ] = None,
    partitions: Annotated[
        int,
        typer.Option(
            "--partitions",
            min=1,
            metavar="P",
            help="Input streams; fixed for the life of the data (checked against {prefix}:meta).",
            rich_help_panel=_LIVE,
        ),
    ] = 16,
    prefix: Annotated[
        str,
        typer.Option(
            "--prefix",
            metavar="PREFIX",
            envvar="LEADSCORE_PREFIX",
            help="Redis key prefix.",
            rich_help_panel=_LIVE,
        ),
    ] = "ls",
    flush_events: Annotated[
        int,
        typer.Option(
            "--flush-events",
            min=1,
            metavar="N",
            help="Checkpoint a partition once it has applied N events...",
            rich_help_panel=_LIVE,
        ),
    ] = 2000,
    flush_ms: Annotated[
        int,
        typer.Option(
            "--flush-ms",
            min=0,
            metavar="MS",
            help="...or MS milliseconds after its first uncommitted event: the most a score "
            "or trigger waits to be visible.",
            rich_help_panel=_LIVE,
        ),
    ] = 2,
    max_contacts: Annotated[
        int,
        typer.Option(
            "--max-contacts",
            min=1,
            metavar="N",
            help="Contacts kept in memory per partition; others are loaded from Redis when "
            "they return.",
            rich_help_panel=_LIVE,
        ),
    ] = 100_000,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster", help="The URL names a node of a Redis Cluster.", rich_help_panel=_LIVE
        ),
    ] = False,
    drain: Annotated[
        bool,
        typer.Option(
            "--drain",
            help="Stop once every stream is read to the end (catch-up runs, batch jobs).",
            rich_help_panel=_LIVE,
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            metavar="PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics.",
            rich_help_panel=_LIVE,
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host",
            metavar="ADDR",
            help="Address of the metrics endpoint; 0.0.0.0: every interface (containers).",
            rich_help_panel=_LIVE,
        ),
    ] = "127.0.0.1",
    retain: Annotated[
        str,
        typer.Option(
            "--retain",
            metavar="DURATION",
            envvar="LEADSCORE_RETAIN",
            help="Checkpointed input kept in the streams for replays (12h, 7d, ...; 0: none); "
            "older entries are trimmed.",
            rich_help_panel=_LIVE,
        ),
    ] = "1d",
    retain_entries: Annotated[
        int,
        typer.Option(
            "--retain-entries",
            min=0,
            metavar="N",
            envvar="LEADSCORE_RETAIN_ENTRIES",
            help="Also keep the N newest checkpointed entries of each input stream.",
            rich_help_panel=_LIVE,
        ),
    ] = 0,
    standby: Annotated[
        bool,
        typer.Option(
            "--standby/--no-standby",
            envvar="LEADSCORE_LEASE_WAIT",
            help="While another flow holds this deployment's lease: wait and take over when "
            "it is released or lapses (default), or refuse to start.",
            rich_help_panel=_LIVE,
        ),
    ] = True,
    lease_ttl: Annotated[
        float,
        typer.Option(
            "--lease-ttl",
            min=0.5,
            metavar="SECONDS",
            envvar="LEADSCORE_LEASE_TTL",
            help="How long the lease outlives a flow that stopped renewing it (a crash).",
            rich_help_panel=_LIVE,
        ),
    ] = 10.0,
    publish: Annotated[
        bool,
        typer.Option(
            "--publish",
            envvar="LEADSCORE_PUBLISH",
            help="Record these rules as v1 of a deployment that has state but no rules "
            "recorded (it ran before versions). Never replaces published rules: change "
            "them with `leadscore publish`.",
            rich_help_panel=_LIVE,
        ),
    ] = False,
    archive: Annotated[
        str | None,
        typer.Option(
            "--archive",
            metavar="DIR",
            envvar="LEADSCORE_ARCHIVE",
            help="Also append accepted input to DIR/YYYY-MM-DD.jsonl.gz at every checkpoint: "
            "history beyond --retain for run, backtest, calibrate and publish (--events DIR).",
            rich_help_panel=_LIVE,
        ),
    ] = None,
) -> None:
    """Score events files with the Bytewax flow and print a summary, or score live from Redis
    with --source.

    Writes contacts.jsonl, triggers.jsonl, changes.jsonl, dead_letter.jsonl and summary.json
    to --out, all five every run, empty ones included, so a rerun leaves nothing stale.
    Bad lines go to dead_letter.jsonl with their position and reason; they never
    stop the run.

    With --source, events come from the Redis streams that `leadscore send` and `leadscore
    serve` fill, and every result goes to Redis in one transaction per partition batch
    (states, read models for `leadscore show` and the service, triggers, changes, dead
    letters, acknowledgements): a crash or kill loses nothing and repeats nothing; the next
    run continues where the last checkpoint left off. See docs/redis.md.
    """
    from flows.config import FlowConfig

    tolerance = seconds_arg(max_future, "--max-future")
    if source is not None:
        if as_of is not None:
            fail("--as-of is for file runs: live reads are as of the moment they are made")
        if events or ctx.args:
            fail("--events and --source exclude each other: score files or a Redis source")
        if out is not None:
            fail(
                "--out is for file runs: a live run's results are in Redis (read models, "
                "triggers, changes and dead-letter streams; see docs/redis.md)"
            )
        live = FlowConfig(
            rules=rules,
            source="redis",
            redis_url=source,
            partitions=partitions,
            prefix=prefix,
            flush_events=flush_events,
            flush_ms=flush_ms,
            max_contacts=max_contacts,
            tail=not drain,
            cluster=cluster,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            retain_seconds=_retention(retain),
            retain_entries=retain_entries,
            lease_wait=standby,
            lease_ttl=lease_ttl,
            max_future=tolerance,
            publish=publish,
            archive=archive,
        )
        if processes > 1:
            _run_live_processes(live, processes, workers)
        else:
            _run_live(live, workers)
        return
    if not events:
        fail(
            "give events files with --events FILE (- for standard input), or a Redis URL "
            "with --source redis://HOST:PORT/DB to score live"
        )
    out = out or "out"
    paths = events_arg(events, ctx.args)
    config = FlowConfig(
        rules=rules,
        events=paths,
        out=out,
        shards=shards,
        max_future=tolerance,
        as_of=time_arg(as_of, "--as-of"),
    )
    show = new_console(stderr=True).is_terminal if progress is None else progress
    show = show and STDIO not in paths
    _run_files(config, workers, processes, top, show)


def _run_files(config: FlowConfig, workers: int, processes: int, top: int, show: bool) -> None:
    """``leadscore run --events``: score the files, then the report (on stderr with --out -)."""
    from flows.runner import Interrupted, PeerFailed, RunFailed, UnreadableInput, run_files

    out = config.out or "out"
    compiled = load_rules_or_exit(config.rules)
    if out != STDIO and Path(out).exists() and not Path(out).is_dir():
        fail(f"--out {out} is a file; give a directory (created if missing) or - for stdout")
    if processes > 1 and (STDIO in config.events or out == STDIO):
        fail(
            "--processes needs events files and an --out directory: standard input and "
            "output belong to one process"
        )
    _engine_notice()
    try:
        with _progress(config.events, show, processes, workers) as on_bytes:
            report = run_files(
                config, compiled, workers=workers, processes=processes, top=top, on_bytes=on_bytes
            )
    except FileNotFoundError as err:
        fail(str(err))
    except (ValueError, OSError) as err:
        fail(f"cannot start: {err}")
    except UnreadableInput as err:
        fail(str(err))
    except Interrupted:
        fail(f"interrupted; the outputs in {out} are incomplete", 130)
    except RunFailed as err:
        fail(f"the run failed: {err.cause}")
    except PeerFailed as err:
        fail(f"{err}{'' if err.own else '; rerun with --processes 1 to see why'}")
    _report(new_console(stderr=out == STDIO), report, out)
    refused = report.summary.get("as_of_refused")
    if refused is not None:
        fail(
            f"--as-of {refused} is before the run's clock {report.summary.get('as_of')} (its "
            "latest accepted event), so the outputs are as of the clock: pick a time at or "
            "after it, or leave --as-of out"
        )


@contextmanager
def _progress(
    paths: list[str], show: bool, processes: int, workers: int
) -> Iterator[Callable[[int], None] | None]:
    """A bytes-read progress bar on stderr (one process), or a spinner (several), or nothing;
    yields what the flow's source feeds with the bytes it reads."""
    if not show:
        yield None
        return
    if processes > 1:
        plural = "s" if workers > 1 else ""
        status = f"scoring with {processes} processes x {workers} worker{plural}"
        with new_console(stderr=True).status(status):
            yield None
        return
    bar = bytes_bar("scoring")
    task = bar.add_task("scoring", total=sum(input_size(p) for p in paths))
    with bar:
        yield lambda n: bar.advance(task, n)


def _report(console: Console, report: FileRunReport, out: str) -> None:
    """Events read and their rate, the counts by outcome, the top leads, where results are."""
    from flows.runner import OUTPUTS

    summary = report.summary
    console.print(
        f"[bold]{report.read:,}[/] events read in {report.seconds:.2f} s "
        f"({report.rate:,.0f} events/s)",
        markup=True,
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(justify="left")
    grid.add_column(justify="right")
    grid.add_column(justify="left")
    reasons = summary.get("rejected_by_reason") or {}
    triggers = summary.get("triggers") or {}
    grid.add_row("scored", f"{summary.get('scored', 0):,}", "")
    grid.add_row(
        "rejected",
        f"{summary.get('rejected', 0):,}",
        Text(", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items()))),
    )
    grid.add_row("duplicates", f"{summary.get('duplicates', 0):,}", "")
    grid.add_row("contacts", f"{summary.get('contacts', 0):,}", "")
    grid.add_row(
        "triggers fired",
        f"{sum(triggers.values()):,}",
        Text(", ".join(f"{k} {v:,}" for k, v in sorted(triggers.items()))),
    )
    if summary.get("as_of"):
        grid.add_row("scores as of", summary["as_of"], "")
    console.print(grid)
    if report.top:
        table = Table(title=f"Top {len(report.top)} leads", title_justify="left")
        for name, justify in (
            ("contact", "left"),
            ("total", "right"),
            ("normalized", "right"),
            ("grade", "center"),
            ("stage", "left"),
            ("segments", "left"),
        ):
            table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
        for row in report.top:
            table.add_row(
                Text(str(row["contact"])),
                num(row.get("total")),
                num(row.get("normalized")),
                Text(row.get("grade") or ""),
                Text(row.get("stage") or ""),
                Text(", ".join(row.get("segments") or [])),
            )
        console.print(table)
    if out != STDIO:
        console.print(Text(f"results in {out}/: {', '.join(OUTPUTS)}"))


def _run_live_processes(config: FlowConfig, processes: int, workers: int) -> None:
    """``leadscore run --source -p N``: one Bytewax cluster of N local processes, supervised."""
    from flows.runner import PeerFailed, run_live_processes

    redis_url_arg(config.redis_url, "--source")
    load_rules_or_exit(config.rules)  # a bad rules file fails here, once, not in every process
    require_redis(config.redis_url, "--source")
    _engine_notice()

    def announce() -> None:  # once SIGTERM is passed on: a signal after this is a clean stop
        typer.echo(
            f"leadscore: scoring {masked_url(config.redis_url)} (prefix {config.prefix!r}, "
            f"{config.partitions} partitions) with {processes} processes x {workers} worker"
            f"{'s' if workers != 1 else ''}, "
            + ("until every stream is read" if not config.tail else "until SIGTERM or Ctrl-C"),
            err=True,
        )

    try:
        run_live_processes(config, processes, workers, announce)
    except PeerFailed as err:
        fail(
            f"{err}; the other processes were stopped. Nothing is lost: what was not "
            "checkpointed is read again by the next run."
        )
    typer.echo("leadscore: stopped; everything read is checkpointed", err=True)


def _retention(text: str) -> float:
    from state.retention import parse_retention

    try:
        return parse_retention(text)
    except ValueError as err:
        fail(f"--retain: {err}")


def _run_live(config: FlowConfig, workers: int) -> None:
    """``leadscore run --source``: score from Redis until stopped; exit 0 on a clean stop."""
    from redis.exceptions import RedisError

    from flows.redis_flow import STOP
    from flows.runner import LiveRun, RunFailed
    from state.lease import LeaseHeld
    from state.redis_store import StoreError

    redis_url_arg(config.redis_url, "--source")
    compiled = load_rules_or_exit(config.rules)
    require_redis(config.redis_url, "--source")
    _log_to_stderr()
    _engine_notice()
    where = masked_url(config.redis_url)
    try:
        # checks the meta (waits ~30 s for Redis to answer) and takes the flow lease, standing
        # by while another flow holds it
        live = LiveRun(config, compiled)
    except LeaseHeld as err:
        if STOP.is_set():  # SIGTERM / Ctrl-C while standing by
            typer.echo("leadscore: stopped while standing by; nothing was read", err=True)
            raise typer.Exit(0) from None
        fail(f"cannot start on {where}: {err}")
    except (StoreError, RedisError, ValueError) as err:
        fail(f"cannot start on {where}: {err}")
    except KeyboardInterrupt:
        fail("interrupted before the run started; nothing was read", 130)
    try:
        live.prepare()  # SIGTERM / Ctrl-C stop cleanly; the metrics endpoint
    except OSError as err:
        fail(f"cannot serve metrics on {config.metrics_host}:{config.metrics_port}: {err}")
    metrics = (
        f"; metrics on http://{config.metrics_host}:{config.metrics_port}/metrics"
        if config.metrics_port
        else ""
    )
    until = "until every stream is read" if not config.tail else "until SIGTERM or Ctrl-C"
    typer.echo(
        f"leadscore: scoring {where} (prefix {config.prefix!r}, {config.partitions} "
        f"partitions) with {workers} worker{'s' if workers != 1 else ''}, {until}{metrics}",
        err=True,
    )
    try:
        report = live.run(workers)
    except RunFailed as err:
        fail(
            f"the run stopped: {err.cause}. Nothing is lost: what was not checkpointed is "
            "read again by the next run."
        )
    done = report.counts
    typer.echo(
        f"leadscore: stopped after {report.seconds:.1f} s: {done['scored']:,} events scored, "
        f"{done['duplicates']:,} duplicates dropped, {done['dead']:,} dead letters, "
        f"{done['triggers']:,} triggers fired; everything read is checkpointed",
        err=True,
    )


def _engine_notice() -> None:
    """One line when scoring runs interpreted because the compiled engine is not built."""
    from leadscore.accel import notice

    line = notice()
    if line is not None:
        typer.echo(line, err=True)


def _log_to_stderr() -> None:
    """leadscore's own log lines (retries, recoveries, re-armed timers) on stderr, timed."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("leadscore")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
