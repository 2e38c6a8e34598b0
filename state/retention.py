"""How much of an input stream to keep once the flow has checkpointed it.

The flow acknowledges a partition's entries in stream order (pending entries of an earlier
run are re-read first, then new ones), so after a checkpoint every entry up to the last one it
acknowledged is done with. What is done with may still be kept for replays and rules
publishing: entries younger than ``seconds`` (by their id's millisecond time) and the
``entries`` newest acknowledged ones. The rest is trimmed with ``XTRIM MINID`` (the entries
left stay readable with XRANGE, oldest first). Nothing above the last acknowledged entry is
ever trimmed, whatever the retention.

Pure: the flow feeds it what each checkpoint acknowledged and asks for the cut.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from leadscore.durations import parse_duration

StreamId = tuple[int, int]


def parse_id(entry_id: str | bytes) -> StreamId:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def after(stream_id: StreamId) -> StreamId:
    """The smallest id above ``stream_id``: MINID there trims ``stream_id`` too."""
    return stream_id[0], stream_id[1] + 1


def parse_retention(text: str) -> float:
    """Seconds of checkpointed input to keep: a duration (``7d``, ``12h``) or ``0`` (none)."""
    if text.strip() in ("0", "0s"):
        return 0.0
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError(
            f"a retention is a duration like 12h, 7d or 2w, or 0 to keep nothing, got {text!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Keep acknowledged entries younger than ``seconds`` or among the ``entries`` newest
    acknowledged ones; 0 and 0 trim everything acknowledged."""

    seconds: float = 86_400.0
    entries: int = 0

    def __post_init__(self) -> None:
        if self.seconds < 0 or self.entries < 0:
            raise ValueError(
                f"retention must not be negative, got {self.seconds} s and {self.entries} entries"
            )


class InputRetention:
    """One partition's acknowledged history and where its input stream may be cut."""

    def __init__(self, policy: RetentionPolicy) -> None:
        self.policy = policy
        self.last: StreamId | None = None  # the last acknowledged entry
        self.count = 0  # entries acknowledged by this process
        # (count, id) of an acknowledged entry every ``step`` entries, for count retention.
        self.step = max(1, policy.entries // 1000)
        self.samples: deque[tuple[int, StreamId]] = deque()

    def acked(self, ids: list[str] | list[bytes] | list[str | bytes]) -> None:
        """One checkpoint's acknowledged entry ids (in stream order) committed."""
        if not ids:
            return
        if self.policy.entries:
            step, samples = self.step, self.samples
            for entry_id in ids:
                self.count += 1
                if self.count % step == 0:
                    samples.append((self.count, parse_id(entry_id)))
        else:
            self.count += len(ids)
        last = parse_id(ids[-1])
        if self.last is None or last > self.last:
            self.last = last

    def cut(self, now_ms: int) -> StreamId | None:
        """The MINID to trim at (entries below it go), or None while nothing may go."""
        if self.last is None:
            return None
        limit = after(self.last)  # never above the last acknowledged entry
        policy = self.policy
        if policy.seconds > 0:
            limit = min(limit, (max(0, now_ms - int(policy.seconds * 1000)), 0))
        if policy.entries:
            # Cutting at sample (c, id) keeps entries c .. count: count - c + 1 of them. Take
            # the newest sample that keeps at least ``entries`` (at most step - 1 more).
            samples, wanted = self.samples, policy.entries - 1
            while len(samples) > 1 and self.count - samples[1][0] >= wanted:
                samples.popleft()
            if not samples or self.count - samples[0][0] < wanted:
                return None  # fewer than ``entries`` acknowledged by this process yet
            limit = min(limit, samples[0][1])
        return limit
