"""The ``leadscore`` command: score files, check rules, explain a score, make test data.

This module only parses options and renders; the work lives in the flow, the engine and
``leadscore.explain``. Expected failures (a bad rules file, a missing input) end with a short
message on stderr and a non-zero exit, never a traceback: the person reading it is fixing a
file, not debugging Python.
"""

from __future__ import annotations

import gzip
import heapq
import io
import os
import re
import struct
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn

import orjson
import typer
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from leadscore.explain import Explanation, Replay, replay
from leadscore.explain import explain as explain_records
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

if TYPE_CHECKING:
    from flows.scoring import FlowConfig

STDIO = "-"
_LIVE = "Live from Redis (--source)"  # the help panel of `run`'s live options
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
OUTPUTS = ("contacts.jsonl", "triggers.jsonl", "changes.jsonl", "dead_letter.jsonl", "summary.json")

app = typer.Typer(
    name="leadscore",
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


def _fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr saying what happened and what to do, then exit non-zero."""
    typer.echo(f"leadscore: {message}", err=True)
    raise typer.Exit(code)


def _load_rules(path: str) -> Rules:
    """The compiled rules, or every problem on stderr (one per line) and exit 1."""
    try:
        return load_rules(path)
    except RulesError as err:
        for problem in err.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(1) from None


def _console(stderr: bool = False) -> Console:
    # No highlighting: numbers and paths in user data should not change colour at random.
    return Console(stderr=stderr, highlight=False)


def _open_input(path: str) -> IO[bytes]:
    """A binary stream over a file, a .gz file or standard input (``-``)."""
    if path == STDIO:
        return sys.stdin.buffer
    if not Path(path).is_file():
        _fail(f"events file not found: {path}")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # closed by the caller


def _input_size(path: str) -> int:
    """Bytes the source will read: the file size, or a gzip file's uncompressed size."""
    if path.endswith(".gz"):
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)  # ISIZE: uncompressed length mod 2**32 of the last member
            return struct.unpack("<I", fh.read(4))[0]
    return Path(path).stat().st_size


def _duration(seconds: float) -> str:
    """Seconds back to the rules file's duration notation, e.g. 86400 -> 1d."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def _events_arg(events: list[str], extra: list[str]) -> list[str]:
    """``--events a b c`` as well as ``--events a --events b``; stdin at most once."""
    paths = [*events, *extra]
    if paths.count(STDIO) > 1:
        _fail("standard input (-) can be given only once in --events")
    return paths


# --------------------------------------------------------------------------- run


# The label the stdout sink puts first on each line: "output" (or "kind" in older flows).
_STDOUT_LABEL = re.compile(rb'^\{"(?:output|kind)":"(contacts|summary)"')


class _StdoutTee(io.BufferedIOBase):
    """Standard output that also keeps the summary and contacts records passing through it.

    With ``--out -`` the flow writes every output to stdout; the run report still needs the
    summary and the top leads, so it reads them on the way out instead of writing twice.
    """

    def __init__(self, target: IO[bytes], keep: int) -> None:
        super().__init__()
        self._target = target
        self._keep = keep
        self._lock = threading.Lock()
        self._partial = b""
        self.summary: dict[str, Any] | None = None
        self.contacts: list[dict[str, Any]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        with self._lock:
            self._target.write(data)
            lines = (self._partial + bytes(data)).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                label = _STDOUT_LABEL.match(line)
                if label is None:
                    continue
                if label[1] == b"contacts":
                    self.contacts.append(orjson.loads(line))
                    if len(self.contacts) > 2 * self._keep + 1024:  # memory stays bounded
                        self.contacts = _top_contacts(iter(self.contacts), self._keep)
                else:
                    self.summary = orjson.loads(line)
        return len(data)

    def flush(self) -> None:
        self._target.flush()


@contextmanager
def _progress(paths: list[str], show: bool) -> Iterator[None]:
    """A bytes-read progress bar fed by ``flows.io.progress_hook`` from the workers."""
    import flows.io

    if not show:
        yield
        return
    total = sum(_input_size(p) for p in paths)
    bar = Progress(
        TextColumn("scoring"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console(stderr=True),
        transient=True,
    )
    task = bar.add_task("scoring", total=total)
    flows.io.progress_hook = lambda n: bar.advance(task, n)
    try:
        with bar:
            yield
    finally:
        flows.io.progress_hook = None


def _top_contacts(rows: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` highest totals; ties by contact id so the table is the same every run."""
    return heapq.nsmallest(n, rows, key=lambda v: (-(v.get("total") or 0.0), v["contact"]))


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of an output file; a file the run never wrote means none."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


