"""``leadscore run``: score events files with the Bytewax flow, in one process or several,
or live from Redis (``--source``)."""

from __future__ import annotations

import heapq
import io
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import orjson
import typer
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

from leadscore.cli.app import (
    STDIO,
    app,
    events_arg,
    events_exist,
    fail,
    load_rules_or_exit,
    masked_url,
    new_console,
    num,
    redis_url_arg,
)
from leadscore.inputs import input_size, open_input

if TYPE_CHECKING:
    from flows.scoring import FlowConfig

_LIVE = "Live from Redis (--source)"  # the help panel of `run`'s live options
OUTPUTS = ("contacts.jsonl", "triggers.jsonl", "changes.jsonl", "dead_letter.jsonl", "summary.json")


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
    total = sum(input_size(p) for p in paths)
    bar = Progress(
        TextColumn("scoring"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=new_console(stderr=True),
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
                num(row.get("total")),
                num(row.get("normalized")),
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
        fail(f"--out {out} is a file; give a directory (created if missing) or - for stdout")


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
            fail(
                "--processes is for file runs; run one `leadscore run --source` per machine "
                "or container instead: they share the partitions through Redis"
            )
        if events or ctx.args:
            fail("--events and --source exclude each other: score files or a Redis source")
        if out is not None:
            fail(
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
        fail(
            "give events files with --events FILE (- for standard input), or a Redis URL "
            "with --source redis://HOST:PORT/DB to score live"
        )
    out = out or "out"
    paths = events_arg(events, ctx.args)
    config = FlowConfig(rules=rules, events=paths, out=out, shards=shards)
    compiled = load_rules_or_exit(rules)
    if out != STDIO:
        _check_out_dir(Path(out))
    try:
        flow = build_flow(config, compiled)
    except FileNotFoundError as err:
        fail(str(err))
    except (ValueError, OSError) as err:
        fail(f"cannot start: {err}")

    report = new_console(stderr=out == STDIO)
    show = new_console(stderr=True).is_terminal if progress is None else progress
    show = show and STDIO not in paths
    tee = _StdoutTee(sys.stdout.buffer, top) if out == STDIO else None
    saved = sys.stdout
    if tee is not None:
        sys.stdout = io.TextIOWrapper(tee, write_through=True)  # type: ignore[assignment]
    started = time.perf_counter()
    if processes > 1:
        if STDIO in paths or out == STDIO:
            fail(
                "--processes needs events files and an --out directory: standard input and "
                "output belong to one process"
            )
        events_exist(paths)
        for path in paths:  # a peer's own read error is lost when the others panic: check here
            try:
                with open_input(path) as stream:
                    stream.read(1)
            except OSError as err:
                fail(f"cannot read {path}: {err}")
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
            fail(f"interrupted; the outputs in {out} are incomplete", 130)
        if isinstance(cause, OSError | EOFError):  # EOFError: a truncated .gz
            fail(f"the run failed: {cause}")
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


_PEER = "import sys; from leadscore.cli.run import run_peer; run_peer(sys.argv[1])"
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
        status = new_console(stderr=True).status(
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
            fail(f"interrupted; the outputs in {config.out} are incomplete", 130)
        if failed is not None:
            # When one process fails the others panic on the broken connection: name the cause.
            last = {i: _last_line(logs[i]) for i, p in enumerate(peers) if p.returncode}
            failed, detail = next(
                ((i, line) for i, line in last.items() if line.startswith(_ROOT_CAUSE)),
                (failed, last.get(failed) or f"exit code {peers[failed].returncode}"),
            )
            hint = "" if detail.startswith(_ROOT_CAUSE) else "; rerun with --processes 1 to see why"
            fail(
                f"process {failed} of {processes} failed: {detail.removeprefix(_ROOT_CAUSE)}{hint}"
            )


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


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

    redis_url_arg(config.redis_url, "--source")
    compiled = load_rules_or_exit(config.rules)
    _log_to_stderr()
    where = masked_url(config.redis_url)
    try:
        flow = build_flow(config, compiled)  # checks the meta; waits (~30 s) for Redis to answer
    except (StoreError, RedisError, ValueError) as err:
        fail(f"cannot start on {where}: {err}")
    except KeyboardInterrupt:
        fail("interrupted before the run started; nothing was read", 130)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        prepare_process(config)  # SIGTERM / Ctrl-C stop cleanly; the metrics endpoint
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
    before = _flow_counts()
    started = time.perf_counter()
    try:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    except BaseException as err:  # Bytewax wraps worker errors: look at what caused them
        cause = _first_cause(err, (StoreError, RedisError, OSError))
        if cause is not None:
            fail(
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
