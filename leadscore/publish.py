"""Publishing new rules to a live deployment: what kind of change it is, and its preview.

This module is behind ``leadscore preview`` (the first part of publishing): it decides
whether a new rules file can switch without rescoring, exports the deployment's history (the
retained input streams, or an ``--archive`` directory) to one file in bounded memory, and
previews the change with ``leadscore backtest``'s comparison on that history.
``leadscore publish`` uses the same classification; the rebuild of a generation of state and
the live switch are in ``leadscore/rescore.py``.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from leadscore.rules import load_rules_text

CHEAP = "cheap"
RESCORE = "rescore"
UNCHANGED = "unchanged"

#: Trigger actions that only deliver (docs/delivery.md); every other one changes the state.
DELIVERY_ACTIONS = frozenset({"notify", "webhook"})
#: Keys that describe and never score.
_DESCRIPTIVE = frozenset({"name", "description"})


@dataclass
class Change:
    """What kind of change a new rules file is, and why."""

    kind: str  # UNCHANGED, CHEAP or RESCORE
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == UNCHANGED:
            return "the new rules score exactly as the live ones (no change)"
        head = (
            "cheap change (no past score can differ; switches without rescoring)"
            if self.kind == CHEAP
            else "rescoring change (past scores differ; every contact is rescored from history)"
        )
        return head + ":\n" + "\n".join(f"  - {r}" for r in self.reasons)


def _doc(text: bytes | str, source: str) -> dict[str, Any]:
    """The rules document as data, after validating it (RulesError names its problems)."""
    from leadscore.rules import _Loader  # YAML 1.2 booleans: the key `on:` stays "on"

    string = text.decode() if isinstance(text, bytes) else text
    load_rules_text(string, source)
    doc = yaml.load(string, Loader=_Loader)  # a SafeLoader subclass: safe
    return doc if isinstance(doc, dict) else {}


def _plain(value: Any) -> Any:
    """``value`` without its descriptive keys, for comparing what scores."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in _DESCRIPTIVE}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _by_id(items: Any) -> dict[str, Any]:
    return {str(i.get("id")): i for i in items or [] if isinstance(i, dict)}


def _trigger_parts(trigger: dict[str, Any]) -> tuple[Any, list[Any]]:
    """A trigger's scoring definition and its state-changing actions (deliveries left out)."""
    definition = _plain({k: v for k, v in trigger.items() if k != "actions"})
    stateful = [
        _plain(a)
        for a in trigger.get("actions") or []
        if not (isinstance(a, dict) and set(a) <= DELIVERY_ACTIONS)
    ]
    return definition, stateful


