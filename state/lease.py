"""The deployment's flow lease: one live flow (one Bytewax cluster) per prefix, fenced.

Every live flow of a deployment reads its input as the same consumer of the same groups, so
two independent flows on one Redis would read each other's entries and commit over each
other's states. The lease makes exactly one flow the writer:

- ``{prefix}:lease`` is a hash that never expires: ``token`` (a counter, incremented on every
  acquisition), ``holder`` (who: host and pid), ``until`` (Redis server time in ms when the
  lease lapses unless renewed), and one ``proc:{i}`` heartbeat per process of the holding
  Bytewax cluster. Expiry is decided by Redis's clock (``TIME`` in the scripts), never by a
  client's.
- ``{prefix}:{p}:fence`` holds, per partition, the token of the flow allowed to write it. The
  acquirer sets every fence to its new token BEFORE reading any input; the checkpoint script
  (``state/redis_store.py``) refuses a checkpoint whose token is not its partition's fence.
  So a process whose lease was taken over can never commit, even if it was paused and wakes
  up believing it still holds the lease (the fencing token pattern).
- The holder renews ``until`` from a heartbeat thread. If it cannot renew for most of the
  TTL (Redis unreachable, process paused) it stops reading before another flow may take
  over (:meth:`FlowLease.check`), and the flow exits non-zero.

A flow that finds the lease held waits (a hot standby: a rolling deploy's new process, or a
restarted container) until it is released or lapses, logging who holds it and for how long;
with ``wait=False`` it is refused at once. A holder in this host's PID namespace whose process
is gone (a killed process restarted by a supervisor) is taken over at once instead of after
the TTL.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from state.redis_store import (
    RETRYABLE,
    Client,
    RetryPolicy,
    StoreError,
    call_with_retry,
    connect,
)

log = logging.getLogger("leadscore.lease")

ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, holder, ttl, dead = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
local current = redis.call('HGET', lease, 'holder') or ''
local until_ = tonumber(redis.call('HGET', lease, 'until') or '0')
if until_ > now and not (dead ~= '' and current == dead) then
  return {0, current, until_ - now, tonumber(redis.call('HGET', lease, 'token') or '0')}
end
local token = redis.call('HINCRBY', lease, 'token', 1)
local procs = {}
for _, field in ipairs(redis.call('HKEYS', lease)) do
  if string.sub(field, 1, 5) == 'proc:' then table.insert(procs, field) end
end
if #procs > 0 then redis.call('HDEL', lease, unpack(procs)) end
redis.call('HSET', lease, 'holder', holder, 'until', now + ttl, 'since', now)
return {1, holder, ttl, token}
"""
"""Take the lease if it is free, lapsed, or held by ``dead`` (a holder known to be gone):
``{1, holder, ttl, new token}``; else ``{0, holder, ms left, token}``."""

RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, token, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
if redis.call('HGET', lease, 'token') ~= token then
  return {0, redis.call('HGET', lease, 'holder') or ''}
end
if ARGV[3] == 'release' then
  redis.call('HSET', lease, 'until', 0, 'holder', '')
  return {1, ''}
end
redis.call('HSET', lease, 'until', now + ttl, ARGV[3], ARGV[4] .. ' ' .. now)
return {1, ''}
"""
"""Renew (or release) the lease if ``token`` still holds it; ``{0, holder}`` if it does not.
Renewing also writes the calling process's heartbeat field ``proc:{i}``."""

FENCE_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return cur
"""
"""Raise a partition's fence to the new token (never lower it)."""


class LeaseHeld(StoreError):
    """Another flow holds the lease and this one was told not to wait."""


class LeaseLost(StoreError):
    """This flow no longer holds the lease: another took over, or it could not renew in time.
    It must stop at once; whatever it did not checkpoint is read again by the holder."""


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """What ``{prefix}:lease`` says now (for messages and ``leadscore`` status output)."""

    holder: str
    token: int
    ms_left: int
    heartbeats: dict[int, tuple[str, int]]  # process -> (who, server ms of its heartbeat)


