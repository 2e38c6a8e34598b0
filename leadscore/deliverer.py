"""The delivery process (`leadscore deliver`): triggers streams in, signed POSTs out.

At least once, in order per contact and channel, apart from the flow:

- Every partition's ``triggers`` stream is read with the consumer group ``deliver``. A
  firing is acknowledged (XACK) only once each of its delivery actions got a 2xx or was
  dead-lettered, so a crash (kill -9) leaves exactly the unfinished firings pending, and
  they are re-sent (with the same ids) by whoever reads the partition next.
- Several deliverers share the partitions. Each one heartbeats in ``{prefix}:deliverers``;
  partitions are spread over the live ones by rendezvous hashing, and a deliverer reads a
  partition only while it holds the partition's lease (``{prefix}:{p}:deliverer``, renewed
  every third of its TTL). One reader per partition is what keeps a contact's deliveries in
  firing order. When a lease changes hands (its holder died and the lease expired, or it
  handed it over), the new holder claims every entry still pending in the group (XAUTOCLAIM)
  and re-reads them before anything new: a crashed deliverer's in-flight work is re-sent
  after at most the lease TTL.
- Within a deliverer, one queue per (contact, target): its head is sent (and retried) while
  the rest wait; different contacts go out in parallel, bounded by ``concurrency``.

Decisions (ids, bodies, signatures, what a status means) are in `leadscore/delivery.py`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import signal
import socket
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from redis.exceptions import RedisError, ResponseError

from leadscore.delivery import (
    DONE,
    FINAL,
    SIGNATURE_HEADER,
    Plan,
    RetryPolicy,
    Target,
    classify,
    delivery_id,
    fired_at,
    render_body,
    retry_after,
    sign,
)
from leadscore.events import format_ts
from state.keys import DELIVER_GROUP, Keys

log = logging.getLogger("leadscore.deliver")

DELIVERED = Counter(
    "leadscore_deliver_delivered_total", "Deliveries answered 2xx", ["channel", "status"]
)
FAILED = Counter(
    "leadscore_deliver_failed_total",
    "Delivery attempts that failed (status, or timeout / connect_error)",
    ["channel", "status"],
)
RETRIED = Counter(
    "leadscore_deliver_retried_total", "Failed attempts scheduled again", ["channel", "status"]
)
DEAD_LETTERED = Counter(
    "leadscore_deliver_dead_lettered_total",
    "Deliveries given up and written to the undelivered stream",
    ["channel", "status"],
)
LATENCY = Histogram(
    "leadscore_deliver_latency_seconds",
    "From the firing to its 2xx",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
OLDEST = Gauge(
    "leadscore_deliver_oldest_undelivered_seconds",
    "Age of the oldest firing this deliverer holds unacknowledged (0: none)",
)
OWNED = Gauge("leadscore_deliver_partitions_owned", "Partitions whose lease this deliverer holds")

# Take the lease if it is free or already ours (a restart under the same name); renew it.
_TAKE_LUA = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


#: Seconds acknowledgements are gathered before one XACK round trip carries them.
ACK_EVERY = 0.01


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class DeliverConfig:
    redis_url: str
    prefix: str = "ls"
    name: str = field(default_factory=default_name)
    concurrency: int = 16
    max_inflight: int = 1000  # firings read and not yet acknowledged, per deliverer
    timeout: float = 10.0  # seconds per attempt (connect, write, read each)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    lease_ttl: float = 10.0
    block_ms: int = 100
    read_count: int = 100
    seed: int | None = None


# --------------------------------------------------------------------------- bookkeeping


@dataclass(eq=False, slots=True)
class Owned:
    """A partition whose lease this deliverer holds."""

    p: int
    cursor: str = "0"  # "0": re-reading our pending entries; ">": new ones
    draining: bool = False  # handed to another deliverer: read nothing more, then release
    alive: bool = True
    unacked: dict[str, Firing] = field(default_factory=dict)  # stream order
    renewed: float = 0.0
    posting: int = 0  # requests under way for this partition
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # wakes back-offs when let go


@dataclass(eq=False, slots=True)
class Firing:
    owner: Owned
    entry_id: str
    record: dict[str, Any]
    fired_at: float
    remaining: int = 0
    dead: list[bytes] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Job:
    firing: Firing
    index: int
    action: dict[str, Any]
    target: Target
    did: str
    body: bytes
    replay: bool = False  # a --replay-dead re-send: no age bound
    attempts: int = 0
    status: int | None = None
    error: str = ""


def owner_of(p: int, members: Iterable[str]) -> str | None:
    """Rendezvous hashing: each partition goes to the member with the highest hash, so a
    member joining or leaving moves only the partitions it takes or had."""
    return max(members, key=lambda m: zlib.crc32(f"{m}\0{p}".encode()), default=None)


def _status_label(status: int | None, error: str) -> str:
    if status is not None:
        return str(status)
    return "timeout" if error.startswith("timeout") else "connect_error"


class Deliverer:
    """One deliverer process's work; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, config: DeliverConfig, plan: Plan) -> None:
        self.config = config
        self.plan = plan
        self.rng = random.Random(config.seed)
        self.owned: dict[int, Owned] = {}
        self.queues: dict[tuple[str, str, str], collections.deque[Job]] = {}
        self.workers: set[asyncio.Task[None]] = set()
        self.acks: dict[int, list[str]] = {}
        self.dead_writes: list[tuple[int, str, list[bytes]]] = []
        self.stopping = asyncio.Event()
        self.ack_ready = asyncio.Event()
        self.partitions = 0
        self.keys = Keys(config.prefix)
        self.inflight = 0
        self.failed = False

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        cfg = self.config
        # httpx logs every request's URL at INFO; a channel's URL may be a secret (Slack)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.r = aioredis.Redis.from_url(cfg.redis_url, socket_timeout=max(5.0, cfg.lease_ttl))
        timeout = httpx.Timeout(cfg.timeout)
        limits = httpx.Limits(
            max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency
        )
        self.http = httpx.AsyncClient(
            timeout=timeout, limits=limits, follow_redirects=False, trust_env=False
        )
        self.sem = asyncio.Semaphore(cfg.concurrency)
        self.partitions = await self._partitions()
        self.keys = Keys(cfg.prefix, self.partitions)

    async def close(self) -> None:
        await self.http.aclose()
        await self.r.aclose()

    async def _retrying(self, what: str, call: Any) -> Any:
        """``await call()``, retrying Redis failures with back-off (up to 2 s) until stopped:
        a deliverer started before Redis, or across its restart, waits instead of dying."""
        failures = 0
        while True:
            try:
                return await call()
            except (RedisError, OSError) as err:
                failures += 1
                delay = min(2.0, 0.05 * 2**failures)
                if failures == 1 or failures % 30 == 0:
                    log.warning(
                        "%s: Redis failing (%s: %s); retrying", what, type(err).__name__, err
                    )
                await self._pause(delay)
                if self.stopping.is_set():
                    raise

    async def _partitions(self) -> int:
        """The partition count from ``{prefix}:meta``, waiting for the flow to write it."""
        meta = f"{self.config.prefix}:meta"
        warned = False
        while not self.stopping.is_set():
            raw = await self._retrying("read meta", lambda: self.r.hget(meta, "partitions"))
            if raw is not None:
                return int(raw)
            if not warned:
                log.warning("no %s yet: waiting for the flow to start", meta)
                warned = True
            await self._pause(1.0)
        return 0

    async def ensure_groups(self) -> None:
        async def create(p: int) -> None:
            try:
                await self.r.xgroup_create(
                    self.keys.triggers(p), DELIVER_GROUP, id="0", mkstream=True
                )
            except ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise

        for p in range(self.partitions):
            await self._retrying("create the consumer group", lambda p=p: create(p))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Deliver until ``stop`` is set, then let in-flight requests finish and hand over."""

        async def follow(event: asyncio.Event) -> None:
            await event.wait()
            self.stopping.set()

        follower = asyncio.create_task(follow(stop)) if stop is not None else None
        try:
            await self.open()
            if self.partitions == 0:
                return
            await self.ensure_groups()
            OLDEST.set_function(self.oldest_age)
            tasks = [
                asyncio.create_task(self._guard(loop))
                for loop in (self._lease_loop, self._read_loop, self._ack_loop)
            ]
            await self.stopping.wait()
            await self._shutdown(tasks)
        except (RedisError, OSError):
            if not self.stopping.is_set():
                raise  # only while stopping does a Redis failure end the start quietly
        finally:
            if follower is not None:
                follower.cancel()
            await self.close()

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        """Requests under way finish (bounded by the timeout), none start; the loops end by
        themselves (a read blocks at most ``block_ms``), so no Redis call is cut in half."""
        self.ack_ready.set()
        running = {*tasks, *self.workers}
        _, late = await asyncio.wait(running, timeout=self.config.timeout + 1.0)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=2.0)
        try:
            await asyncio.wait_for(self._hand_over(), 5.0)
        except (RedisError, OSError, TimeoutError) as err:
            log.warning("could not hand over cleanly (%s); leases expire by themselves", err)
        self.owned.clear()
        OWNED.set(0)

    async def _hand_over(self) -> None:
        await self._flush_acks()
        await self.r.zrem(self.keys.deliverers, self.config.name)
        for p in list(self.owned):
            await self.r.eval(_RELEASE_LUA, 1, self.keys.deliver_lease(p), self.config.name)

    async def _guard(self, loop: Any) -> None:
        """A loop that raised stops the deliverer (loudly) instead of dying unseen."""
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; stopping", loop.__name__)
            self.failed = True
            self.stopping.set()

    def oldest_age(self) -> float:
        """For the gauge, read from the metrics server's thread while the loop mutates."""
        for _ in range(5):
            try:
                oldest = min(
                    (
                        next(iter(o.unacked.values())).fired_at
                        for o in list(self.owned.values())
                        if o.unacked
                    ),
                    default=None,
                )
            except (RuntimeError, StopIteration):
                continue
            return 0.0 if oldest is None else max(0.0, time.time() - oldest)
        return 0.0

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    # -- leases ---------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        cfg = self.config
        period = cfg.lease_ttl / 3
        while not self.stopping.is_set():
            try:
                await self._balance()
            except (RedisError, OSError) as err:
                log.warning("lease round failed (%s: %s); retrying", type(err).__name__, err)
                now = time.monotonic()
                for owned in list(self.owned.values()):
                    if now - owned.renewed > cfg.lease_ttl:
                        self._lose(owned, "its lease could not be renewed in time")
            await self._pause(period)

    async def _balance(self) -> None:
        cfg, keys = self.config, self.keys
        now = time.time()
        ttl_ms = str(int(cfg.lease_ttl * 1000))
        await self.r.zadd(keys.deliverers, {cfg.name: now})
        await self.r.zremrangebyscore(keys.deliverers, "-inf", now - cfg.lease_ttl)
        members = [m.decode() for m in await self.r.zrange(keys.deliverers, 0, -1)]
        for p in range(self.partitions):
            wanted = owner_of(p, members) == cfg.name
            owned = self.owned.get(p)
            if owned is None:
                lease = keys.deliver_lease(p)
                if wanted and await self.r.eval(_TAKE_LUA, 1, lease, cfg.name, ttl_ms):
                    await self._acquire(p)
                continue
            if not await self.r.eval(_TAKE_LUA, 1, keys.deliver_lease(p), cfg.name, ttl_ms):
                self._lose(owned, "another deliverer holds its lease")
                continue
            owned.renewed = time.monotonic()
            if not wanted:
                owned.draining = True
            # Hand over once no request is under way: what waits (queued, or backing off
            # from a failing receiver) stays pending, and the next holder re-sends it in
            # order instead of waiting for our back-offs.
            if owned.draining and not owned.posting:
                await self.r.eval(_RELEASE_LUA, 1, keys.deliver_lease(p), cfg.name)
                left = len(owned.unacked)
                self._let_go(owned)
                log.info("partition %d handed over (%d unfinished firings left pending)", p, left)
        OWNED.set(len(self.owned))

    async def _acquire(self, p: int) -> None:
        """Claim every entry still pending in the group (a crashed or departed holder's
        in-flight firings) so they are re-read, in stream order, before new ones."""
        key = self.keys.triggers(p)
        start = "0-0"
        claimed = 0
        while True:
            reply = await self.r.xautoclaim(
                key, DELIVER_GROUP, self.config.name, 0, start_id=start, count=1000
            )
            start, ids = reply[0], reply[1]
            claimed += len(ids)
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:  # trimmed away while pending: nothing left to deliver
                await self.r.xack(key, DELIVER_GROUP, *deleted)
            if start in (b"0-0", "0-0"):
                break
        self.owned[p] = Owned(p, renewed=time.monotonic())
        OWNED.set(len(self.owned))
        log.info("partition %d acquired (%d pending firings claimed)", p, claimed)

    def _lose(self, owned: Owned, why: str) -> None:
        log.warning("partition %d lost: %s; its unfinished firings stay pending", owned.p, why)
        self._let_go(owned)

    def _let_go(self, owned: Owned) -> None:
        """Forget a partition: its unacknowledged firings stay pending in the group."""
        owned.alive = False
        owned.gone.set()
        self.inflight -= len(owned.unacked)
        owned.unacked.clear()
        self.owned.pop(owned.p, None)
        OWNED.set(len(self.owned))

    # -- reading --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        cfg = self.config
        failures = 0
        while not self.stopping.is_set():
            readable = {
                self.keys.triggers(o.p): o.cursor
                for o in self.owned.values()
                if not o.draining and o.alive
            }
            if not readable or self.inflight >= cfg.max_inflight:
                await self._pause(0.01 if readable else cfg.block_ms / 1000)
                continue
            history = any(c != ">" for c in readable.values())
            try:
                reply = await self.r.xreadgroup(
                    DELIVER_GROUP,
                    cfg.name,
                    readable,  # type: ignore[arg-type]
                    count=cfg.read_count,
                    block=None if history else cfg.block_ms,
                )
                failures = 0
            except (RedisError, OSError) as err:
                failures += 1
                log.warning("reading triggers failed (%s: %s)", type(err).__name__, err)
                await self._pause(min(2.0, 0.05 * 2**failures))
                continue
            for key, entries in reply or []:
                p = int(key.decode().rsplit("{", 1)[1].split("}", 1)[0])
                owned = self.owned.get(p)
                if owned is None or not owned.alive:
                    continue
                if owned.cursor != ">":
                    owned.cursor = entries[-1][0].decode() if entries else ">"
                for entry_id, fields in entries:
                    self._admit(owned, entry_id.decode(), fields)

    def _admit(self, owned: Owned, entry_id: str, fields: dict[bytes, bytes] | None) -> None:
        if entry_id in owned.unacked:
            return
        raw = (fields or {}).get(b"t")
        if raw is None:  # deleted while pending
            self._ack(owned.p, entry_id)
            return
        try:
            record = orjson.loads(raw)
            actions = record["actions"]
            if not isinstance(actions, list):
                raise TypeError("actions is not a list")
        except (orjson.JSONDecodeError, KeyError, TypeError) as err:
            log.error("triggers entry %s of partition %d is unreadable: %s", entry_id, owned.p, err)
            bad = {"entry": entry_id, "partition": owned.p, "error": f"unreadable: {err}"}
            self.dead_writes.append((owned.p, entry_id, [orjson.dumps(bad)]))
            self.ack_ready.set()
            return
        firing = Firing(owned, entry_id, record, fired_at(record, entry_id))
        jobs: list[Job] = []
        for i, action in enumerate(actions):
            if not isinstance(action, dict):
                continue
            target = self.plan.target(action)
            if target is None:
                continue
            did = delivery_id(self.config.prefix, owned.p, entry_id, i)
            if isinstance(target, str):
                firing.dead.append(self._dead_record(firing, i, action, None, did, 0, None, target))
                DEAD_LETTERED.labels(str(action.get("notify", "webhook")), "config").inc()
                continue
            body = render_body(target, record, did, self.plan.trigger_names)
            jobs.append(Job(firing, i, action, target, did, body))
        owned.unacked[entry_id] = firing
        self.inflight += 1
        firing.remaining = len(jobs)
        if not jobs:
            self._complete(firing)
        for job in jobs:
            self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        key = (str(job.firing.record.get("contact")), job.target.name, job.target.url)
        queue = self.queues.get(key)
        if queue is not None:
            queue.append(job)
            return
        self.queues[key] = collections.deque([job])
        task = asyncio.create_task(self._drain(key))
        self.workers.add(task)
        task.add_done_callback(self.workers.discard)

    async def _drain(self, key: tuple[str, str, str]) -> None:
        """Send one (contact, target)'s deliveries one after the other, in firing order."""
        queue = self.queues[key]
        try:
            while queue and not self.stopping.is_set():
                job = queue[0]
                owner = job.firing.owner
                finished = owner.alive and await self.attempt(job)
                if not finished and self.stopping.is_set():
                    break  # stays pending: re-sent by the next reader of the partition
                queue.popleft()  # done, dead-lettered, or its partition went elsewhere
                if finished and owner.alive:
                    job.firing.remaining -= 1
                    if job.firing.remaining == 0:
                        self._complete(job.firing)
        finally:
            del self.queues[key]

    def _complete(self, firing: Firing) -> None:
        owned = firing.owner
        if owned.unacked.pop(firing.entry_id, None) is None:
            return
        self.inflight -= 1
        if firing.dead:
            self.dead_writes.append((owned.p, firing.entry_id, firing.dead))
        else:
            self._ack(owned.p, firing.entry_id)
        self.ack_ready.set()

    def _ack(self, p: int, entry_id: str) -> None:
        self.acks.setdefault(p, []).append(entry_id)
        self.ack_ready.set()

    async def _ack_loop(self) -> None:
        while not self.stopping.is_set():
            await self.ack_ready.wait()
            # gather what completes meanwhile: one XACK round trip per ~10 ms, not per firing
            # (acknowledging is off the delivery path; a crash re-sends these at most)
            await self._pause(ACK_EVERY)
            self.ack_ready.clear()
            try:
                await self._flush_acks()
            except (RedisError, OSError) as err:
                log.warning("acknowledging failed (%s: %s); retrying", type(err).__name__, err)
                await asyncio.sleep(0.2)
                self.ack_ready.set()

    async def _flush_acks(self) -> None:
        acks, self.acks = self.acks, {}
        dead, self.dead_writes = self.dead_writes, []
        try:
            if acks:
                pipe = self.r.pipeline(transaction=False)
                for p, ids in acks.items():
                    pipe.xack(self.keys.triggers(p), DELIVER_GROUP, *ids)
                await pipe.execute()
            for p, entry_id, records in dead:  # the dead letters and the ack commit together
                pipe = self.r.pipeline(transaction=True)
                for record in records:
                    pipe.xadd(self.keys.undelivered(p), {"u": record})
                pipe.xack(self.keys.triggers(p), DELIVER_GROUP, entry_id)
                await pipe.execute()
                dead = dead[1:]
        except BaseException:
            for p, ids in acks.items():  # an XACK twice is harmless; losing one is not
                self.acks.setdefault(p, []).extend(ids)
            self.dead_writes[:0] = dead
            raise

    # -- sending --------------------------------------------------------------------------

    async def attempt(self, job: Job) -> bool:
        """Deliver ``job`` (with its retries): True once it is done or dead-lettered, False
        if it was abandoned (stopping, or the partition went to another deliverer)."""
        policy = self.config.policy
        name = job.target.name
        while True:
            if self.stopping.is_set() or not (job.replay or job.firing.owner.alive):
                return False
            if not job.replay and time.time() - job.firing.fired_at > policy.max_age:
                self._give_up(job, f"expired: the firing is older than {policy.max_age:g}s")
                return True
            owner = job.firing.owner
            async with self.sem:
                if not (job.replay or owner.alive):
                    return False  # let go while waiting for a slot
                job.attempts += 1
                owner.posting += 1
                try:
                    status, error, wait = await self._post(job)
                finally:
                    owner.posting -= 1
            job.status, job.error = status, error
            verdict = classify(status)
            label = _status_label(status, error)
            if verdict == DONE:
                DELIVERED.labels(name, label).inc()
                if not job.replay:
                    LATENCY.labels(name).observe(max(0.0, time.time() - job.firing.fired_at))
                return True
            FAILED.labels(name, label).inc()
            if verdict == FINAL or job.attempts >= policy.max_attempts:
                self._give_up(job, error or f"HTTP {status}")
                return True
            delay = policy.delay(job.attempts, self.rng)
            if wait is not None:
                delay = min(wait, policy.max_retry_after)
            if not job.replay and time.time() + delay - job.firing.fired_at > policy.max_age:
                self._give_up(job, f"{error or f'HTTP {status}'}; next try past max age")
                return True
            RETRIED.labels(name, label).inc()
            await self._back_off(delay, owner)

    async def _back_off(self, seconds: float, owner: Owned) -> None:
        """Sleep before a retry; wake early when stopping or when the partition is let go."""
        waits = [
            asyncio.ensure_future(self.stopping.wait()),
            asyncio.ensure_future(owner.gone.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _post(self, job: Job) -> tuple[int | None, str, float | None]:
        """One POST: ``(status, error text, Retry-After seconds)``."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "leadscore-deliver",
            "Idempotency-Key": job.did,
            "X-Leadscore-Attempt": str(job.attempts),
        }
        if job.target.secret:
            headers[SIGNATURE_HEADER] = sign(job.target.secret, job.body, int(time.time()))
        try:
            resp = await self.http.post(job.target.url, content=job.body, headers=headers)
        except httpx.TimeoutException as err:
            return None, f"timeout ({type(err).__name__})", None
        except httpx.HTTPError as err:  # never quote the URL: a channel's may be secret
            text = str(err).replace(job.target.url, "<url>")[:200]
            return None, f"connection error: {type(err).__name__}: {text}", None
        status = resp.status_code
        wait = retry_after(resp.headers.get("retry-after"), time.time())
        error = "" if 200 <= status < 300 else f"HTTP {status}: {resp.text[:200]}"
        return status, error, wait if status in (429, 503) else None

    def _give_up(self, job: Job, why: str) -> None:
        DEAD_LETTERED.labels(job.target.name, _status_label(job.status, job.error)).inc()
        log.warning(
            "delivery %s to %s given up after %d attempts: %s",
            job.did,
            job.target.name,
            job.attempts,
            why,
        )
        job.firing.dead.append(
            self._dead_record(
                job.firing,
                job.index,
                job.action,
                job.target.name,
                job.did,
                job.attempts,
                job.status,
                why,
            )
        )

    def _dead_record(
        self,
        firing: Firing,
        index: int,
        action: dict[str, Any],
        channel: str | None,
        did: str,
        attempts: int,
        status: int | None,
        error: str,
    ) -> bytes:
        return orjson.dumps(
            {
                "id": did,
                "partition": firing.owner.p,
                "entry": firing.entry_id,
                "index": index,
                "action": action,
                "channel": channel,
                "status": status,
                "error": error,
                "attempts": attempts,
                "fired_at": format_ts(firing.fired_at),
                "dead_at": format_ts(time.time()),
                "record": firing.record,
            }
        )


# --------------------------------------------------------------------------- replay


@dataclass(slots=True)
class ReplayResult:
    sent: int = 0
    failed: int = 0  # still failing: left in the undelivered stream with the new status


async def replay_dead(config: DeliverConfig, plan: Plan) -> ReplayResult:
    """Re-send every dead letter (same id, body rebuilt with today's channels), in order per
    contact and target; a delivered one is deleted, a failing one is kept with its new
    status. Age bounds do not apply: replaying is an explicit request."""
    d = Deliverer(config, plan)
    await d.open()
    result = ReplayResult()
    try:
        groups: dict[tuple[str, str, str], list[tuple[int, str, dict[str, Any], Job | str]]] = {}
        for p in range(d.partitions):
            key = d.keys.undelivered(p)
            for entry_id, fields in await d.r.xrange(key):
                letter = orjson.loads(fields[b"u"])
                record = letter.get("record") or {}
                action = letter.get("action") or {}
                target = plan.target(action) if action else "no action in the dead letter"
                owner = Owned(p)
                firing = Firing(owner, str(letter.get("entry", "")), record, time.time())
                if isinstance(target, Target):
                    body = render_body(target, record, letter["id"], plan.trigger_names)
                    job: Job | str = Job(
                        firing,
                        int(letter.get("index", 0)),
                        action,
                        target,
                        letter["id"],
                        body,
                        replay=True,
                        attempts=0,
                    )
                    gkey = (str(record.get("contact")), target.name, target.url)
                else:
                    job = target or "not a delivery"
                    gkey = (str(record.get("contact")), "", "")
                groups.setdefault(gkey, []).append((p, entry_id.decode(), letter, job))

        async def one_group(items: list[tuple[int, str, dict[str, Any], Job | str]]) -> None:
            for p, entry_id, letter, job in items:
                key = d.keys.undelivered(p)
                if isinstance(job, Job):
                    await d.attempt(job)
                    ok = not job.firing.dead
                else:
                    ok = False
                if ok:
                    await d.r.xdel(key, entry_id)
                    result.sent += 1
                    continue
                result.failed += 1
                if isinstance(job, Job):
                    letter = {
                        **letter,
                        "status": job.status,
                        "error": job.error,
                        "attempts": int(letter.get("attempts", 0)) + job.attempts,
                        "dead_at": format_ts(time.time()),
                    }
                else:
                    letter = {**letter, "error": job, "dead_at": format_ts(time.time())}
                pipe = d.r.pipeline(transaction=True)
                pipe.xadd(key, {"u": orjson.dumps(letter)})
                pipe.xdel(key, entry_id)
                await pipe.execute()

        await asyncio.gather(*(one_group(items) for items in groups.values()))
    finally:
        await d.close()
    return result


# --------------------------------------------------------------------------- process


def run_deliverer(
    config: DeliverConfig,
    plan: Plan,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> bool:
    """The process: deliver until SIGTERM or Ctrl-C (a second signal exits at once). False
    if it stopped because something failed (logged)."""
    if metrics_port is not None:
        start_http_server(metrics_port, addr=metrics_host)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                os._exit(128 + signum)
            log.info("stopping: finishing requests under way (a second signal exits now)")
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await deliverer.run(stop)

    deliverer = Deliverer(config, plan)
    asyncio.run(main())
    return not deliverer.failed
