"""The scoring dataflow: parse -> key by shard -> engine -> sinks; files or Redis.

This module builds the flow and picks its wiring: files here (JsonlSource -> Parser ->
ShardLogic -> ResultsSink), Redis in ``flows.redis_flow``. The shard logic both share lives in
``flows.shards``, the run's configuration in ``flows.config``.

Keyed logically by contact but physically by shard (``crc32(contact) % shards``), because a
Bytewax key costs microseconds and a shard's dict of contacts costs nanoseconds. The shard
count is fixed config, so results do not depend on how many workers run.

Time in a file replay is event time. Every input partition broadcasts its progress as ticks;
a shard's clock is the slowest partition's progress (a watermark), so a decay timer never
fires ahead of events a slower partition still has to deliver. Live, the clock is the wall
clock. Firings happen at their exact due time either way (see ``Engine.advance``).

Run it the Bytewax way::

    LEADSCORE_RULES=examples/rules.yaml LEADSCORE_EVENTS=events.jsonl LEADSCORE_OUT=out \\
        python -m bytewax.run flows.scoring:flow -w 2

or with ``leadscore run``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from flows.config import FlowConfig, bytewax_process
from flows.io import STDIO, JsonlSource, ResultsSink
from flows.parse import Parser
from flows.shards import (
    DeadLetter,
    ShardLogic,
    Tick,
    effect_record,
    shard_of,
)
from leadscore.engine import Engine
from leadscore.identity import merge_groups, merge_lines
from leadscore.rules import Rules, load_rules

__all__ = [
    "DeadLetter",
    "FlowConfig",
    "Parser",
    "ShardLogic",
    "Tick",
    "build_flow",
    "effect_record",
    "shard_of",
]
"""``FlowConfig``, the parse step and the shard logic live in ``flows.config``,
``flows.parse`` and ``flows.shards``; they are re-exported here for code that has always
imported them from the flow."""

# --------------------------------------------------------------------------- building


def build_flow(config: FlowConfig, rules: Rules | None = None) -> Dataflow:
    """The dataflow for ``config``; raises RulesError or FileNotFoundError before running."""
    rules = rules or load_rules(config.rules)
    engine = Engine(rules)
    flow = Dataflow("leadscore")
    if config.source == "redis":
        from flows.redis_flow import add_redis_scoring

        add_redis_scoring(flow, config, engine)
        return flow
    if config.source != "files":
        raise ValueError(f"unknown source {config.source!r}; expected 'files' or 'redis'")
    source = JsonlSource(config.events, settle=True)  # the shard logics below release it
    chunks = op.input("read", flow, source)
    # Merges join ids from their first event on: a first pass finds which (files only).
    groups = None if STDIO in config.events else merge_groups(merge_lines(config.events))
    parser = Parser(rules, config.shards, config.max_future, groups)
    keyed = op.flat_map("parse", chunks, parser)
    parts = len(config.events)
    results = op.stateful_batch(
        "score",
        keyed,
        lambda _resume: ShardLogic(engine, parts, live=False, settle=True, as_of=config.as_of),
    )
    by_kind = op.map("by_kind", results, lambda kv: kv[1])
    op.output("write", by_kind, ResultsSink(config.out))
    return flow


def __getattr__(name: str) -> Any:
    # `python -m bytewax.run flows.scoring:flow` builds the flow from the environment, lazily,
    # so importing this module for build_flow needs no environment at all.
    if name == "flow":
        config = FlowConfig.from_env()
        config.process_id, config.processes = bytewax_process(sys.argv, dict(os.environ))
        if config.source == "redis":  # a live run: SIGTERM/Ctrl-C stop it cleanly, metrics
            from flows.redis_flow import STOP, prepare_process
            from state.lease import LeaseHeld

            prepare_process(config)
            try:
                return build_flow(config)
            except LeaseHeld as err:
                print(f"leadscore: {err}", file=sys.stderr, flush=True)
                raise SystemExit(0 if STOP.is_set() else 1) from None
        return build_flow(config)
    raise AttributeError(name)