def _report(
    console: Console,
    summary: dict[str, Any],
    top: list[dict[str, Any]],
    seconds: float,
    out: str,
) -> None:
    scored = summary.get("scored", 0)
    rejected = summary.get("rejected", 0)
    duplicates = summary.get("duplicates", 0)
    read = scored + rejected + duplicates
    rate = read / seconds if seconds > 0 else 0.0
    console.print(
        f"[bold]{read:,}[/] events read in {seconds:.2f} s ({rate:,.0f} events/s)", markup=True
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(justify="left")
    grid.add_column(justify="right")
    grid.add_column(justify="left")
    reasons = summary.get("rejected_by_reason") or {}
    triggers = summary.get("triggers") or {}
    grid.add_row("scored", f"{scored:,}", "")
    grid.add_row(
        "rejected",
        f"{rejected:,}",
        Text(", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items()))),
    )
    grid.add_row("duplicates", f"{duplicates:,}", "")
    grid.add_row("contacts", f"{summary.get('contacts', 0):,}", "")
    grid.add_row(
        "triggers fired",
        f"{sum(triggers.values()):,}",
        Text(", ".join(f"{k} {v:,}" for k, v in sorted(triggers.items()))),
    )
    console.print(grid)
    if top:
        table = Table(title=f"Top {len(top)} leads", title_justify="left")
        for name, justify in (
            ("contact", "left"),
            ("total", "right"),
            ("normalized", "right"),
            ("grade", "center"),
            ("stage", "left"),
            ("segments", "left"),
        ):
            table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
        for row in top:
            table.add_row(
                Text(str(row["contact"])),
                _num(row.get("total")),
                _num(row.get("normalized")),
                Text(row.get("grade") or ""),
                Text(row.get("stage") or ""),
                Text(", ".join(row.get("segments") or [])),
            )
        console.print(table)
    if out != STDIO:
        console.print(Text(f"results in {out}/: {', '.join(OUTPUTS)}"))


def _first_cause(
    err: BaseException, kinds: tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of ``kinds`` in ``err``'s chain of causes, or None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _check_out_dir(out: Path) -> None:
    """Refuse a file where the outputs' directory should be, before the flow starts."""
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file; give a directory (created if missing) or - for stdout")


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
            "one core (Python's GIL); processes use several. File runs only.",
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
    ] = 20,
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
) -> None:
    """Score events files with the Bytewax flow and print a summary, or score live from Redis
    with --source.

    Writes contacts.jsonl, triggers.jsonl, changes.jsonl, dead_letter.jsonl and summary.json
    to --out, replacing those of an earlier run (an output with no records is not written).
    Bad lines go to dead_letter.jsonl with their position and reason; they never
    stop the run.

    With --source, events come from the Redis streams that `leadscore send` and `leadscore
    serve` fill, and every result goes to Redis in one transaction per partition batch
    (states, read models for `leadscore show` and the service, triggers, changes, dead
    letters, acknowledgements): a crash or kill loses nothing and repeats nothing; the next
    run continues where the last checkpoint left off. See docs/redis.md.
    """
    from bytewax.testing import cluster_main

    from flows.scoring import FlowConfig, build_flow

    if source is not None:
        if processes > 1:
            _fail(
                "--processes is for file runs; run one `leadscore run --source` per machine "
                "or container instead: they share the partitions through Redis"
            )
        if events or ctx.args:
            _fail("--events and --source exclude each other: score files or a Redis source")
        if out is not None:
            _fail(
                "--out is for file runs: a live run's results are in Redis (read models, "
                "triggers, changes and dead-letter streams; see docs/redis.md)"
            )
        _run_live(
            FlowConfig(
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
            ),
            workers,
        )
        return
    if not events:
        _fail(
            "give events files with --events FILE (- for standard input), or a Redis URL "
            "with --source redis://HOST:PORT/DB to score live"
        )
    out = out or "out"
    paths = _events_arg(events, ctx.args)
    config = FlowConfig(rules=rules, events=paths, out=out, shards=shards)
    compiled = _load_rules(rules)
    if out != STDIO:
        _check_out_dir(Path(out))
    try:
        flow = build_flow(config, compiled)
    except FileNotFoundError as err:
        _fail(str(err))
    except (ValueError, OSError) as err:
        _fail(f"cannot start: {err}")

    report = _console(stderr=out == STDIO)
    show = _console(stderr=True).is_terminal if progress is None else progress
    show = show and STDIO not in paths
    tee = _StdoutTee(sys.stdout.buffer, top) if out == STDIO else None
    saved = sys.stdout
    if tee is not None:
        sys.stdout = io.TextIOWrapper(tee, write_through=True)  # type: ignore[assignment]
    started = time.perf_counter()
    if processes > 1:
        if STDIO in paths or out == STDIO:
            _fail(
                "--processes needs events files and an --out directory: standard input and "
                "output belong to one process"
            )
        for path in paths:  # a peer's own read error is lost when the others panic: check here
            try:
                with _open_input(path) as stream:
                    stream.read(1)
            except OSError as err:
                _fail(f"cannot read {path}: {err}")
        _run_processes(config, processes, workers, show)
        seconds = time.perf_counter() - started
        summary = next(_read_jsonl(Path(out) / "summary.json"), {})
        _report(
            report,
            summary,
            _top_contacts(_read_jsonl(Path(out) / "contacts.jsonl"), top),
            seconds,
            out,
        )
        return
    try:
        with _progress(paths, show):
            # cluster_main even for one worker: run_main turns Ctrl-C into a Rust panic.
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
    except BaseException as err:  # Bytewax wraps worker errors: look at what caused them
        cause = _first_cause(err, (KeyboardInterrupt, OSError, EOFError))
        if isinstance(cause, KeyboardInterrupt):
            _fail(f"interrupted; the outputs in {out} are incomplete", 130)
        if isinstance(cause, OSError | EOFError):  # EOFError: a truncated .gz
            _fail(f"the run failed: {cause}")
        raise
    finally:
        if tee is not None:
            sys.stdout.flush()
            sys.stdout = saved
    seconds = time.perf_counter() - started

    if tee is not None:
        summary = tee.summary or {}
        leaders = _top_contacts(iter(tee.contacts), top)
    else:
        summary = next(_read_jsonl(Path(out) / "summary.json"), {})
        leaders = _top_contacts(_read_jsonl(Path(out) / "contacts.jsonl"), top)
    _report(report, summary, leaders, seconds, out)


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


_PEER = "import sys; from leadscore.cli import run_peer; run_peer(sys.argv[1])"
_ROOT_CAUSE = "the run failed: "  # a peer's own error; the others only lost their connection


def run_peer(spec: str) -> None:
    """One process of ``run --processes``: the same flow, joined to its peers over loopback."""
    from bytewax.testing import cluster_main

    from flows.scoring import FlowConfig, build_flow

    args = orjson.loads(spec)
    config = FlowConfig(
        rules=args["rules"], events=args["events"], out=args["out"], shards=args["shards"]
    )
    try:
        cluster_main(
            build_flow(config),
            args["addresses"],
            args["proc_id"],
            worker_count_per_proc=args["workers"],
        )
    except BaseException as err:
        cause = _first_cause(err, (OSError, EOFError))
        if isinstance(cause, OSError | EOFError):
            print(f"{_ROOT_CAUSE}{cause}", file=sys.stderr)
            sys.exit(1)
        raise


def _run_processes(config: FlowConfig, processes: int, workers: int, show: bool) -> None:
    """Run the file flow as ``processes`` local processes; fail fast when one fails.

    Every process runs the same flow (Bytewax splits the input partitions and shards between
    them); a failed peer would leave the others waiting for it, so they are stopped.
    """
    import subprocess
    import tempfile

    addresses = [f"127.0.0.1:{port}" for port in _free_ports(processes)]
    base = {
        "rules": config.rules,
        "events": config.events,
        "out": config.out,
        "shards": config.shards,
        "addresses": addresses,
        "workers": workers,
    }
    with tempfile.TemporaryDirectory(prefix="leadscore-run-") as tmp:
        logs = [Path(tmp) / f"process-{i}.log" for i in range(processes)]
        peers = []
        for i, log in enumerate(logs):
            with log.open("wb") as sink:
                spec = orjson.dumps({**base, "proc_id": i}).decode()
                peers.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _PEER, spec], stdout=sink, stderr=subprocess.STDOUT
                    )
                )
        status = _console(stderr=True).status(
            f"scoring with {processes} processes x {workers} worker{'s' if workers > 1 else ''}"
        )
        try:
            if show:
                status.start()
            failed, grace = None, 0.0
            while any(p.poll() is None for p in peers) and (failed is None or time.time() < grace):
                if failed is None:
                    failed = next((i for i, p in enumerate(peers) if p.poll()), None)
                    grace = time.time() + 5.0  # time for the others to write their own error
                time.sleep(0.05)
            failed = next((i for i, p in enumerate(peers) if p.returncode), failed)
        except KeyboardInterrupt:
            failed = -1
        finally:
            status.stop()
            for peer in peers:
                if peer.poll() is None:
                    peer.terminate()
            for peer in peers:
                peer.wait()
        if failed == -1:
            _fail(f"interrupted; the outputs in {config.out} are incomplete", 130)
        if failed is not None:
            # When one process fails the others panic on the broken connection: name the cause.
            last = {i: _last_line(logs[i]) for i, p in enumerate(peers) if p.returncode}
            failed, detail = next(
                ((i, line) for i, line in last.items() if line.startswith(_ROOT_CAUSE)),
                (failed, last.get(failed) or f"exit code {peers[failed].returncode}"),
            )
            hint = "" if detail.startswith(_ROOT_CAUSE) else "; rerun with --processes 1 to see why"
            _fail(
                f"process {failed} of {processes} failed: {detail.removeprefix(_ROOT_CAUSE)}{hint}"
            )


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- run --source


