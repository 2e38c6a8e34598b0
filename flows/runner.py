"""Running the scoring flow to its end: files in this process or in several local processes
joined into one Bytewax cluster, or live from Redis until stopped.

``leadscore run`` is a thin shell over this module: it parses options, shows progress and
renders the report. Failures the user can act on are raised as ``Interrupted``,
``RunFailed`` or ``PeerFailed`` with the underlying cause, never as Bytewax's wrapped panics.
"""

from __future__ import annotations

import heapq
import io
import operator
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import IO, Any

import msgspec
import orjson
from bytewax.dataflow import Dataflow
from bytewax.testing import cluster_main, run_main

import flows.io
from flows.config import FlowConfig
from flows.scoring import build_flow
from leadscore.inputs import STDIO, close_input, open_input
from leadscore.rules import Rules

OUTPUTS = ("contacts.jsonl", "triggers.jsonl", "changes.jsonl", "dead_letter.jsonl", "summary.json")
_PEER = "import sys; from flows.runner import run_peer; run_peer(sys.argv[1])"
_ROOT_CAUSE = "the run failed: "  # a peer's own error; the others only lost their connection


class Interrupted(Exception):
    """Ctrl-C (SIGINT) stopped a file run: the outputs written so far are incomplete."""


class UnreadableInput(Exception):
    """An events file cannot be read (checked before the processes of a run start)."""


class RunFailed(Exception):
    """The run stopped on ``cause`` (an unreadable input, a full disk, Redis gone)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class PeerFailed(Exception):
    """Process ``index`` of a ``--processes`` run failed; ``detail`` is its last words.

    ``own`` is true when ``detail`` is the process's own error, not a panic on the broken
    connection to a peer that failed first (then rerunning in one process shows why).
    """

    def __init__(self, index: int, processes: int, detail: str, own: bool) -> None:
        super().__init__(f"process {index} of {processes} failed: {detail}")
        self.index, self.processes, self.detail, self.own = index, processes, detail, own


@dataclass
class FileRunReport:
    """What a file run's report shows: its summary record and its leaders."""

    summary: dict[str, Any]
    top: list[dict[str, Any]]
    seconds: float

    @property
    def read(self) -> int:
        """Non-blank input lines: every one was scored, rejected or dropped as a duplicate."""
        s = self.summary
        return s.get("scored", 0) + s.get("rejected", 0) + s.get("duplicates", 0)

    @property
    def rate(self) -> float:
        """Events read per second of the run."""
        return self.read / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- file runs


def run_files(
    config: FlowConfig,
    rules: Rules | None = None,
    *,
    workers: int = 1,
    processes: int = 1,
    top: int = 10,
    on_bytes: Callable[[int], None] | None = None,
) -> FileRunReport:
    """Score ``config.events`` into ``config.out`` (``-``: standard output) and report.

    Raises ``FileNotFoundError``/``ValueError``/``OSError`` before anything runs when the
    flow cannot be built, ``UnreadableInput`` when an input of a several-process run cannot
    be read; then ``Interrupted``, ``RunFailed`` or ``PeerFailed``. With
    ``on_bytes`` (one process only), bytes read are reported as the workers read them.
    """
    out = config.out or "out"
    flow = build_flow(config, rules)
    if processes > 1:
        if STDIO in config.events or out == STDIO:
            raise ValueError("several processes need events files and an output directory")
        for path in config.events:  # a peer's read error is lost when the others panic
            try:
                stream = open_input(path)
                try:
                    stream.read(1)
                finally:
                    close_input(stream)
            except OSError as err:
                raise UnreadableInput(f"cannot read {path}: {err}") from err
        started = time.perf_counter()
        run_processes(config, processes, workers)
        return _report_from_files(Path(out), top, time.perf_counter() - started)
    tee = _StdoutTee(sys.stdout.buffer, top) if out == STDIO else None
    started = time.perf_counter()
    alone = workers == 1 and STDIO not in config.events
    _run_in_process(flow, workers, tee, on_bytes, alone=alone)
    seconds = time.perf_counter() - started
    if tee is None:
        return _report_from_files(Path(out), top, seconds)
    return FileRunReport(tee.summary or {}, top_contacts(iter(tee.contacts), top), seconds)


