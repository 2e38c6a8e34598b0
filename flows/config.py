"""What a scoring run needs to know, from CLI options or ``LEADSCORE_*`` variables.

Its own module so that either flow (files or Redis), the CLI and the bench can read a run's
configuration without importing a flow.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from leadscore.durations import parse_seconds
from leadscore.events import DEFAULT_MAX_FUTURE, Reject, parse_ts
from state.retention import parse_retention


@dataclass
class FlowConfig:
    """Everything a run needs; built from CLI options or ``LEADSCORE_*`` variables."""

    rules: str
    events: list[str] = field(default_factory=list)
    out: str | None = None
    shards: int = 64
    source: str = "files"  # "files" or "redis"
    redis_url: str = "redis://127.0.0.1:6379/0"
    partitions: int = 16
    prefix: str = "ls"
    flush_events: int = 2000
    # A caught-up partition checkpoints at most every flush_ms (bench/README.md, "lat": 20
    # held live triggers 10 ms on average at half load for ~8% less flow CPU; near the
    # flow's limit rounds are longer than either and it makes no difference).
    flush_ms: int = 2
    max_contacts: int = 100_000
    changes_maxlen: int = 100_000
    tail: bool = True  # Redis: keep waiting for new entries; False stops once drained
    cluster: bool = False  # Redis: the URL names one node of a Redis Cluster
    metrics_port: int | None = None  # Redis: serve Prometheus metrics (prepare_process)
    metrics_host: str = "127.0.0.1"
    # Redis: the deployment's flow lease (state/lease.py). A second flow waits for it (a hot
    # standby) unless lease_wait is False, when it is refused at once.
    lease_ttl: float = 10.0
    lease_wait: bool = True
    # Redis: checkpointed input kept for replays and rules publishing (state/retention.py):
    # entries younger than retain_seconds or among the retain_entries newest; older ones go.
    retain_seconds: float = 86_400.0
    retain_entries: int = 0
    # Redis: record these rules as v1 of a deployment that has state but no rules recorded
    # (state/versions.py); never replaces rules already published.
    publish: bool = False
    # Redis: append accepted input to DIR/YYYY-MM-DD.jsonl.gz at every checkpoint (flows/archive.py)
    archive: str | None = None
    # Redis: this process's place in its Bytewax cluster (python -m bytewax.run -i/-a).
    # Process 0 takes the lease before the cluster starts; the others join it.
    process_id: int = 0
    processes: int = 1
    # Seconds an event's ts may be past the wall clock before it is rejected (bad_ts).
    max_future: float = DEFAULT_MAX_FUTURE
    # Files: the time the contacts' scores are brought to at the end (epoch seconds); None is
    # the run's clock (the latest accepted event time). An earlier time is refused.
    as_of: float | None = None
    # Redis: setting it ends the run cleanly (read input checkpointed); None means
    # flows.redis_flow.STOP, which SIGTERM/SIGINT set once prepare_process installed handlers.
    stop: threading.Event | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FlowConfig:
        env = dict(os.environ if env is None else env)
        rules = env.get("LEADSCORE_RULES")
        if not rules:
            raise ValueError(
                "LEADSCORE_RULES is not set: point it at a rules file, "
                "e.g. LEADSCORE_RULES=examples/rules.yaml"
            )
        defaults = cls(rules=rules)
        return cls(
            rules=rules,
            events=env.get("LEADSCORE_EVENTS", "").replace(",", " ").split(),
            out=env.get("LEADSCORE_OUT") or None,
            shards=int(env.get("LEADSCORE_SHARDS", defaults.shards)),
            source=env.get("LEADSCORE_SOURCE", defaults.source),
            redis_url=env.get("LEADSCORE_REDIS_URL", defaults.redis_url),
            partitions=int(env.get("LEADSCORE_PARTITIONS", defaults.partitions)),
            prefix=env.get("LEADSCORE_PREFIX", defaults.prefix),
            flush_events=int(env.get("LEADSCORE_FLUSH_EVENTS", defaults.flush_events)),
            flush_ms=int(env.get("LEADSCORE_FLUSH_MS", defaults.flush_ms)),
            max_contacts=int(env.get("LEADSCORE_MAX_CONTACTS", defaults.max_contacts)),
            changes_maxlen=int(env.get("LEADSCORE_CHANGES_MAXLEN", defaults.changes_maxlen)),
            tail=_flag(env.get("LEADSCORE_TAIL"), defaults.tail),
            cluster=_flag(env.get("LEADSCORE_CLUSTER"), defaults.cluster),
            metrics_port=int(env["LEADSCORE_METRICS_PORT"])
            if env.get("LEADSCORE_METRICS_PORT")
            else None,
            metrics_host=env.get("LEADSCORE_METRICS_HOST", defaults.metrics_host),
            lease_ttl=float(env.get("LEADSCORE_LEASE_TTL", defaults.lease_ttl)),
            lease_wait=_flag(env.get("LEADSCORE_LEASE_WAIT"), defaults.lease_wait),
            retain_seconds=parse_retention(env["LEADSCORE_RETAIN"])
            if env.get("LEADSCORE_RETAIN")
            else defaults.retain_seconds,
            retain_entries=int(env.get("LEADSCORE_RETAIN_ENTRIES", defaults.retain_entries)),
            max_future=_seconds(env.get("LEADSCORE_MAX_FUTURE"), defaults.max_future),
            as_of=_time(env.get("LEADSCORE_AS_OF")),
            publish=_flag(env.get("LEADSCORE_PUBLISH"), defaults.publish),
            archive=env.get("LEADSCORE_ARCHIVE") or None,
        )


def _flag(value: str | None, default: bool) -> bool:
    """An on/off environment variable: 1/true/yes/on or 0/false/no/off (unset: default)."""
    if value is None or not value.strip():
        return default
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected an on/off value such as 1 or 0, got {value!r}")


def bytewax_process(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """``(process id, processes)`` of ``python -m bytewax.run ... -i N -a "a;b"`` (or its
    ``BYTEWAX_PROCESS_ID`` / ``BYTEWAX_ADDRESSES`` variables); ``(0, 1)`` for one process.

    The flow module is imported by ``bytewax.run`` before it starts the cluster, and the
    process's place is only in its command line: the flow lease needs it (process 0 takes the
    lease, the others join it).
    """
    process = env.get("BYTEWAX_PROCESS_ID")
    addresses = env.get("BYTEWAX_ADDRESSES")
    for i, arg in enumerate(argv):
        value = argv[i + 1] if i + 1 < len(argv) else None
        if arg in ("-i", "--process-id") and value is not None:
            process = value
        elif arg.startswith("--process-id="):
            process = arg.split("=", 1)[1]
        elif arg in ("-a", "--addresses") and value is not None:
            addresses = value
        elif arg.startswith("--addresses="):
            addresses = arg.split("=", 1)[1]
    count = len([a for a in (addresses or "").split(";") if a.strip()])
    return (int(process) if process is not None else 0), max(1, count)


def _seconds(value: str | None, default: float) -> float:
    """A duration variable: ``5m``, ``30s`` or plain seconds (unset: default)."""
    if value is None or not value.strip():
        return default
    return parse_seconds(value.strip())


def _time(value: str | None) -> float | None:
    """A time variable: RFC 3339 with Z or an offset, or epoch seconds (unset: None)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        given: float | str = float(text)
    except ValueError:
        given = text
    ts = parse_ts(given, 0.0)
    if type(ts) is Reject:
        raise ValueError(f"expected a time such as 2026-03-31T00:00:00Z: {ts.detail}")
    return ts