def _pid_namespace() -> str:
    """This process's PID namespace (Linux), so that a pid is only judged in its own one."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "?"


def default_holder() -> str:
    return f"{socket.gethostname()} pid {os.getpid()} ns {_pid_namespace()}"


def _pid_gone(pid: int) -> bool:
    if pid == os.getpid():
        return True  # our own pid in the lease: a flow this process ran before
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def dead_local_holder(holder: str) -> str:
    """``holder`` if it names a process of this host and PID namespace that no longer runs,
    else ``""``. Another namespace (a restarted container, a sibling container on the host
    network) cannot be checked: its lease is left to lapse."""
    parts = holder.rsplit(" ", 4)
    if len(parts) != 5 or parts[1] != "pid" or parts[3] != "ns" or not parts[2].isdigit():
        return ""
    host, _, pid, _, namespace = parts
    if host != socket.gethostname() or namespace != _pid_namespace():
        return ""
    return holder if _pid_gone(int(pid)) else ""


class FlowLease:
    """This process's share of the deployment's flow lease.

    Process 0 of a Bytewax cluster (or a flow's only process) :meth:`acquire`\\s it before the
    cluster starts; the other processes :meth:`join` it once the cluster runs (process 0 holds
    it by then: Bytewax connects every process before any worker starts). Every process
    renews it and writes its own heartbeat; :meth:`check` is called before every read and
    raises :class:`LeaseLost` once this process may no longer act.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ls",
        cluster: bool = False,
        ttl: float = 10.0,
        process: int = 0,
        holder: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if ttl < 0.5:
            raise ValueError(f"the lease TTL must be at least 0.5 s, got {ttl}")
        self.url = url
        self.prefix = prefix
        self.key = f"{prefix}:lease"
        self.cluster = cluster
        self.ttl = ttl
        self.process = process
        self.holder = holder or default_holder()
        self.stop = stop
        self.token: int | None = None
        self.lost: str | None = None  # why this process lost the lease
        self.valid_until = 0.0  # time.monotonic() after which nothing may be read or written
        self._lock = threading.Lock()
        self._beat: threading.Thread | None = None
        self._done = threading.Event()
        self.r: Client = connect(url, cluster=cluster, socket_timeout=max(1.0, ttl / 4))

    # -- scripts ---------------------------------------------------------------------------

    def _script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return self.r.eval(script, len(keys), *keys, *args)

    def info(self) -> LeaseInfo:
        raw = {k.decode(): v.decode() for k, v in self.r.hgetall(self.key).items()}
        now_s, now_us = self.r.time()
        now = now_s * 1000 + now_us // 1000
        beats: dict[int, tuple[str, int]] = {}
        for field, value in raw.items():
            if field.startswith("proc:") and field[5:].isdigit():
                who, _, at = value.rpartition(" ")
                beats[int(field[5:])] = (who, int(at) if at.isdigit() else 0)
        return LeaseInfo(
            holder=raw.get("holder", ""),
            token=int(raw.get("token", 0)),
            ms_left=max(0, int(raw.get("until", 0)) - now),
            heartbeats=beats,
        )

    # -- taking it -------------------------------------------------------------------------

    def acquire(
        self,
        partitions: Iterable[int],
        fence_key: Callable[[int], str],
        *,
        wait: bool = True,
        poll: float = 0.5,
    ) -> int:
        """Take the lease (waiting while another flow holds it, unless ``wait`` is False),
        raise every partition's fence to the new token, start the heartbeat; the token."""
        ttl_ms = int(self.ttl * 1000)
        announced = ""
        while True:
            if self.stop is not None and self.stop.is_set():
                raise LeaseHeld("stopped while waiting for the flow lease; nothing was read")
            info = self._call("read the flow lease", self.info)
            dead = dead_local_holder(info.holder) if info.ms_left > 0 else ""
            sent = time.monotonic()
            got, holder, left, token = self._call(
                "take the flow lease",
                lambda dead=dead: self._script(
                    ACQUIRE_LUA, [self.key], [self.holder, ttl_ms, dead]
                ),
            )
            holder = holder.decode() if isinstance(holder, bytes) else str(holder)
            if got == 1:
                if dead:
                    log.warning(
                        "took the flow lease over from %s, which no longer runs on this host", dead
                    )
                break
            message = (
                f"another flow holds the lease {self.key} ({holder}, token {token}); it "
                f"lapses in {int(left) / 1000:.1f} s unless renewed"
            )
            if not wait:
                raise LeaseHeld(
                    f"{message}. One live flow per deployment: scale it with workers (-w) or "
                    "the processes of one Bytewax cluster (-p), stop the other flow, or start "
                    "this one with --standby (LEADSCORE_LEASE_WAIT=1) to wait until the lease "
                    "is free."
                )
            if holder != announced:
                log.warning("%s: standing by until it is released or lapses", message)
                announced = holder
            if self.stop is not None:
                self.stop.wait(poll)
            else:
                time.sleep(poll)
        self.token = int(token)
        self.valid_until = sent + self.ttl * 0.75
        keys = [fence_key(p) for p in partitions]
        ahead = max(self._fence(keys), default=0)
        if ahead >= self.token:
            # A fence above the counter: the lease hash was deleted or restored from an older
            # backup. Move the counter past every fence, or no checkpoint would ever pass.
            log.warning(
                "partition fences at token %d, ahead of %s: moving past them", ahead, self.key
            )
            self.token = ahead + 1
            self._call("move the lease token", lambda: self.r.hset(self.key, "token", self.token))
            self._fence(keys)
        log.info("holding the flow lease %s as %s (token %d)", self.key, self.holder, self.token)
        self._start()
        return self.token

    def _fence(self, keys: list[str]) -> list[int]:
        """Raise every fence to this lease's token (one call each: each fence is in its
        partition's slot); the fences found before."""
        return [
            int(
                self._call(
                    "raise a fence", lambda key=key: self._script(FENCE_LUA, [key], [self.token])
                )
            )
            for key in keys
        ]

    def join(self) -> int:
        """A process of the cluster that process 0 leads: adopt its token (the lease must be
        held now, or process 0 lost it) and start the heartbeat; the token."""
        with self._lock:
            if self.token is not None:
                return self.token
            sent = time.monotonic()
            info = self._call("read the flow lease", self.info)
            if info.ms_left <= 0:
                raise LeaseLost(
                    f"process {self.process}: no flow holds the lease {self.key} although "
                    "process 0 of this cluster took it before the cluster started: it lost it. "
                    "Restart the whole cluster."
                )
            self.token = info.token
            self.valid_until = sent + min(info.ms_left / 1000, self.ttl) * 0.75
            self._start()
            return self.token

    # -- keeping it ------------------------------------------------------------------------

    def _start(self) -> None:
        self._renew()
        self._beat = threading.Thread(target=self._heartbeat, name="leadscore-lease", daemon=True)
        self._beat.start()

    def _renew(self) -> bool:
        """One renewal; False (and ``lost`` set) if another flow holds the lease now."""
        if self.token is None:
            return False
        sent = time.monotonic()
        got, holder = self._script(
            RENEW_LUA,
            [self.key],
            [self.token, int(self.ttl * 1000), f"proc:{self.process}", self.holder],
        )
        if got != 1:
            holder = holder.decode() if isinstance(holder, bytes) else str(holder)
            self.lost = (
                f"the flow lease {self.key} was taken over by {holder or 'another flow'} "
                f"(this process held token {self.token})"
            )
            log.error(
                "%s: stopping; what was not checkpointed is read again by the holder", self.lost
            )
            return False
        self.valid_until = sent + self.ttl * 0.75
        return True

    def _heartbeat(self) -> None:
        every = self.ttl / 5
        while not self._done.wait(every):
            try:
                if not self._renew():
                    return
            except Exception as err:  # a heartbeat must outlive any failure
                log.warning(
                    "could not renew the flow lease (%s: %s); retrying in %.1f s",
                    type(err).__name__,
                    err,
                    every,
                )

    def check(self) -> None:
        """Raise :class:`LeaseLost` if this process may no longer read or write."""
        if self.lost is not None:
            raise LeaseLost(f"{self.lost}: this flow stops")
        if self.token is not None and time.monotonic() > self.valid_until:
            self.lost = (
                f"could not renew the flow lease {self.key} for {self.ttl * 0.75:.1f} s (Redis "
                "unreachable, or this process was paused); another flow may take over"
            )
            raise LeaseLost(f"{self.lost}: this flow stops; restart it to stand by again")

    def release(self) -> None:
        """Give the lease up (a clean stop): a standby takes over at once."""
        self._done.set()
        if self._beat is not None:
            self._beat.join(timeout=self.ttl)
        if self.token is None or self.lost is not None or self.process != 0:
            return
        try:
            self._script(RENEW_LUA, [self.key], [self.token, 0, "release", ""])
            log.info("released the flow lease %s", self.key)
        except RETRYABLE as err:
            log.warning("could not release the flow lease (%s); it lapses in %.0f s", err, self.ttl)

    def close(self) -> None:
        self._done.set()
        self.r.close()

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return call_with_retry(what, fn, RetryPolicy())