def _redis_url_arg(url: str, option: str) -> str:
    if not url.startswith(_REDIS_SCHEMES):
        _fail(
            f"{option} takes a Redis URL such as redis://HOST:6379/0 (rediss:// for TLS, "
            f"redis://:PASSWORD@HOST:6379/0 with a password), got {url!r}"
        )
    return url


def _log_to_stderr() -> None:
    """leadscore's own log lines (retries, recoveries, re-armed timers) on stderr, timed."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("leadscore")
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _flow_counts() -> dict[str, float]:
    """This process's flow counters (events, duplicates, dead letters, triggers), summed over
    their labels: the live run's report is a difference of two readings."""
    from flows import metrics

    counts: dict[str, float] = {}
    for name, counter in (
        ("scored", metrics.EVENTS_SCORED),
        ("duplicates", metrics.DUPLICATES),
        ("dead", metrics.DEAD_LETTERS),
        ("triggers", metrics.TRIGGERS),
    ):
        counts[name] = sum(
            sample.value
            for family in counter.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    return counts


def _run_live(config: FlowConfig, workers: int) -> None:
    """``leadscore run --source``: score from Redis until stopped; exit 0 on a clean stop."""
    import signal

    from bytewax.testing import cluster_main
    from redis.exceptions import RedisError

    from flows.redis_flow import prepare_process
    from flows.scoring import build_flow
    from state.redis_store import StoreError

    _redis_url_arg(config.redis_url, "--source")
    compiled = _load_rules(config.rules)
    _log_to_stderr()
    where = _masked_url(config.redis_url)
    try:
        flow = build_flow(config, compiled)  # checks the meta; waits (~30 s) for Redis to answer
    except (StoreError, RedisError, ValueError) as err:
        _fail(f"cannot start on {where}: {err}")
    except KeyboardInterrupt:
        _fail("interrupted before the run started; nothing was read", 130)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        prepare_process(config)  # SIGTERM / Ctrl-C stop cleanly; the metrics endpoint
    except OSError as err:
        _fail(f"cannot serve metrics on {config.metrics_host}:{config.metrics_port}: {err}")
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
    before = _flow_counts()
    started = time.perf_counter()
    try:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    except BaseException as err:  # Bytewax wraps worker errors: look at what caused them
        cause = _first_cause(err, (StoreError, RedisError, OSError))
        if cause is not None:
            _fail(
                f"the run stopped: {cause}. Nothing is lost: what was not checkpointed is "
                "read again by the next run."
            )
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    seconds = time.perf_counter() - started
    after = _flow_counts()
    done = {k: int(after[k] - before[k]) for k in after}
    typer.echo(
        f"leadscore: stopped after {seconds:.1f} s: {done['scored']:,} events scored, "
        f"{done['duplicates']:,} duplicates dropped, {done['dead']:,} dead letters, "
        f"{done['triggers']:,} triggers fired; everything read is checkpointed",
        err=True,
    )


# --------------------------------------------------------------------------- send


def _counted_lines(paths: list[str], advance: Any) -> Iterator[bytes]:
    """The lines of every input, reporting bytes read to ``advance`` every ~1 MB."""
    pending = 0
    for path in paths:
        stream = _open_input(path)
        try:
            for line in stream:
                yield line
                pending += len(line)
                if pending >= 1 << 20:
                    advance(pending)
                    pending = 0
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
    advance(pending)


@app.command(context_settings={"allow_extra_args": True})
def send(
    ctx: typer.Context,
    events: Annotated[
        list[str],
        typer.Option(
            "--events",
            "-e",
            metavar="FILE",
            help="Events files (JSON lines, .gz too); - reads standard input. "
            "Give several after one --events or repeat the option.",
        ),
    ],
    redis_url: Annotated[
        str,
        typer.Option(
            "--redis",
            metavar="URL",
            envvar="LEADSCORE_REDIS_URL",
            help="Redis URL: redis://[:PASSWORD@]HOST:PORT/DB, rediss:// for TLS.",
        ),
    ] = "redis://127.0.0.1:6379/0",
    batch: Annotated[
        int,
        typer.Option(
            "--batch",
            min=1,
            metavar="N",
            help="Events per stream entry; 100 costs ~7x less than 1 on both sides.",
        ),
    ] = 100,
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions",
            min=1,
            metavar="P",
            help="Input streams, as the flow's. [default: from {prefix}:meta, else 16]",
        ),
    ] = None,
    prefix: Annotated[
        str,
        typer.Option(
            "--prefix", metavar="PREFIX", envvar="LEADSCORE_PREFIX", help="Redis key prefix."
        ),
    ] = "ls",
    cluster: Annotated[
        bool, typer.Option("--cluster", help="The URL names a node of a Redis Cluster.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar on stderr; default: when stderr is a terminal and no input is -.",
        ),
    ] = None,
) -> None:
    """Load events (JSON lines) into the Redis input streams that `leadscore run --source`
    scores.

    Each event goes to its contact's partition, up to --batch events per stream entry, in
    file order. Lines without a readable contact go to partition 0, where the flow
    dead-letters them with their reason. Sending is at-least-once: give events an `id` and
    a repeated one is scored once.
    """
    from redis.exceptions import RedisError

    from state.redis_store import NotInitialized, RedisStore, StoreError

    paths = _events_arg(events, ctx.args)
    for path in paths:
        if path != STDIO and not Path(path).is_file():
            _fail(f"events file not found: {path}")
    _redis_url_arg(redis_url, "--redis")
    where = _masked_url(redis_url)
    show = _console(stderr=True).is_terminal if progress is None else progress
    show = show and STDIO not in paths
    bar = Progress(
        TextColumn("sending"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console(stderr=True),
        transient=True,
        disable=not show,
    )
    started = time.perf_counter()
    try:
        with RedisStore(redis_url, prefix=prefix, cluster=cluster) as store:
            if partitions is None:
                try:
                    partitions = store.keys.partitions
                except NotInitialized:
                    partitions = 16
            store.ensure(partitions)
            total = sum(_input_size(p) for p in paths) if show else None
            task = bar.add_task("sending", total=total)
            with bar:
                result = store.send_events(
                    _counted_lines(paths, lambda n: bar.advance(task, n)), batch=batch
                )
    except (StoreError, RedisError, ValueError) as err:
        _fail(f"cannot send to {where}: {err}")
    seconds = time.perf_counter() - started
    rate = result.events / seconds if seconds > 0 else 0.0
    console = _console()
    console.print(
        Text(
            f"sent {result.events:,} events in {result.entries:,} stream entries to "
            f"{partitions} partitions of {where} (prefix {prefix!r}) in {seconds:.2f} s "
            f"({rate:,.0f} events/s)"
        )
    )
    if result.malformed:
        console.print(
            Text(
                f"{result.malformed:,} lines without a readable contact went to partition 0; "
                "the flow dead-letters them with their reason"
            )
        )
    if result.blank:
        console.print(Text(f"{result.blank:,} blank lines skipped"))


# --------------------------------------------------------------------------- show


@app.command()
def show(
    contact: Annotated[str, typer.Argument(metavar="CONTACT", help="The contact id.")],
    redis_url: Annotated[
        str,
        typer.Option(
            "--redis",
            metavar="URL",
            envvar="LEADSCORE_REDIS_URL",
            help="Redis URL: redis://[:PASSWORD@]HOST:PORT/DB, rediss:// for TLS.",
        ),
    ] = "redis://127.0.0.1:6379/0",
    prefix: Annotated[
        str,
        typer.Option(
            "--prefix", metavar="PREFIX", envvar="LEADSCORE_PREFIX", help="Redis key prefix."
        ),
    ] = "ls",
    cluster: Annotated[
        bool, typer.Option("--cluster", help="The URL names a node of a Redis Cluster.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the read model exactly as stored (JSON).")
    ] = False,
) -> None:
    """Print a contact's current score as the live flow stored it (its read model).

    The same JSON the HTTP service answers and personalization reads from Redis. Scores are
    as of `updated_at` (the contact's last event or decay crossing). Exit 1 when the contact
    has never been scored.
    """
    from redis.exceptions import RedisError

    from state.redis_store import RedisStore, RetryPolicy, StoreError

    _redis_url_arg(redis_url, "--redis")
    where = _masked_url(redis_url)
    try:
        with RedisStore(
            redis_url, prefix=prefix, cluster=cluster, retry=RetryPolicy(attempts=3)
        ) as store:
            view = store.read_model(contact)
            keys = store.keys
    except (StoreError, RedisError, ValueError) as err:
        _fail(f"cannot read from {where}: {err}")
    p = keys.partition(contact)
    if view is None:
        _fail(
            f"no score for contact {contact!r} in {where} (prefix {prefix!r}, partition {p} of "
            f"{keys.partitions}): the flow has not scored it. Check the id (case and spaces "
            "count) and the prefix, and that `leadscore run --source` has run since its "
            "events were sent."
        )
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(view) + b"\n")
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    scores = view.get("scores") or {}
    grid.add_row("contact", Text(f"{view.get('contact', contact)}  (partition {p})"))
    grid.add_row("total", _num(view.get("total")))
    if view.get("normalized") is not None:
        grid.add_row("normalized", _num(view.get("normalized")))
    grid.add_row("scores", Text(", ".join(f"{k} {_num(v)}" for k, v in scores.items())))
    for name in ("grade", "stage"):
        if view.get(name):
            grid.add_row(name, Text(str(view[name])))
    for name in ("segments", "tags"):
        if view.get(name):
            grid.add_row(name, Text(", ".join(view[name])))
    grid.add_row("updated at", Text(view.get("updated_at") or "", style="dim"))
    _console().print(grid)


