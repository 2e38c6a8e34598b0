"""The Redis key layout, version 1 (with generations of state: see ``Keys.generation``).

Every key of one partition carries the hash tag ``{p}``, so the checkpoint of a partition
(state, read model, triggers, acknowledgement) is one atomic script call, legal on Redis Cluster.
A contact's partition is a pure function of its id, so any process in any language can find
its read model: ``crc32(contact) % partitions``, with ``partitions`` in ``{prefix}:meta``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

LAYOUT_VERSION = 1
GROUP = "leadscore"
CONSUMER = "flow"
#: The consumer group of `leadscore deliver` on every triggers stream.
DELIVER_GROUP = "deliver"


def partition_of(contact: str, partitions: int) -> int:
    return zlib.crc32(contact.encode()) % partitions


def parse_live(value: bytes | str | None) -> tuple[int, int | None, str | None]:
    """``(generation, rules version, target)`` of a partition's ``live`` marker.

    The marker is ``"{generation}:{version}"``; absent (a deployment no publish has touched)
    is generation 0 under the rules in ``{prefix}:meta`` (version None). While a publish holds
    the partition for its switch it reads ``"{old}>{new}"``: the old one is still live (its
    answers are served), ``target`` names the new one.
    """
    if value is None:
        return 0, None, None
    text = value.decode() if isinstance(value, bytes) else value
    if not text:
        return 0, None, None
    live, _, target = text.partition(">")
    gen, _, version = live.partition(":")
    return int(gen or 0), (int(version) if version else None), (target or None)


SWITCHED = "switched"
"""``phase`` of ``{prefix}:publish`` from the commit point of a switch on Redis Cluster until
every marker is rolled forward (``state/generations.py``)."""


def serving(value: bytes | str | None, record: list[bytes | None] | None = None) -> int:
    """The generation readers answer from for a partition whose marker is ``value``.

    ``record`` is ``HMGET {prefix}:publish phase target``, read only when the marker is held
    (``"{old}>{new}"``): a marker held for the target of a switch already committed (Redis
    Cluster, where the markers are rolled forward one by one) serves the target."""
    generation, _, target = parse_live(value)
    if target is not None and record is not None:
        phase, switched = record
        if phase == SWITCHED.encode() and switched is not None and switched.decode() == target:
            return parse_live(target)[0]
    return generation


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "ls"
    partitions: int = 16
    #: Which generation of state (contact states, read models, decay timers and clock) the
    #: per-contact keys name. 0 is the layout before generations existed (no ``g`` part);
    #: a publish with rescoring builds generation N >= 1 beside it (``{p}:gN:...``).
    generation: int = 0

    def at(self, generation: int) -> Keys:
        """The same layout for another generation of state."""
        if generation == self.generation:
            return self
        return Keys(self.prefix, self.partitions, generation)

    def _gen(self, p: int) -> str:
        """The start of partition ``p``'s per-generation keys."""
        if self.generation:
            return f"{self.prefix}:{{{p}}}:g{self.generation}:"
        return f"{self.prefix}:{{{p}}}:"

    def live(self, p: int) -> str:
        """String: which generation and rules version partition ``p`` runs (``parse_live``);
        the checkpoint script refuses a writer that expects another value."""
        return f"{self.prefix}:{{{p}}}:live"

    def upto(self, p: int) -> str:
        """Hash: the input entry this generation's state of ``p`` holds every event up to
        (``id``), and the events replayed into it (``events``): where a rebuild resumes."""
        return self._gen(p) + "upto"

    def switched(self, p: int) -> str:
        """Set: contacts whose switch firings a publish has written (once each)."""
        return self._gen(p) + "switched"

    def differ(self, p: int) -> str:
        """Set: contacts whose trigger state differed between the generations before the hold
        (the switch re-checks only them and ``recheck``)."""
        return self._gen(p) + "differ"

    def recheck(self, p: int) -> str:
        """Set: contacts whose state may have changed since ``differ`` was computed."""
        return self._gen(p) + "recheck"

    def handed(self, p: int, visitor: str) -> str:
        """String: a visitor's state taken by a publish's replay of its ``$take`` and not yet
        merged by its ``$give`` (msgpack; empty: it had none). Partition ``p`` is the visitor's."""
        return f"{self._gen(p)}h:{visitor}"

    def rules(self, version: int) -> str:
        """Hash: a published rules version (``sha256``, ``text``, ``generation``, ...)."""
        return f"{self.prefix}:rules:{version}"

    @property
    def publishing(self) -> str:
        """Hash: the publish in progress (``state/generations.py``), so a re-run resumes it."""
        return f"{self.prefix}:publish"

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    def partition(self, contact: str) -> int:
        return partition_of(contact, self.partitions)

    def input(self, p: int) -> str:
        return f"{self.prefix}:{{{p}}}:in"

    def state(self, p: int, contact: str) -> str:
        return f"{self._gen(p)}s:{contact}"

    def read_model(self, p: int, contact: str) -> str:
        return f"{self._gen(p)}c:{contact}"

    def contact_read_model(self, contact: str) -> str:
        return self.read_model(self.partition(contact), contact)

    def triggers(self, p: int) -> str:
        return f"{self.prefix}:{{{p}}}:triggers"

    def changes(self, p: int) -> str:
        return f"{self.prefix}:{{{p}}}:changes"

    def dead(self, p: int) -> str:
        return f"{self.prefix}:{{{p}}}:dead"

    def undelivered(self, p: int) -> str:
        """Stream: deliveries that exhausted their retries (field ``u``, one JSON each)."""
        return f"{self.prefix}:{{{p}}}:undelivered"

    def deliver_lease(self, p: int) -> str:
        """String: the deliverer that owns partition ``p``'s triggers (expires unless renewed)."""
        return f"{self.prefix}:{{{p}}}:deliverer"

    @property
    def deliverers(self) -> str:
        """Sorted set: live deliverer name -> last heartbeat (epoch seconds)."""
        return f"{self.prefix}:deliverers"

    def checkpoint(self, p: int) -> str:
        return f"{self.prefix}:{{{p}}}:ckpt"

    def clock(self, p: int) -> str:
        """String: the partition's timer clock (epoch seconds decay timers have fired up to)."""
        return f"{self._gen(p)}clock"

    def timers(self, p: int) -> str:
        """Sorted set: contact -> epoch time of its next decay crossing (restarts re-arm it)."""
        return f"{self._gen(p)}timers"

    def fence(self, p: int) -> str:
        """String: the flow lease token allowed to checkpoint partition ``p`` (state/lease.py)."""
        return f"{self.prefix}:{{{p}}}:fence"

    @property
    def aliases(self) -> str:
        """Hash: id -> the contact it was merged into (identify with merge; docs/redis.md).
        Written once per id, by the checkpoint of the id's own partition."""
        return f"{self.prefix}:aliases"

    @property
    def lease(self) -> str:
        """Hash: the deployment's flow lease (holder, token, expiry, heartbeats)."""
        return f"{self.prefix}:lease"

    @staticmethod
    def consumer(p: int) -> str:
        """The consumer reading partition ``p``'s input: the same name for every stream, so one
        XREADGROUP can read all of a worker's streams at once (a call names ONE consumer).
        Consumer names are per stream group, so each stream still has a single reader."""
        return CONSUMER

    @staticmethod
    def legacy_consumer(p: int) -> str:
        """The per-partition consumer name used before :data:`CONSUMER`; the source moves its
        pending entries to :data:`CONSUMER` on start, then deletes it."""
        return f"p{p}"