def _run_in_process(
    flow: Dataflow,
    workers: int,
    tee: _StdoutTee | None,
    on_bytes: Callable[[int], None] | None,
    *,
    alone: bool = False,
) -> None:
    """Run ``flow`` here; with ``tee``, standard output passes through it meanwhile.

    ``alone`` (one worker, no standard input): the worker runs in this thread (``_run_alone``).
    """
    saved = sys.stdout
    if tee is not None:
        sys.stdout = io.TextIOWrapper(tee, write_through=True)  # type: ignore[assignment]
    flows.io.progress_hook = on_bytes
    try:
        if alone and threading.current_thread() is threading.main_thread():
            _run_alone(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
    except BaseException as err:  # Bytewax wraps worker errors: look at what caused them
        cause = first_cause(err, (KeyboardInterrupt, OSError, EOFError))
        if isinstance(cause, KeyboardInterrupt):
            raise Interrupted() from err
        if isinstance(cause, OSError | EOFError):  # EOFError: a truncated .gz
            raise RunFailed(cause) from err
        raise
    finally:
        flows.io.progress_hook = None
        if tee is not None:
            sys.stdout.flush()
            sys.stdout = saved


def _report_from_files(out: Path, top: int, seconds: float) -> FileRunReport:
    summary = next(read_jsonl(out / "summary.json"), {})
    return FileRunReport(summary, top_contacts_of_file(out / "contacts.jsonl", top), seconds)


def top_contacts(rows: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` highest totals; ties by contact id so the table is the same every run."""
    return heapq.nsmallest(n, rows, key=lambda v: (-(v.get("total") or 0.0), v["contact"]))


class _Ranked(msgspec.Struct):
    """What ranking a view needs; msgspec skips the rest of its line without building it."""

    contact: str
    total: Any = None


_RANKED = msgspec.json.Decoder(_Ranked)
_RANK_BLOCK = 1 << 23  # bytes of contacts.jsonl ranked at a time: memory stays bounded


def top_contacts_of_file(path: Path, n: int) -> list[dict[str, Any]]:
    """:func:`top_contacts` of ``contacts.jsonl``, the same rows in the same order.

    A run's last step reads every view back for the table: decoding each line whole with a
    key function was ~10k instructions per contact (callgrind), 1k per event of a run. Here
    msgspec reads only ``contact`` and ``total`` a block of lines at a time, the keys are
    compared in C, and only the winners are decoded whole. A file this cannot rank (a
    total that is not a number) takes :func:`top_contacts` as before."""
    if not path.exists() or n <= 0:
        return []
    best: list[tuple[float, str, int, bytes]] = []  # (-total, contact, line index, line)
    seen = 0
    with path.open("rb") as fh:
        carry = b""
        for block in iter(lambda: fh.read(_RANK_BLOCK), b""):
            cut = block.rfind(b"\n")
            if cut < 0:
                carry += block
                continue
            lines, carry = carry + block[: cut + 1], block[cut + 1 :]
            ranked = _rank_block(lines, seen, n)
            if ranked is None:
                return top_contacts(read_jsonl(path), n)
            seen += ranked[0]
            best = heapq.nsmallest(n, best + ranked[1])
        if carry:
            ranked = _rank_block(carry, seen, n)
            if ranked is None:
                return top_contacts(read_jsonl(path), n)
            best = heapq.nsmallest(n, best + ranked[1])
    return [orjson.loads(line) for *_, line in best]


def _rank_block(
    lines: bytes, first: int, n: int
) -> tuple[int, list[tuple[float, str, int, bytes]]] | None:
    """The rows of ``lines`` and their ``n`` best as (-total, contact, index, line); None
    when a line is not a view this can rank."""
    raw = list(filter(bytes.strip, lines.split(b"\n")))
    try:
        rows = _RANKED.decode_lines(lines)
        if len(rows) != len(raw):
            return None
        keys = zip(
            map(operator.neg, map(_TOTAL, rows)), map(_CONTACT, rows), count(first), strict=False
        )
        top = heapq.nsmallest(n, keys)  # tuples compare in C; the index keeps ties stable
    except (msgspec.DecodeError, TypeError):  # not JSON, no contact, or a total not a number
        return None
    return len(rows), [(key, contact, i, raw[i - first]) for key, contact, i in top]


_TOTAL = operator.attrgetter("total")
_CONTACT = operator.attrgetter("contact")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of an output file; a file the run never wrote means none."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


def first_cause(err: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``kinds`` in ``err``'s chain of causes, or None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


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
                        self.contacts = top_contacts(iter(self.contacts), self._keep)
                else:
                    self.summary = orjson.loads(line)
        return len(data)

    def flush(self) -> None:
        self._target.flush()


# --------------------------------------------------------------------------- processes


def _run_alone(flow: Dataflow) -> None:
    """Run ``flow``'s one worker in this thread; Ctrl-C and I/O errors end its input.

    ``cluster_main`` runs workers in threads of their own and waits for them in a loop that
    sleeps 1 ms and takes the GIL to check for signals: a one-worker file run handed the GIL
    over ~550 times a second (27-31k context switches per 1M events, ``run_main`` 2-3k). But
    ``run_main`` turns an exception raised inside a step into a Rust panic and backtrace on
    standard error. So here nothing is raised inside the flow (``flows.io.control``): the
    first Ctrl-C and an input or output error end every file partition at its next chunk,
    and the error (``KeyboardInterrupt`` for Ctrl-C) is raised once the flow has ended. A
    second Ctrl-C raises at once (an input that blocks, such as a named pipe, never reaches
    the partition's check).
    """
    control = flows.io.control

    def on_sigint(signum: int, frame: Any) -> None:
        if control.stop:  # the second Ctrl-C, or one after a failure
            raise KeyboardInterrupt
        control.stop = True

    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # e.g. a background job
    previous = None if ignored else signal.signal(signal.SIGINT, on_sigint)
    control.active, control.stop, control.failure = True, False, None
    try:
        run_main(flow)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        stopped, failure = control.stop, control.failure
        control.active, control.stop, control.failure = False, False, None
    if failure is not None:
        raise failure
    if stopped:
        raise KeyboardInterrupt


def run_processes(config: FlowConfig, processes: int, workers: int) -> None:
    """Run the file flow as ``processes`` local processes; fail fast when one fails.

    Every process runs the same flow (Bytewax splits the input partitions and shards between
    them); a failed peer would leave the others waiting for it, so they are stopped.
    Raises ``Interrupted`` on Ctrl-C and ``PeerFailed`` naming the process that failed first.
    """
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(processes)]
    base = {
        "rules": config.rules,
        "events": config.events,
        "out": config.out,
        "shards": config.shards,
        "max_future": config.max_future,
        "as_of": config.as_of,
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
        try:
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
            for peer in peers:
                if peer.poll() is None:
                    peer.terminate()
            for peer in peers:
                peer.wait()
        if failed == -1:
            raise Interrupted()
        if failed is not None:
            # When one process fails the others panic on the broken connection: name the cause.
            last = {i: _last_line(logs[i]) for i, p in enumerate(peers) if p.returncode}
            failed, detail = next(
                ((i, line) for i, line in last.items() if line.startswith(_ROOT_CAUSE)),
                (failed, last.get(failed) or f"exit code {peers[failed].returncode}"),
            )
            own = detail.startswith(_ROOT_CAUSE)
            raise PeerFailed(failed, processes, detail.removeprefix(_ROOT_CAUSE), own)


def run_peer(spec: str) -> None:
    """One process of ``run_processes``: the same flow, joined to its peers over loopback."""
    args = orjson.loads(spec)
    config = FlowConfig(
        rules=args["rules"],
        events=args["events"],
        out=args["out"],
        shards=args["shards"],
        max_future=args["max_future"],
        as_of=args["as_of"],
    )
    try:
        cluster_main(
            build_flow(config),
            args["addresses"],
            args["proc_id"],
            worker_count_per_proc=args["workers"],
        )
    except BaseException as err:
        cause = first_cause(err, (OSError, EOFError))
        if isinstance(cause, OSError | EOFError):
            print(f"{_ROOT_CAUSE}{cause}", file=sys.stderr)
            sys.exit(1)
        raise


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- live


_LIVE_PEER = "import sys; from flows.runner import run_live_peer; run_live_peer(sys.argv[1])"


def run_live_processes(
    config: FlowConfig,
    processes: int,
    workers: int,
    announce: Callable[[], None] = lambda: None,
) -> None:
    """Score live from Redis as ``processes`` local processes of ONE Bytewax cluster.

    Process 0 takes the deployment's flow lease (standing by while another flow holds it);
    the others join it. SIGTERM and Ctrl-C are passed on to every process, which each
    checkpoint what they read and exit 0. When one process exits otherwise (a crash, kill -9)
    the others are stopped at once and ``PeerFailed`` names it: a cluster with a process
    missing cannot go on. Each process logs to this one's stderr and serves its own metrics
    on ``metrics_port + i``. ``announce`` runs once SIGTERM and Ctrl-C are handled.
    """
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(processes)]
    fields = {
        name: value
        for name, value in vars(config).items()
        if name not in ("stop", "process_id", "processes")
    }
    # The handler only notes the signal; the loop below passes each one on, once, to every
    # process. Noted from before the first process starts, so a SIGTERM that arrives while
    # they start (even while one is being created) reaches all of them.
    requested: list[int] = []
    handlers = {
        sig: signal.signal(sig, lambda signum, frame: requested.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    announce()
    peers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _LIVE_PEER,
                orjson.dumps(
                    {"config": fields, "addresses": addresses, "proc_id": i, "workers": workers}
                ).decode(),
            ],
            # its own session: a terminal's Ctrl-C reaches this process only, which passes it
            # on once (a second signal makes a flow exit without its last checkpoint)
            start_new_session=True,
        )
        for i in range(processes)
    ]
    forwarded = 0
    grace = None
    try:
        while any(peer.poll() is None for peer in peers):
            while forwarded < len(requested):
                for peer in peers:
                    if peer.poll() is None:
                        peer.send_signal(requested[forwarded])
                forwarded += 1
            if grace is None and any(peer.returncode for peer in peers):
                # The others panic on the broken cluster within a second or so: let them, so
                # that the one that died first (by a signal, or with its own error) is named.
                grace = time.monotonic() + 3.0
            elif grace is None and any(peer.returncode == 0 for peer in peers):
                # One stopped cleanly (SIGTERM): the others finish their last checkpoint, or,
                # if the cluster never formed (a standby stopped), are stopped themselves.
                grace = time.monotonic() + 10.0
            if grace is not None and time.monotonic() > grace:
                break
            time.sleep(0.05)
    finally:
        stopped = set()
        for i, peer in enumerate(peers):  # the others panic on the broken cluster anyway
            if peer.poll() is None:
                peer.terminate()
                stopped.add(i)
        for peer in peers:
            try:
                peer.wait(5)
            except subprocess.TimeoutExpired:
                # e.g. still connecting to a peer that is gone: Bytewax's connect loop does not
                # run Python's signal handlers. Nothing is lost: whatever it read is pending.
                peer.kill()
                peer.wait()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    # A process killed by the very signal passed on to it had not yet installed its handler
    # (it was still starting, so it had read nothing): that is the requested stop, not a loss.
    codes = [
        (i, p.returncode)
        for i, p in enumerate(peers)
        if p.returncode and i not in stopped and -p.returncode not in requested[:forwarded]
    ]
    if codes:
        # a signal (kill -9, the OOM killer) is a cause; exit code 1 is usually a lost peer
        index, code = min(codes, key=lambda ic: (ic[1] > 0, ic[0]))
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        raise PeerFailed(index, processes, how, True)


def run_live_peer(spec: str) -> None:
    """One process of ``run_live_processes``."""
    import logging

    from flows.redis_flow import STOP, prepare_process
    from state.lease import LeaseHeld

    args = orjson.loads(spec)
    processes = len(args["addresses"])
    config = FlowConfig(**args["config"], process_id=args["proc_id"], processes=processes)
    if config.metrics_port:
        config.metrics_port += config.process_id
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s %(name)s [process {config.process_id}]: %(message)s"
        )
    )
    logging.getLogger("leadscore").addHandler(handler)
    logging.getLogger("leadscore").setLevel(logging.INFO)
    prepare_process(config)
    from redis.exceptions import RedisError

    from state.redis_store import StoreError

    try:
        flow = build_flow(config)
    except LeaseHeld as err:
        print(f"leadscore: {err}", file=sys.stderr, flush=True)
        sys.exit(0 if STOP.is_set() else 1)
    except (StoreError, RedisError, ValueError) as err:
        print(f"leadscore: process {config.process_id}: cannot start: {err}", file=sys.stderr)
        sys.exit(1)
    try:
        cluster_main(
            flow, args["addresses"], config.process_id, worker_count_per_proc=args["workers"]
        )
    except BaseException as err:
        cause = first_cause(err, (StoreError, RedisError, OSError))
        if cause is None:
            raise
        print(
            f"leadscore: process {config.process_id} of {processes}: the run stopped: {cause}",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)


@dataclass
class LiveRun:
    """A live run from Redis in three steps, so the caller can speak between them.

    ``LiveRun(config, rules)`` builds the flow (checks the meta; waits ~30 s for Redis to
    answer; raises ``StoreError``, ``RedisError`` or ``ValueError``); ``prepare()`` installs
    the SIGTERM/Ctrl-C handlers and serves the metrics (``OSError`` if the port is taken);
    ``run(workers)`` scores until stopped and returns what this run did. A failure raises
    ``RunFailed``: nothing is lost, what was not checkpointed is read again by the next run.
    """

    config: FlowConfig
    rules: Rules | None = None
    flow: Dataflow = field(init=False)
    _handlers: dict[int, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        from flows.redis_flow import STOP, install_stop_handlers

        # SIGTERM / Ctrl-C while standing by for the flow lease end the wait (LeaseHeld)
        self._handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        stop = self.config.stop if self.config.stop is not None else STOP
        stop.clear()
        install_stop_handlers(stop)
        try:
            self.flow = build_flow(self.config, self.rules)
        except BaseException:
            self._restore()
            raise

    def _restore(self) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)

    def prepare(self) -> None:
        from flows.redis_flow import prepare_process

        prepare_process(self.config)

    def run(self, workers: int) -> LiveReport:
        from redis.exceptions import RedisError

        from state.redis_store import StoreError

        before = flow_counts()
        started = time.perf_counter()
        try:
            cluster_main(self.flow, [], 0, worker_count_per_proc=workers)
        except BaseException as err:  # Bytewax wraps worker errors: look at what caused them
            cause = first_cause(err, (StoreError, RedisError, OSError))
            if cause is not None:
                raise RunFailed(cause) from err
            raise
        finally:
            self._restore()
        seconds = time.perf_counter() - started
        after = flow_counts()
        return LiveReport(seconds, {k: int(after[k] - before[k]) for k in after})


@dataclass
class LiveReport:
    """A live run's work: ``counts`` of scored, duplicates, dead and triggers."""

    seconds: float
    counts: dict[str, int]


def flow_counts() -> dict[str, float]:
    """This process's flow counters (events, duplicates, dead letters, triggers), summed over
    their labels: a live run's report is a difference of two readings."""
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