# --------------------------------------------------------------------------- check


def _repeat_text(r: ActionRule) -> str:
    parts = {
        REPEAT_EVERY: "every time",
        REPEAT_ONCE: "once",
        REPEAT_WINDOW: f"max {r.repeat_max} per {_duration(r.repeat_per)}",
        REPEAT_COOLDOWN: f"cooldown {_duration(r.cooldown)}",
    }
    text = [parts.get(r.repeat, "?")]
    if r.hits:
        text.append(f"from hit {r.hits}")
    if r.returns_within is not None:
        text.append(f"returns within {_duration(r.returns_within)}")
    if r.returns_after is not None:
        text.append(f"returns after {_duration(r.returns_after)}")
    return ", ".join(text)


def _trigger_text(t: Trigger) -> str:
    if t.below:
        text = f"{t.score} < {t.threshold:g}"
    else:
        text = f"{t.score} >= {t.threshold:g}"
        if t.rearm_below is not None:
            text += f", re-arm < {t.rearm_below:g}"
    if t.after:
        text += f", after {t.after}"
    return text


@app.command()
def check(
    rules: Annotated[
        str, typer.Argument(metavar="RULES", help="The rules file (YAML) to validate.")
    ],
) -> None:
    """Validate a rules file: list every problem (exit 1) or summarise it (exit 0).

    Each problem line names the file, the rule, the field and what was expected, so an
    editor can fix them all in one pass.
    """
    try:
        compiled = load_rules(rules)
    except RulesError as err:
        for problem in err.problems:
            typer.echo(str(problem), err=True)
        n = len(err.problems)
        typer.echo(f"{rules}: {n} problem{'s' if n != 1 else ''}; nothing was scored", err=True)
        raise typer.Exit(1) from None
    console = _console()
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


