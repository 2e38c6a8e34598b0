"""Baseline (a): the textbook Bytewax flow, one Bytewax key per contact.

Same source, same parser, same engine and the same output records as ``flows.scoring``, but
keyed with ``key_on(contact)`` + ``stateful_map`` and one output item per record. It is what a
first version would look like, and what leadscore's shard-keyed ``stateful_batch`` has to
beat: the difference between the two is Bytewax's per-key and per-item cost, nothing else.

It does less than leadscore (no read models or summary at the end, no decay timers), so the
ratio against it is conservative.

Run alone: ``python -m bytewax.run "bench.naive:flow_from_env()"`` with ``LEADSCORE_RULES``,
``LEADSCORE_EVENTS`` and ``LEADSCORE_OUT`` set, like the real flow.
"""

from __future__ import annotations

import time
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from flows.io import Chunk, JsonlSource, ResultsSink
from flows.scoring import DeadLetter, FlowConfig, effect_record
from leadscore.engine import ContactState, Duplicate, Engine
from leadscore.events import Event, Reject, parse_event
from leadscore.rules import load_rules

Record = tuple[str, bytes]


def _parser(known: frozenset[str]) -> Any:
    def parse(chunk: Chunk) -> list[Event | Record]:
        _part, path, first_line, lines = chunk
        if lines is None:
            return []
        now = time.time()
        out: list[Event | Record] = []
        for offset, line in enumerate(lines):
            raw = line.rstrip(b"\r\n")  # the source hands lines with their line ends
            event = parse_event(raw, now)
            if type(event) is Event:
                if event.action in known:
                    out.append(event)
                    continue
                event = Reject("unknown_action", f"action {event.action!r} is not used")
            letter = DeadLetter(f"{path}:{first_line + offset}", raw, event)
            out.append(("dead_letter", letter.record() + b"\n"))
        return out

    return parse


def build_naive_flow(rules_path: str, events: list[str], out: str | None) -> Dataflow:
    """Parse -> key_on(contact) -> stateful_map(engine.apply) -> one item per record."""
    engine = Engine(load_rules(rules_path))
    flow = Dataflow("naive")
    chunks = op.input("read", flow, JsonlSource(events))
    items = op.flat_map("parse", chunks, _parser(engine.rules.known_actions))
    split = op.branch("is_event", items, lambda item: type(item) is Event)
    keyed = op.key_on("by_contact", split.trues, lambda e: e.contact)

    def score(state: ContactState | None, event: Event) -> tuple[ContactState, list[Record]]:
        if state is None:
            state = engine.new_state()
        effects = engine.apply(state, event)
        if effects and type(effects[0]) is Duplicate:
            return state, []
        records = []
        for effect in effects:
            kind, line = effect_record(event.contact, effect)
            records.append((kind, line + b"\n"))
        return state, records

    scored = op.stateful_map("score", keyed, score)
    records = op.flat_map("records", scored, lambda kv: kv[1])
    merged = op.merge("all", records, split.falses)
    op.output("write", merged, ResultsSink(out))
    return flow


def flow_from_env() -> Dataflow:
    """For ``python -m bytewax.run``: the same environment variables as ``flows.scoring``."""
    config = FlowConfig.from_env()
    return build_naive_flow(config.rules, config.events, config.out)
