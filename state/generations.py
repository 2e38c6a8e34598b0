"""Generations of state: which one each partition serves, and the steps that switch them.

A publish with rescoring builds the contacts' states, read models, decay timers and clocks
under the new rules into keys the live flow does not read (generation N, ``state/keys.py``),
then switches. What is live is recorded per partition in ``{prefix}:{p}:live``
(``"{generation}:{rules version}"``, absent = generation 0 under the rules in the meta): the
checkpoint script compares it with what the flow expects and writes nothing when it differs,
so a flow can never commit into a generation that is no longer live; it reloads instead
(``flows/redis_flow.py``). Readers (``show``, the HTTP service) read the marker first.

The switch is two steps, each safe to repeat after a crash:

1. ``hold``: every partition's marker becomes ``"{old}>{new}"``. The old generation stays
   live (readers keep answering from it) but the flow's checkpoints are refused, so its state
   stops moving: what it acknowledged is fixed, the new generation catches up to exactly that,
   and the switch firings are computed against a state that cannot change under them.
2. ``finish``: ONE transaction sets every marker to ``"{new}"`` and the meta to the new rules.
   The flow's next checkpoint is refused again; it reloads the partition from the new
   generation and applies its uncommitted input again, under the new rules.

Between the two, the deployment is on the old generation everywhere; after the second, on
the new one everywhere: at every instant exactly one generation is live. The
``{prefix}:publish`` hash records the publish in progress, so that a re-run resumes it.
Published rules versions are kept in ``{prefix}:rules:{V}`` (sha256, text, generation).

On Redis Cluster the partitions' markers live in different slots (often on different nodes),
so no transaction can switch them all. There ``finish`` commits first: ``phase`` of
``{prefix}:publish`` becomes ``switched`` (one HSET, the commit point), then the meta, then
each partition's marker, then the record goes. A marker still ``"{old}>{new}"`` while the
record says ``switched`` to ``new`` is read as ``new`` (:func:`serving`: readers look at the
record only when the marker is held), and the flow's checkpoints of it stay refused, so the
deployment is on the new generation everywhere from the commit point on. A publish killed in
between is rolled forward by running it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from state.keys import GROUP, SWITCHED, Keys, parse_live
from state.redis_store import StoreError
from state.versions import live_rules


class PublishError(StoreError):
    """A publish cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class RulesRecord:
    """One published rules version (``{prefix}:rules:{V}``)."""

    version: int
    sha256: str
    text: bytes
    generation: int
    pruned: bool


@dataclass(frozen=True)
class Publishing:
    """The publish in progress (``{prefix}:publish``)."""

    source: str  # the live marker it started from, as stored ("" when absent, else "G:V")
    target: str  # "G:V"
    previous: str  # the live generation and rules version it started from ("G:V")
    phase: str  # "rebuild" or "switch"
    on_switch: str  # "fire" or "silent"
    kind: str  # "rescore", "cheap" or "rollback"

    @property
    def generation(self) -> int:
        return parse_live(self.target)[0]

    @property
    def version(self) -> int:
        version = parse_live(self.target)[1]
        assert version is not None
        return version


def marker(generation: int, version: int) -> str:
    return f"{generation}:{version}"


def is_cluster(r: Any) -> bool:
    """Whether ``r`` talks to a Redis Cluster (no transaction spans two partitions)."""
    from redis.cluster import RedisCluster

    return isinstance(r, RedisCluster)


def read_markers(r: Any, keys: Keys) -> list[str]:
    """Every partition's ``live`` marker ('' where absent)."""
    mget = getattr(r, "mget_nonatomic", r.mget)
    return [(v or b"").decode() for v in mget([keys.live(p) for p in range(keys.partitions)])]


def live_generation(r: Any, keys: Keys) -> int:
    """The generation the meta records as live (0 before any publish)."""
    return int(r.hget(keys.meta, "generation") or 0)


def rules_record(r: Any, keys: Keys, version: int) -> RulesRecord | None:
    raw = r.hgetall(keys.rules(version))
    if not raw:
        return None
    return RulesRecord(
        version=version,
        sha256=raw[b"sha256"].decode(),
        text=raw.get(b"text", b""),
        generation=int(raw.get(b"generation", 0)),
        pruned=raw.get(b"pruned") == b"1",
    )