# --------------------------------------------------------------------------- explain


def _lines(paths: list[str]) -> Iterator[bytes]:
    for path in paths:
        stream = _open_input(path)
        try:
            yield from stream
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


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
    paths = _events_arg(events, ctx.args)
    for path in paths:
        if path != STDIO and not Path(path).is_file():
            _fail(f"events file not found: {path}")
    compiled = _load_rules(rules)
    result = replay(compiled, _lines(paths), contact, time.time())
    if result.view is None:
        _fail(
            f"no accepted events for contact {contact!r} in {', '.join(paths)} "
            f"({result.lines:,} lines read); check the id with: grep '\"{contact}\"' FILE"
        )
    story = explain_records(contact, result.records, result.view, compiled)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(story.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        return
    _render_explanation(_console(), story, result)


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
            table.add_row(Text(p.at), event, rule, Text(p.group), points, _num(p.score_after))
        console.print(table)
    if story.triggers:
        table = _table("Triggers fired", "at", "trigger", "score", "cause", right=("score",))
        for t in story.triggers:
            actions = ", ".join(f"{k} {v}" for a in t["actions"] or [] for k, v in a.items())
            cause = Text(t["cause"] or "")
            if actions:
                cause.append(f"\n-> {actions}", style="dim")
            table.add_row(Text(t["at"]), Text(t["trigger"]), _num(t["score"]), cause)
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
            _num(value),
            _num(story.applied.get(group, 0.0)),
            _num(decay.get(group, 0.0)),
        )
    table.add_row(
        Text("total", style="bold"),
        _num(final.get("total")),
        _num(story.applied_total),
        _num(story.decay_total),
    )
    console.print(table)
    facts = [
        ("normalized", _num(final.get("normalized"))),
        ("grade", final.get("grade") or ""),
        ("stage", final.get("stage") or ""),
        ("segments", ", ".join(final.get("segments") or [])),
        ("tags", ", ".join(final.get("tags") or [])),
        ("updated at", final.get("updated_at") or ""),
    ]
    console.print(Text("  ".join(f"{k}: {v}" for k, v in facts if v)))


