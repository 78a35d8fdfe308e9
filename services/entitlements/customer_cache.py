"""What the entitlement API reads per customer from PostgreSQL besides the plan (credit grants, trial
features): read on first use and again as soon as the customer changes — whatever grants them touches the
customer's row, so the customers trigger's notification, which the customer directory follows, drops the
cached value at once (no TTL wait). The refresh interval stays as the safety net for a lost notification."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

T = TypeVar("T")


class CustomerCache(Generic[T]):
    """``load(conn, customer_id)`` per customer, cached up to ``max_age_seconds`` or until invalidated."""

    def __init__(
        self,
        pool: ConnectionPool,
        load: Callable[[psycopg.Connection[Any], str], T],
        max_age_seconds: float = 30.0,
    ) -> None:
        self._pool = pool
        self._load = load
        self._max_age = max_age_seconds
        self._values: dict[str, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def invalidate(self, customer_id: str) -> None:
        with self._lock:
            self._values.pop(customer_id, None)

    def cached(self, customer_id: str) -> T | None:
        """The customer's value if cached and fresh (no I/O: safe on the event loop)."""
        with self._lock:
            cached = self._values.get(customer_id)
        if cached is not None and time.monotonic() - cached[0] < self._max_age:
            return cached[1]
        return None

    def get(self, customer_id: str) -> T:
        """The customer's value, read from PostgreSQL unless cached and fresh (blocking)."""
        found = self.cached(customer_id)
        if found is not None:
            return found
        now = time.monotonic()
        with self._pool.connection() as conn:
            value = self._load(conn, customer_id)
        with self._lock:
            self._values[customer_id] = (now, value)
        return value
