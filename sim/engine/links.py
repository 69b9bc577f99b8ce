"""KV-transfer links whose bandwidth concurrent transfers share equally (processor sharing)."""

from __future__ import annotations

from typing import Any


class Link:
    """One directed link between two instances.

    Each active transfer gets ``bandwidth / n_active``; a transfer's set-up latency is
    charged as ``latency_s * bandwidth`` extra bytes, so an idle link moves ``b`` bytes in
    ``latency_s + b / bandwidth`` seconds.
    """

    __slots__ = ("index", "bandwidth_bytes_per_s", "latency_s", "remaining", "last_s", "version")

    def __init__(self, index: int, bandwidth_bytes_per_s: float, latency_s: float) -> None:
        self.index = index
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self.latency_s = latency_s
        self.remaining: dict[Any, float] = {}
        """transfer key -> bytes still to move."""
        self.last_s = 0.0
        self.version = 0
        """Bumped whenever the next completion time changes (stale heap entries are skipped)."""

    def advance(self, now_s: float) -> None:
        """Move every active transfer forward to ``now_s``."""
        n = len(self.remaining)
        if n and now_s > self.last_s:
            moved = (now_s - self.last_s) * self.bandwidth_bytes_per_s / n
            rem = self.remaining
            for key in rem:
                rem[key] -= moved
        self.last_s = now_s

    def add(self, key: object, num_bytes: float, now_s: float) -> None:
        """Start a transfer of ``num_bytes`` bytes at ``now_s``."""
        self.advance(now_s)
        self.remaining[key] = num_bytes + self.latency_s * self.bandwidth_bytes_per_s
        self.version += 1

    def next_done(self) -> tuple[float, Any] | None:
        """``(time, key)`` of the next transfer to finish, or None when idle."""
        rem = self.remaining
        n = len(rem)
        if n == 1:  # the usual case: no need to search
            ((key, left),) = rem.items()
        elif n:
            key = min(rem, key=rem.__getitem__)
            left = rem[key]
        else:
            return None
        rate = self.bandwidth_bytes_per_s / n
        return self.last_s + max(left, 0.0) / rate, key

    def pop(self, key: object, now_s: float) -> None:
        """Finish transfer ``key`` at ``now_s``."""
        self.advance(now_s)
        del self.remaining[key]
        self.version += 1