# --------------------------------------------------------------------------- generate


@app.command()
def generate(
    contacts: Annotated[
        int, typer.Option("--contacts", "-n", min=1, metavar="N", help="How many contacts.")
    ],
    events: Annotated[
        int, typer.Option("--events", "-m", min=0, metavar="M", help="How many event lines.")
    ],
    seed: Annotated[
        int, typer.Option("--seed", "-s", metavar="S", help="Same seed, same bytes.")
    ] = 0,
    out: Annotated[
        str,
        typer.Option(
            "--out", "-o", metavar="FILE", help="Output file (.gz is compressed); - is stdout."
        ),
    ] = STDIO,
    malformed_rate: Annotated[
        float,
        typer.Option(
            "--malformed-rate",
            metavar="RATE",
            min=0.0,
            max=1.0,
            help="Share of lines broken on purpose, to exercise dead letters.",
        ),
    ] = 0.001,
    days: Annotated[
        float,
        typer.Option("--days", metavar="DAYS", help="Roughly how many days the stream covers."),
    ] = 56.0,
) -> None:
    """Write realistic synthetic events (JSON lines) for demos, tests and benchmarks.

    Busy contacts and a long tail, browsing sessions, email funnels, forms, slightly
    out-of-order timestamps and a few malformed lines. Deterministic for the same options.
    """
    from leadscore.generate import write_events

    if days <= 0:
        _fail(f"--days must be positive, got {days:g}")
    if out != STDIO:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    try:
        written = write_events(
            out, contacts, events, seed, malformed_rate=malformed_rate, days=days
        )
    except (ValueError, OSError) as err:
        _fail(f"cannot generate: {err}")
    malformed = round(events * malformed_rate)
    where = "standard output" if out == STDIO else out
    typer.echo(
        f"wrote {written:,} events for {contacts:,} contacts to {where} "
        f"(seed {seed}, {malformed:,} malformed on purpose)",
        err=True,
    )


