"""Credit grants (top-ups) per customer, as the entitlement API needs them: read from PostgreSQL
(``billing_credit_grants``, billing's table) on first use and again as soon as the customer changes —
billing touches the customer's row with each grant, so the customers trigger's notification, which the
customer directory follows, drops the cached grants at once (no TTL wait). A refresh interval stays as the
safety net for a lost notification."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

from psycopg_pool import ConnectionPool

from services.plans.grants import Grant


class GrantCache:
    def __init__(self, pool: ConnectionPool, max_age_seconds: float = 30.0) -> None:
        self._pool = pool
        self._max_age = max_age_seconds
        self._grants: dict[str, tuple[float, list[Grant]]] = {}
        self._lock = threading.Lock()

    def invalidate(self, customer_id: str) -> None:
        with self._lock:
            self._grants.pop(customer_id, None)

    def cached(self, customer_id: str) -> list[Grant] | None:
        """The customer's grants if cached and fresh (no I/O: safe on the event loop)."""
        with self._lock:
            cached = self._grants.get(customer_id)
        if cached is not None and time.monotonic() - cached[0] < self._max_age:
            return cached[1]
        return None

    def get(self, customer_id: str) -> list[Grant]:
        found = self.cached(customer_id)
        if found is not None:
            return found
        now = time.monotonic()
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT meter, units, (extract(epoch FROM granted_at) * 1000)::bigint,"
                " (extract(epoch FROM expires_at) * 1000)::bigint FROM billing_credit_grants"
                " WHERE customer_id = %s AND (expires_at IS NULL OR expires_at > now())",
                (customer_id,),
            ).fetchall()
        grants = [
            Grant(meter, Decimal(units), int(at), None if ends is None else int(ends))
            for meter, units, at, ends in rows
        ]
        with self._lock:
            self._grants[customer_id] = (now, grants)
        return grants