def ensure_live_record(r: Any, keys: Keys) -> RulesRecord:
    """The record of the live rules, written from the meta if missing (a deployment that
    never published has its v1 only in the meta)."""
    live = live_rules(r, keys)
    if live is None:
        raise PublishError(
            f"{keys.meta} records no rules: start the live flow once (it records its rules "
            "as v1), then publish"
        )
    record = rules_record(r, keys, live.version)
    if record is None:
        generation = live_generation(r, keys)
        r.hset(
            keys.rules(live.version),
            mapping={
                "sha256": live.sha256,
                "text": live.text,
                "generation": generation,
                "published": live.published,
            },
        )
        record = RulesRecord(live.version, live.sha256, live.text, generation, False)
    return record


def record_rules(r: Any, keys: Keys, version: int, sha256: str, text: bytes, gen: int) -> None:
    r.hset(
        keys.rules(version),
        mapping={"sha256": sha256, "text": text, "generation": gen, "published": time.time()},
    )
    r.hdel(keys.rules(version), "pruned")


def publishing(r: Any, keys: Keys) -> Publishing | None:
    raw = r.hgetall(keys.publishing)
    if not raw:
        return None
    return Publishing(
        source=raw.get(b"source", b"").decode(),
        target=raw[b"target"].decode(),
        previous=raw.get(b"previous", b"").decode(),
        phase=raw.get(b"phase", b"rebuild").decode(),
        on_switch=raw.get(b"on_switch", b"fire").decode(),
        kind=raw.get(b"kind", b"rescore").decode(),
    )


def begin_publishing(r: Any, keys: Keys, job: Publishing) -> None:
    r.hset(
        keys.publishing,
        mapping={
            "source": job.source,
            "target": job.target,
            "previous": job.previous,
            "phase": job.phase,
            "on_switch": job.on_switch,
            "kind": job.kind,
            "started": time.time(),
        },
    )


LOCK_TTL = 30
"""Seconds the publish lock lasts unless renewed (every page of a replay renews it)."""


def _me() -> str:
    import os
    import socket

    return f"{socket.gethostname()} pid {os.getpid()}"


def take_lock(r: Any, keys: Keys) -> None:
    """One publish process at a time (two would replay into the same generation at once).

    The lock expires ``LOCK_TTL`` after its last renewal; a holder on this host whose process
    is gone (killed) is taken over at once, so a re-run after kill -9 need not wait."""
    import os

    name = f"{keys.publishing}:lock"
    if r.set(name, _me(), nx=True, ex=LOCK_TTL):
        return
    holder = (r.get(name) or b"").decode()
    host, _, pid = holder.partition(" pid ")
    import socket

    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            r.set(name, _me(), ex=LOCK_TTL)
            return
        except PermissionError:
            pass
    raise PublishError(
        f"another publish is running ({holder}): wait for it, or if it died on another host, "
        f"for its lock to lapse (at most {LOCK_TTL} s)"
    )


def renew_lock(r: Any, keys: Keys) -> None:
    r.set(f"{keys.publishing}:lock", _me(), ex=LOCK_TTL)


def release_lock(r: Any, keys: Keys) -> None:
    name = f"{keys.publishing}:lock"
    if (r.get(name) or b"").decode() == _me():
        r.delete(name)


def set_phase(r: Any, keys: Keys, phase: str) -> None:
    r.hset(keys.publishing, "phase", phase)


def next_version(r: Any, keys: Keys) -> int:
    """One more than every rules version recorded."""
    live = live_rules(r, keys)
    top = int(r.hget(keys.meta, "rules_version_max") or 0)
    return max(top, live.version if live else 0) + 1


def next_generation(r: Any, keys: Keys) -> int:
    top = int(r.hget(keys.meta, "generation_max") or 0)
    return max(top, live_generation(r, keys)) + 1


# --------------------------------------------------------------------------- input positions


