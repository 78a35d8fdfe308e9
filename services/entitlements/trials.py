"""Trial features per customer (``feature_trials``, services/plans/trials.py), as the entitlement API
needs them: read on first use and again as soon as the customer changes — a grant touches the customer's
row, so the customers trigger's notification drops the cached trials at once, as for credit grants. The
refresh interval stays as the safety net for a lost notification; expiry is judged at each check."""

from __future__ import annotations

import threading
import time

from psycopg_pool import ConnectionPool

from services.plans import trials
from services.plans.trials import Trial


class TrialCache:
    def __init__(self, pool: ConnectionPool, max_age_seconds: float = 30.0) -> None:
        self._pool = pool
        self._max_age = max_age_seconds
        self._trials: dict[str, tuple[float, list[Trial]]] = {}
        self._lock = threading.Lock()

    def invalidate(self, customer_id: str) -> None:
        with self._lock:
            self._trials.pop(customer_id, None)

    def cached(self, customer_id: str) -> list[Trial] | None:
        """The customer's trials if cached and fresh (no I/O: safe on the event loop)."""
        with self._lock:
            cached = self._trials.get(customer_id)
        if cached is not None and time.monotonic() - cached[0] < self._max_age:
            return cached[1]
        return None

    def get(self, customer_id: str) -> list[Trial]:
        found = self.cached(customer_id)
        if found is not None:
            return found
        now = time.monotonic()
        with self._pool.connection() as conn:
            active = trials.active(conn, customer_id)
        with self._lock:
            self._trials[customer_id] = (now, active)
        return active