def classify(
    old_text: bytes | str,
    new_text: bytes | str,
    seen_actions: Iterable[str] | None = None,
    *,
    new_source: str = "<new rules>",
) -> Change:
    """Compare two rules files (both validated; RulesError names the bad one's problems).

    ``seen_actions``: the action names that occur in the history; None means unknown, and
    then any new action rule counts as a rescoring change.
    """
    # a relative `predict:` model path of the live rules resolves beside the new file, as the
    # flow resolves published rules beside its own
    live_source = "<live rules>"
    if not new_source.startswith("<"):
        live_source = str(Path(new_source).parent / live_source)
    old, new = _doc(old_text, live_source), _doc(new_text, new_source)
    seen = None if seen_actions is None else set(seen_actions)
    cheap: list[str] = []
    rescore: list[str] = []

    for key in sorted((old.keys() | new.keys()) - {"actions", "triggers", "channels"}):
        if key == "known_actions":
            continue  # below, with the actions
        if _plain(old.get(key)) != _plain(new.get(key)):
            rescore.append(f"{key}: changed")
    if old.get("channels") != new.get("channels"):
        cheap.append("channels: changed (where deliveries go)")

    # actions: by id
    before, after = _by_id(old.get("actions")), _by_id(new.get("actions"))
    for rid in sorted(before.keys() | after.keys()):
        b, a = before.get(rid), after.get(rid)
        if b is not None and a is not None:
            if _plain(b) != _plain(a):
                rescore.append(f"action rule {rid}: changed")
            elif b != a:
                cheap.append(f"action rule {rid}: name or description changed")
        elif a is None:
            rescore.append(f"action rule {rid}: removed")
        else:
            on = a.get("on")
            names = on if isinstance(on, list) else [on]
            if seen is not None and not any(n in seen for n in names):
                cheap.append(
                    f"action rule {rid}: new, for {', '.join(map(str, names))}, never seen"
                )
            else:
                rescore.append(
                    f"action rule {rid}: new, for {', '.join(map(str, names))}"
                    + (", which the history has" if seen is not None else "")
                )
    if [r for r in before] != [r for r in after if r in before]:
        rescore.append("actions: reordered (the order rules apply in can matter)")
    known_b, known_a = set(old.get("known_actions") or []), set(new.get("known_actions") or [])
    if known_b != known_a:
        removed = known_b - known_a
        added = known_a - known_b
        if removed or seen is None or added & seen:
            rescore.append("known_actions: changed (events once accepted or rejected now differ)")
        else:
            cheap.append(f"known_actions: added {', '.join(sorted(added))}, never seen")

    # triggers: by id
    before, after = _by_id(old.get("triggers")), _by_id(new.get("triggers"))
    for tid in sorted(before.keys() | after.keys()):
        b, a = before.get(tid), after.get(tid)
        if b is None:
            rescore.append(f"trigger {tid}: new (which contacts are past it needs a replay)")
        elif a is None:
            rescore.append(f"trigger {tid}: removed")
        else:
            (bd, bs), (ad, as_) = _trigger_parts(b), _trigger_parts(a)
            if bd != ad:
                rescore.append(f"trigger {tid}: its score, threshold or rearm changed")
            elif bs != as_:
                rescore.append(f"trigger {tid}: actions that change the contact changed")
            elif b != a:
                cheap.append(f"trigger {tid}: deliveries, name or description changed")
    if list(before) != [t for t in after if t in before]:
        rescore.append("triggers: reordered")
    if rescore:
        return Change(RESCORE, rescore + cheap)
    if cheap:
        return Change(CHEAP, cheap)
    return Change(UNCHANGED, [])


# --------------------------------------------------------------------------- history


@dataclass
class Exported:
    """What ``export_history`` wrote."""

    path: Path
    events: int
    entries: int
    actions: set[str]
    archived: int = 0  # events of them from the archive (``older``)


def _note_action(line: bytes, actions: set[str]) -> None:
    """Add the line's action to ``actions`` (a line that is not a JSON object has none)."""
    try:
        action = orjson.loads(line).get("action")
    except (orjson.JSONDecodeError, AttributeError):
        return
    if isinstance(action, str):
        actions.add(action)


def export_history(
    r: Any,
    input_key: Callable[[int], str],
    partitions: int,
    out: Path,
    *,
    page: int = 1000,
    on_progress: Callable[[int, int], None] | None = None,
    older: Callable[[int], Iterable[bytes]] | None = None,
) -> Exported:
    """Every retained input entry (``XRANGE``, partition by partition, ``page`` entries per
    call) into ``out`` as gzip JSONL, in stream order per partition: a contact's events stay in
    order (one partition). Memory holds one page. ``on_progress(partition, events)`` after each
    page. Lines that are not JSON objects are kept: the replay dead-letters them as the flow did.
    ``older(p)``: lines written before partition ``p``'s entries (what the stream lost, from an
    archive: ``leadscore.history``).
    """
    events = entries = archived = 0
    actions: set[str] = set()
    with gzip.open(out, "wb", compresslevel=3) as fh:
        for p in range(partitions):
            for line in older(p) if older is not None else ():
                fh.write(line + b"\n")
                archived += 1
                _note_action(line, actions)
            start = "-"
            while True:
                batch = r.xrange(input_key(p), min=start, count=page)
                if not batch:
                    break
                for _eid, fields in batch:
                    payload = fields.get(b"e", b"")
                    for line in payload.split(b"\n"):
                        if not line.strip():
                            continue
                        fh.write(line.rstrip(b"\r") + b"\n")
                        events += 1
                        _note_action(line, actions)
                entries += len(batch)
                if on_progress is not None:
                    on_progress(p, events)
                if len(batch) < page:
                    break
                start = "(" + batch[-1][0].decode()
    return Exported(out, events + archived, entries, actions, archived)


def archive_actions(paths: Iterable[str]) -> set[str]:
    """The action names that occur in history files (one pass, one line in memory)."""
    from leadscore.inputs import read_lines

    seen: set[str] = set()
    for line in read_lines(list(paths)):
        try:
            action = orjson.loads(line).get("action")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(action, str):
            seen.add(action)
    return seen