def acked_upto(r: Any, keys: Keys, p: int) -> str | None:
    """The id of the last input entry of ``p`` the flow has acknowledged (None: none yet).

    The flow acknowledges each partition's entries in stream order, so the acknowledged
    entries are those below the oldest pending one, or all that were delivered if none is.
    """
    key = keys.input(p)
    groups = {g["name"].decode(): g for g in r.xinfo_groups(key)} if r.exists(key) else {}
    group = groups.get(GROUP)
    if group is None:
        return None
    delivered = group["last-delivered-id"]
    delivered = delivered.decode() if isinstance(delivered, bytes) else str(delivered)
    if delivered == "0-0":
        return None
    if int(group.get("pending", 0)) == 0:
        return delivered
    oldest = r.xpending(key, GROUP)["min"]
    oldest = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
    before = r.xrevrange(key, max="(" + oldest, count=1)
    if before:
        return before[0][0].decode()
    # nothing retained below the oldest pending entry: the position just before it
    ms, _, seq = oldest.partition("-")
    return f"{ms}-{int(seq) - 1}" if int(seq) > 0 else f"{int(ms) - 1}-18446744073709551615"


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def removed_entries(r: Any, keys: Keys, p: int) -> int:
    """How many of ``p``'s oldest input entries are gone (trimmed): ``entries-added`` minus
    the length (``XINFO STREAM``; trimming removes the oldest first). A replay that holds the
    first N entries is complete as long as this is at most N. (``max-deleted-entry-id`` does
    not help: XTRIM leaves it alone.)"""
    key = keys.input(p)
    if not r.exists(key):
        return 0
    info = r.xinfo_stream(key)
    return int(info.get("entries-added", 0)) - int(info.get("length", 0))


# --------------------------------------------------------------------------- the switch

_HOLD_LUA = """
local now = redis.call('GET', KEYS[1]) or ''
if now == ARGV[2] then return 1 end
if now ~= ARGV[1] then return {err = 'live marker is ' .. now .. ', expected ' .. ARGV[1]} end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

_FIRE_LUA = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[1], '*', 't', ARGV[i + 1])
    n = n + 1
  end
end
return n
"""


def hold(r: Any, keys: Keys, p: int, source: str, target: str) -> None:
    """Hold partition ``p`` for the switch (idempotent): its old generation stays live, the
    flow's checkpoints of it are refused until :func:`finish`."""
    try:
        r.eval(_HOLD_LUA, 1, keys.live(p), source, f"{source}>{target}")
    except Exception as err:
        raise PublishError(
            f"partition {p}: cannot hold it for the switch ({err}); another publish or a "
            "rollback changed it: run `leadscore rules --redis URL` to see what is live"
        ) from err


_UNHOLD_LUA = """
if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then
  if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
end
return 1
"""


def abort(r: Any, keys: Keys, job: Publishing) -> None:
    """Give a publish up before its switch: partitions it holds go back to the old
    generation (their flow commits again), and no publish is in progress any more. Its
    partial generation stays until ``--prune``."""
    for p in range(keys.partitions):
        r.eval(_UNHOLD_LUA, 1, keys.live(p), f"{job.source}>{job.target}", job.source)
    r.delete(keys.publishing)


def fire_once(r: Any, keys: Keys, p: int, firings: list[tuple[str, bytes]]) -> int:
    """XADD each switch firing to ``p``'s triggers stream unless its contact already got one
    (the target generation's ``switched`` set): a publish re-run after a crash resumes
    without firing twice. Returns how many were written."""
    if not firings:
        return 0
    target = keys  # the caller passes the target generation's layout
    argv: list[Any] = []
    for contact, record in firings:
        argv += (contact, record)
    return int(r.eval(_FIRE_LUA, 2, target.triggers(p), target.switched(p), *argv))


