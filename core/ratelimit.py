"""Per-user token-bucket rate limit (in memory; one bot process owns its users' buckets)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`burst` messages at once, refilled at `per_minute`; keyed by (platform, user id).

    Memory is bounded: buckets are kept in least-recently-used order, and at `max_buckets` the oldest are
    dropped — first those that have refilled (they behave exactly like a fresh one), then, if every bucket is
    still refilling, the least recently used one. Each check does O(1) amortised work, never a scan.
    """

    def __init__(
        self,
        *,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = 10_000,
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("rate limit needs per_minute > 0 and burst >= 1")
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._max_buckets = max_buckets

    def check(self, platform: str, user_id: str) -> float:
        """Take one token. Returns 0.0 when allowed, else the seconds until the next token (nothing taken)."""
        now = self._clock()
        key = (platform, user_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_buckets:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets.move_to_end(key)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def forget(self, platform: str, user_id: str) -> None:
        self._buckets.pop((platform, user_id), None)

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        """Drop the oldest buckets while they have refilled; if none has, drop the least recently used."""
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if bucket.tokens + (now - bucket.updated) * self.rate < self.burst:
                break
            del self._buckets[key]
        if len(self._buckets) >= self._max_buckets:
            self._buckets.popitem(last=False)


def slow_down_message(wait_seconds: float) -> str:
    return f"You're sending messages too quickly — try again in {max(1, math.ceil(wait_seconds))} s."
