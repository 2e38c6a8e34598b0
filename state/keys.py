"""The Redis key layout, version 1.

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


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "ls"
    partitions: int = 16

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    def partition(self, contact: str) -> int:
        return partition_of(contact, self.partitions)

    def input(self, p: int) -> str:
        return f"{self.prefix}:{{{p}}}:in"

    def state(self, p: int, contact: str) -> str:
        return f"{self.prefix}:{{{p}}}:s:{contact}"

    def read_model(self, p: int, contact: str) -> str:
        return f"{self.prefix}:{{{p}}}:c:{contact}"

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
        return f"{self.prefix}:{{{p}}}:clock"

    def timers(self, p: int) -> str:
        """Sorted set: contact -> epoch time of its next decay crossing (restarts re-arm it)."""
        return f"{self.prefix}:{{{p}}}:timers"

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
