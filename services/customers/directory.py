"""The customer directory: plan and billing anchor per customer, read from PostgreSQL and cached.

The whole table is re-read every ``refresh_seconds``, and an id the cache does not know is looked up at
once, so a customer created a second ago is metered and answered for immediately. Lookups of missing ids
go to the database in one query per batch. A change to a customer (an upgrade applied by billing, a
plan set by the CLI) is reloaded within about a second: the ``customers`` trigger notifies
``plg_customer_changed`` with its id and the directory listens (the periodic refresh stays as the
safety net for a lost listening connection).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from psycopg_pool import ConnectionPool

from services.customers.model import COLUMNS, Customer
from services.kernel import metrics
from services.kernel.listen import Listener

log = logging.getLogger(__name__)

# The name predates the directory's move out of metering; kept so dashboards keep their series.
LOOKUPS = metrics.counter(
    "plg_metering_customer_lookups", "Customer directory look-ups that went to PostgreSQL.", ("kind",)
)

DIRECTORY = metrics.gauge(
    "plg_customer_directory_entries",
    "Customer directory entries in memory, by kind: customers (the customers table, whole) and absent (ids "
    "looked up and not found, each remembered for the service's unknown-customer TTL).",
    ("kind",),
)
# Past this many absent ids remembered, each new one sweeps out those whose TTL has passed.
ABSENT_SWEEP_AT = 100_000

_SELECT = f"SELECT {COLUMNS} FROM customers"
# NOTIFY'd by the customers trigger (migration 0030) with the changed customer's id.
CHANGED_CHANNEL = "plg_customer_changed"


class CustomerDirectory:
    def __init__(
        self,
        pool: ConnectionPool,
        refresh_seconds: float = 30.0,
        negative_ttl: float = 1.0,
        listen: bool = True,
    ) -> None:
        self._pool = pool
        self._refresh_seconds = refresh_seconds
        self._negative_ttl = negative_ttl
        self._customers: dict[str, Customer] = {}
        self._missing: dict[str, float] = {}  # id -> monotonic time until which it is known absent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # A change NOTIFYs the customer's id: reload just that one; after a reconnect, everything.
        self._listener = (
            Listener(
                pool.conninfo,
                CHANGED_CHANNEL,
                name="customer-changes",
                on_notify=self._reload_all,
                on_resync=self.refresh,
            )
            if listen
            else None
        )
        self.listening = self._listener.listening if self._listener is not None else threading.Event()
        self.loaded = False
        # Called with a customer's id after a change notification reloaded it: caches of other per-customer
        # rows (billing's credit grants in the entitlement API) follow the same push, not a TTL.
        self.on_change: list[Callable[[str], None]] = []
        metrics.track_size(DIRECTORY.labels("customers"), self, lambda d: len(d._customers))
        metrics.track_size(DIRECTORY.labels("absent"), self, lambda d: len(d._missing))

    def __len__(self) -> int:
        return len(self._customers)

    def get(self, customer_id: str) -> Customer | None:
        """From the cache only (call :meth:`ensure` first for ids that may be new)."""
        return self._customers.get(customer_id)

    def snapshot(self) -> dict[str, Customer]:
        """The current cache, for many lookups in a row (treat it as read-only)."""
        return self._customers

    def lookup(self, customer_id: str) -> Customer | None:
        """Cache, else the database (one query), remembering an absent id for ``negative_ttl`` seconds."""
        found = self._customers.get(customer_id)
        if found is not None:
            return found
        until = self._missing.get(customer_id)
        if until is not None and until > time.monotonic():
            return None
        self.ensure([customer_id], negative=True)
        return self._customers.get(customer_id)

    def ensure(self, customer_ids: Iterable[str], *, negative: bool = False) -> None:
        """Load every id not cached yet from the database (raises on database errors)."""
        missing = [c for c in set(customer_ids) if c not in self._customers]
        if not missing:
            return
        LOOKUPS.labels("missing").inc()
        with self._pool.connection() as conn:
            rows = conn.execute(_SELECT + " WHERE customer_id = ANY(%s)", (missing,)).fetchall()
        found = self._store(rows)
        if negative:
            until = time.monotonic() + self._negative_ttl
            for cid in missing:
                if cid not in found:
                    self._missing[cid] = until
            if len(self._missing) > ABSENT_SWEEP_AT:
                now = time.monotonic()
                self._missing = {k: v for k, v in self._missing.items() if v > now}

    def refresh(self) -> None:
        """Re-read the whole table."""
        LOOKUPS.labels("refresh").inc()
        with self._pool.connection() as conn:
            rows = conn.execute(_SELECT).fetchall()
        fresh = {row[0]: Customer(*row) for row in rows}
        with self._lock:
            self._customers = fresh
        self.loaded = True

    def _store(self, rows: list[tuple[Any, ...]]) -> set[str]:
        # Single-key inserts are atomic under the GIL; readers on other threads only call get().
        with self._lock:
            customers = self._customers
            for row in rows:
                customers[row[0]] = Customer(*row)
        return {row[0] for row in rows}

    def reload(self, customer_id: str) -> None:
        """Re-read one customer (dropped from the cache if it no longer exists)."""
        LOOKUPS.labels("changed").inc()
        with self._pool.connection() as conn:
            rows = conn.execute(_SELECT + " WHERE customer_id = %s", (customer_id,)).fetchall()
        if not self._store(rows):
            with self._lock:
                self._customers.pop(customer_id, None)
        self._missing.pop(customer_id, None)
        for follower in self.on_change:
            follower(customer_id)

    def _reload_all(self, customer_ids: list[str]) -> None:
        for customer_id in dict.fromkeys(customer_ids):  # a burst names a customer once
            if customer_id:
                self.reload(customer_id)

    def start(self) -> CustomerDirectory:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="customer-directory", daemon=True)
        self._thread.start()
        if self._listener is not None:
            self._listener.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_seconds):
            try:
                self.refresh()
            except Exception:
                log.warning("customer directory refresh failed; keeping the cached copy", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