# --------------------------------------------------------------------------- schema


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
        _fail(f"the rules schema is not available in this installation ({err})")
    data = orjson.dumps(rules_json_schema(), option=orjson.OPT_INDENT_2) + b"\n"
    if out == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(out).write_bytes(data)
    except OSError as err:
        _fail(f"cannot write {out}: {err}")
    typer.echo(f"wrote the rules JSON Schema to {out}", err=True)


# --------------------------------------------------------------------------- serve


def _masked_url(url: str) -> str:
    """The URL with its password replaced by ``***``, safe to print."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def _action_map_arg(pairs: list[str]) -> dict[str, str] | None:
    """``--action-map "Demo Requested=form.submit"`` (repeatable) -> ``{name: action}``."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, action = pair.partition("=")
        if not sep or not name.strip() or not action.strip():
            _fail(f"--action-map expects 'Event Name=action', got {pair!r}")
        mapping[name.strip()] = action.strip()
    return mapping or None


@app.command()
def serve(
    host: Annotated[
        str, typer.Option("--host", metavar="ADDR", help="Address to listen on; 0.0.0.0: all.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", "-p", min=1, max=65535, metavar="PORT", help="TCP port.")
    ] = 8080,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis", metavar="URL", help="Redis URL. [default: redis://127.0.0.1:6379/0]"
        ),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions",
            min=1,
            metavar="P",
            help="Input streams, as the flow's. [default: from {prefix}:meta, else 16]",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", metavar="PREFIX", help="Key prefix, as the flow's. [default: ls]"),
    ] = None,
    write_keys: Annotated[
        list[str] | None,
        typer.Option(
            "--write-key",
            metavar="KEY",
            help="Key for the Segment and /v1/events endpoints; repeatable. "
            "LEADSCORE_WRITE_KEYS keeps keys out of `ps`.",
        ),
    ] = None,
    read_keys: Annotated[
        list[str] | None,
        typer.Option(
            "--read-key",
            metavar="KEY",
            help="Require this key (or a write key) on /v1/contacts; repeatable. [default: open]",
        ),
    ] = None,
    cors_origins: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            help="Browser origin allowed to call the API (https://www.acme.com); repeatable.",
        ),
    ] = None,
    action_map: Annotated[
        list[str] | None,
        typer.Option(
            "--action-map",
            metavar="NAME=ACTION",
            help="Segment event name to action ('Demo Requested=form.submit'); repeatable.",
        ),
    ] = None,
    cookie_domain: Annotated[
        str | None,
        typer.Option(
            "--cookie-domain",
            metavar="DOMAIN",
            help="Visitor cookie domain (acme.com: shared by its subdomains).",
        ),
    ] = None,
    cookie_secure: Annotated[
        bool,
        typer.Option("--cookie-secure", help="Mark the visitor cookie Secure even over http."),
    ] = False,
    flush_ms: Annotated[
        float | None,
        typer.Option(
            "--flush-ms",
            min=0.0,
            metavar="MS",
            help="How long writes wait to share a Redis round trip. [default: 2]",
        ),
    ] = None,
    pixel_only: Annotated[
        bool,
        typer.Option(
            "--pixel-only",
            help="Run without write keys: the Segment and /v1/events endpoints then refuse "
            "every request.",
        ),
    ] = False,
) -> None:
    """Serve the HTTP API: tracking pixel, Segment-compatible collector, native events,
    contact scores, Prometheus metrics and health checks (described at /openapi.json).

    Events go into the Redis streams the scoring flow reads; scores come from what the flow
    writes. A write key is required unless --pixel-only.

    Environment (options win): LEADSCORE_REDIS_URL, LEADSCORE_PREFIX, LEADSCORE_PARTITIONS,
    LEADSCORE_WRITE_KEYS, LEADSCORE_READ_KEYS, LEADSCORE_CORS_ORIGINS (comma-separated),
    LEADSCORE_ACTION_MAP, LEADSCORE_COOKIE_DOMAIN, LEADSCORE_COOKIE_SECURE,
    LEADSCORE_FLUSH_INTERVAL_MS.
    """
    from leadscore.service import ServiceConfig, run_server

    overrides = {
        "redis_url": redis_url,
        "partitions": partitions,
        "prefix": prefix,
        "write_keys": tuple(write_keys) if write_keys else None,
        "read_keys": tuple(read_keys) if read_keys else None,
        "cors_origins": tuple(cors_origins) if cors_origins else None,
        "action_map": _action_map_arg(action_map or []),
        "cookie_domain": cookie_domain,
        "cookie_secure": True if cookie_secure else None,  # absent: the environment decides
        "flush_interval_ms": flush_ms,
    }
    try:
        config = ServiceConfig.from_env(**overrides)
    except ValueError as err:
        _fail(f"bad service configuration: {err}")
    if not config.write_keys and not pixel_only:
        _fail(
            "no write key configured, so the Segment and /v1/events endpoints would refuse "
            "every request. Set one or more (comma-separated) in LEADSCORE_WRITE_KEYS, e.g.\n"
            "  export LEADSCORE_WRITE_KEYS=\"$(python -c 'import secrets; "
            "print(secrets.token_urlsafe(24))')\"\n"
            "or pass --write-key KEY; or --pixel-only to serve only the pixel and the read API.",
            2,
        )
    import logging

    from uvicorn.logging import DefaultFormatter

    # The service's own log lines (partitions in use, Redis warnings), formatted as uvicorn's.
    handler = logging.StreamHandler()
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(name)s: %(message)s"))
    service_log = logging.getLogger("leadscore")
    service_log.addHandler(handler)
    service_log.setLevel(logging.INFO)
    n = len(config.write_keys)
    reads = f"{len(config.read_keys)} read key(s)" if config.read_keys else "score API open"
    where = " (every interface)" if host in ("0.0.0.0", "::") else ""
    typer.echo(
        f"leadscore: serving http://{host}:{port}{where}; Redis "
        f"{_masked_url(config.redis_url)}, prefix {config.prefix!r}, partitions "
        f"{config.partitions or 'from ' + config.prefix + ':meta (else 16)'}; "
        f"{n} write key{'s' if n != 1 else ''}, {reads}",
        err=True,
    )
    run_server(config, host, port)


if __name__ == "__main__":
    main()
