"""Prometheus metrics of the flow process, served on their own port by `leadscore run`.

Updated once per batch or checkpoint, never per event, so they cost nothing on the hot path.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS_SCORED = Counter("leadscore_flow_events_scored_total", "Events applied to contacts")
DUPLICATES = Counter("leadscore_flow_duplicates_total", "Events dropped as already seen")
DEAD_LETTERS = Counter(
    "leadscore_flow_dead_letters_total", "Inputs sent to the dead-letter output", ["reason"]
)
TRIGGERS = Counter("leadscore_flow_triggers_fired_total", "Trigger firings", ["trigger"])
MERGES = Counter(
    "leadscore_flow_merge_messages_total",
    "Merge steps handled (flows/handover.py): take, give, forward (an event or a hand-over "
    "passed on to where the contact's history is), refused",
    ["step"],
)
CHECKPOINT_SECONDS = Histogram(
    "leadscore_flow_checkpoint_seconds",
    "Duration of one transactional checkpoint",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
CHECKPOINT_BYTES = Histogram(
    "leadscore_flow_checkpoint_bytes",
    "Bytes of state and records written by one checkpoint",
    buckets=(1e3, 1e4, 1e5, 1e6, 1e7),
)
REDIS_RETRIES = Counter(
    "leadscore_flow_redis_retries_total",
    "Redis calls retried after a connection failure (of: store, the flow's reads and "
    "checkpoints; input, the stream reads). The log has one line per back-off step only.",
    ["of"],
)
CONTACTS_IN_MEMORY = Gauge(
    "leadscore_flow_contacts_in_memory", "Contacts held in memory", ["partition"]
)

INPUT_TRIMMED = Counter(
    "leadscore_flow_input_trimmed_total",
    "Checkpointed input entries trimmed from the input streams (beyond the retention)",
)
ARCHIVED_EVENTS = Counter(
    "leadscore_flow_archived_events_total", "Accepted events appended to the --archive files"
)
ARCHIVED_BYTES = Counter(
    "leadscore_flow_archived_bytes_total", "Compressed bytes appended to the --archive files"
)
STREAM_ENTRIES = Gauge(
    "leadscore_stream_length",
    "Entries (XLEN) of a partition stream (in, triggers, changes, dead); the service exports "
    "the same gauge",
    ["stream", "partition"],
)
STREAM_BYTES = Gauge(
    "leadscore_stream_memory_bytes",
    "Redis MEMORY USAGE of a partition stream, sampled (SAMPLES 5): an estimate",
    ["stream", "partition"],
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on ``host:port`` from a background thread."""
    start_http_server(port, addr=host)