def finish(
    r: Any,
    keys: Keys,
    job: Publishing,
    record: RulesRecord,
    *,
    published: float,
    step: Callable[[str], None] | None = None,
) -> None:
    """Switch every partition to the target, with the meta: in ONE transaction on a single
    node; on Redis Cluster commit, then roll forward (module docstring). Repeatable: a
    re-run after a crash in the middle finishes it. ``step(name)`` is called between the
    steps of the roll forward (``committed``, ``switched:P``)."""
    target = keys.at(job.generation)
    top_gen = max(int(r.hget(keys.meta, "generation_max") or 0), job.generation)
    top_ver = max(int(r.hget(keys.meta, "rules_version_max") or 0), record.version)
    meta = {
        "rules_version": record.version,
        "rules_sha256": record.sha256,
        "rules_text": record.text,
        "rules_published": published,
        "rules_previous": job.previous,
        "generation": job.generation,
        "generation_max": top_gen,
        "rules_version_max": top_ver,
    }
    if not is_cluster(r):
        pipe = r.pipeline(transaction=True)
        for p in range(keys.partitions):
            pipe.set(keys.live(p), job.target)
            pipe.delete(target.switched(p), target.differ(p), target.recheck(p))
        pipe.hset(keys.meta, mapping=meta)
        pipe.delete(keys.publishing)
        pipe.execute()
        return
    step = step or (lambda _name: None)
    # the commit point: from here readers serve the target where a marker is still held
    r.hset(keys.publishing, "phase", SWITCHED)
    step("committed")
    r.hset(keys.meta, mapping=meta)
    for p in range(keys.partitions):
        pipe = r.pipeline(transaction=True)  # one partition: one slot
        pipe.set(keys.live(p), job.target)
        pipe.delete(target.switched(p), target.differ(p), target.recheck(p))
        pipe.execute()
        step(f"switched:{p}")
    r.delete(keys.publishing)


# --------------------------------------------------------------------------- prune


def generation_keys(r: Any, keys: Keys, generation: int) -> Iterator[tuple[int, list[str]]]:
    """``(partition, key names)``: every key of ``generation``'s state, from ONE SCAN of the
    keyspace (on Redis Cluster, of each master: redis-py's ``scan_iter`` walks every node),
    grouped by partition so that each UNLINK names keys of one slot. SCAN never blocks Redis;
    a SCAN per partition would walk every key once per partition."""
    head = f"{keys.prefix}:{{"
    # (pattern, what the name holds after "PREFIX:{p}:")
    wanted: list[tuple[str, Callable[[str], bool]]]
    if generation:
        mark = f"g{generation}:"
        wanted = [(f"{head}*}}:{mark}*", lambda rest: rest.startswith(mark))]
    else:  # generation 0 has no `g` part: its per-contact keys and its own singles
        wanted = [
            (f"{head}*}}:s:*", lambda rest: rest.startswith("s:")),
            (f"{head}*}}:c:*", lambda rest: rest.startswith("c:")),
            (f"{head}*}}:h:*", lambda rest: rest.startswith("h:")),
        ]
        for single in ("timers", "clock", "upto", "switched", "differ", "recheck"):
            wanted.append((f"{head}*}}:{single}", lambda rest, single=single: rest == single))
    for pattern, belongs in wanted:
        pending: dict[int, list[str]] = {}
        for raw in r.scan_iter(match=pattern, count=5000):
            text = raw.decode()
            tag_end = text.find("}:", len(head))
            tag = text[len(head) : tag_end]
            if tag_end < 0 or not tag.isdigit() or not belongs(text[tag_end + 2 :]):
                continue  # another generation's key (a contact id may hold "}:s:")
            names = pending.setdefault(int(tag), [])
            names.append(text)
            if len(names) >= 1000:
                yield int(tag), pending.pop(int(tag))
        for p in sorted(pending):
            yield p, pending.pop(p)


def prune(r: Any, keys: Keys, generation: int) -> int:
    """Delete every key of ``generation`` (not the live one); returns how many went."""
    if generation == live_generation(r, keys) or any(
        parse_live(m)[0] == generation for m in read_markers(r, keys)
    ):
        raise PublishError(f"generation {generation} is live: it cannot be pruned")
    removed = 0
    for _p, names in generation_keys(r, keys, generation):
        removed += int(r.unlink(*names))
    return removed


def mark_pruned(r: Any, keys: Keys, generation: int) -> list[int]:
    """Mark every rules version of ``generation`` pruned (a rollback to it is refused)."""
    top = int(r.hget(keys.meta, "rules_version_max") or 0)
    versions = []
    for v in range(1, top + 1):
        rec = rules_record(r, keys, v)
        if rec is not None and rec.generation == generation:
            r.hset(keys.rules(v), "pruned", 1)
            versions.append(v)
    return versions
