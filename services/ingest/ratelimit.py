"""Token buckets per API key: the rate limit ingest answers 429 with ``Retry-After`` from.

Tokens are events, not requests: a batch of 100 costs 100. Each ingest process keeps its own buckets, so
with N processes behind a balancer a key gets up to N times the configured rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.kernel import metrics

BUCKETS = metrics.gauge(
    "plg_ingest_rate_limit_buckets",
    "Token buckets held, one per API key (bounded by INGEST_RATE_LIMIT_MAX_KEYS).",
)


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # capacity
    tokens: float
    updated: float

    def take(self, n: int, now: float) -> float:
        """Take ``n`` tokens; 0.0 when granted, else the seconds until they would be (nothing is taken)."""
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class RateLimiter:
    """One bucket per key. ``rate <= 0`` disables limiting. A request asking for more than the burst can
    never be granted, so the burst is raised to at least ``min_burst`` (the largest batch allowed)."""

    def __init__(self, rate: float, burst: float, min_burst: int, max_keys: int = 100_000) -> None:
        self.enabled = rate > 0
        self._rate = rate
        self._burst = max(burst, float(min_burst))
        self._max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, key: str, n: int, now: float) -> int:
        """0 when the request may go on, else whole seconds the client should wait (at least 1)."""
        if not self.enabled:
            return 0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._burst, now)
            BUCKETS.set(len(self._buckets))
        wait = bucket.take(n, now)
        return 0 if wait == 0.0 else max(1, math.ceil(wait))
