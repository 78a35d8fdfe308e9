"""What the entitlement API reads per customer from PostgreSQL besides the plan (credit grants, trial
features): read on first use and again as soon as the customer changes — whatever grants them touches the
customer's row, so the customers trigger's notification, which the customer directory follows, drops the
cached value at once (no TTL wait). The refresh interval stays as the safety net for a lost notification."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from services.kernel import metrics
from services.kernel.caches import BoundedCache

T = TypeVar("T")

CACHED = metrics.gauge(
    "plg_entitlements_customer_cache_entries",
    "Customers whose rows (grants, trials) are cached in memory, by cache (bounded by "
    "ENTITLEMENTS_CUSTOMER_CACHE_SIZE each).",
    ("cache",),
)


class CustomerCache(Generic[T]):
    """``load(conn, customer_id)`` per customer, cached up to ``max_age_seconds`` or until invalidated; at
    most ``max_entries`` customers (the least recently used beyond are dropped, and read again if asked)."""

    def __init__(
        self,
        pool: ConnectionPool,
        load: Callable[[psycopg.Connection[Any], str], T],
        max_age_seconds: float = 30.0,
        *,
        name: str = "customers",
        max_entries: int = 100_000,
    ) -> None:
        self._pool = pool
        self._load = load
        self._values: BoundedCache[str, T] = BoundedCache(
            max_entries, ttl=max_age_seconds, gauge=CACHED.labels(name)
        )

    def __len__(self) -> int:
        return len(self._values)

    def invalidate(self, customer_id: str) -> None:
        self._values.pop(customer_id)

    def cached(self, customer_id: str) -> T | None:
        """The customer's value if cached and fresh (no I/O: safe on the event loop)."""
        return self._values.get(customer_id)

    def get(self, customer_id: str) -> T:
        """The customer's value, read from PostgreSQL unless cached and fresh (blocking)."""
        found = self.cached(customer_id)
        if found is not None:
            return found
        now = time.monotonic()
        with self._pool.connection() as conn:
            value = self._load(conn, customer_id)
        self._values.put(customer_id, value, stored_at=now)
        return value
