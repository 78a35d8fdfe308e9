"""Tenant context (plan, support tier, open tickets, CSM owner, billing status) with a bounded cache.

Like Snowplow's SQL enrichment: a look-up per customer, cached with a size bound (LRU) and a TTL, so a
batch costs at most one query for the customers it has not seen lately. Changes reach the cache two ways:
PostgreSQL notifies ``plg_customer_changed`` with the customer id (a trigger on ``customers`` and
``support_tickets``, deploy/postgres/migrations/0030_customer_success.sql) and the service invalidates
that entry; the TTL bounds staleness when a notification is missed (a reconnect).

:class:`TenantCache` is pure (the loader is a function); :class:`PostgresTenants` is the adapter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.kernel.listen import Listener

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "plg_customer_changed"


@dataclass(frozen=True, slots=True)
class TenantContext:
    plan: str | None
    support_tier: str | None
    open_tickets: int
    csm_owner: str | None
    billing_status: str | None

    def to_avro(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "support_tier": self.support_tier,
            "open_tickets": self.open_tickets,
            "csm_owner": self.csm_owner,
            "billing_status": self.billing_status,
        }


#: ``load(customer_ids) -> {customer_id: context}``; customers it does not return are unknown (cached too).
Loader = Callable[[list[str]], Mapping[str, TenantContext]]


class TenantCache:
    """An LRU of tenant contexts with a TTL; ``get_many`` loads what is missing or expired in one call."""

    def __init__(
        self,
        load: Loader,
        *,
        max_size: int = 10_000,
        ttl_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._load = load
        self.max_size = max_size
        self.ttl = ttl_seconds
        self._clock = clock
        # customer_id -> (expires_at, context or None for "no such customer")
        self._entries: OrderedDict[str, tuple[float, TenantContext | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0
        self.hits = 0
        self.misses = 0
        self.loads = 0

    def get_many(self, customer_ids: Iterable[str]) -> dict[str, TenantContext | None]:
        now = self._clock()
        found: dict[str, TenantContext | None] = {}
        missing: list[str] = []
        entries = self._entries
        with self._lock:
            generation = self._generation
            for cid in customer_ids:
                if cid in found:
                    continue
                entry = entries.get(cid)
                if entry is not None and entry[0] > now:
                    entries.move_to_end(cid)
                    found[cid] = entry[1]
                    self.hits += 1
                else:
                    found[cid] = None
                    missing.append(cid)
        if missing:
            self.misses += len(missing)
            self.loads += 1
            loaded = self._load(missing)
            expires = self._clock() + self.ttl
            with self._lock:
                for cid in missing:
                    context = loaded.get(cid)
                    found[cid] = context
                    # An invalidation that ran during the load may have been about these rows: keep the
                    # answer for this batch but do not cache it.
                    if self._generation == generation:
                        entries[cid] = (expires, context)
                        entries.move_to_end(cid)
                while len(entries) > self.max_size:
                    entries.popitem(last=False)
        return found

    def get(self, customer_id: str) -> TenantContext | None:
        return self.get_many([customer_id])[customer_id]

    def invalidate(self, customer_id: str | None = None) -> None:
        """Forget one customer (None: all), so the next event of it is loaded again."""
        with self._lock:
            self._generation += 1
            if customer_id is None:
                self._entries.clear()
            else:
                self._entries.pop(customer_id, None)

    def __len__(self) -> int:
        return len(self._entries)


_QUERY = """
SELECT c.customer_id, c.plan, c.support_tier, c.csm_owner, c.billing_status,
       (SELECT count(*) FROM support_tickets t WHERE t.customer_id = c.customer_id AND t.status = 'open')
  FROM customers c
 WHERE c.customer_id = ANY(%s)
"""


class PostgresTenants:
    """Loads tenant contexts from PostgreSQL and listens for ``plg_customer_changed`` to invalidate."""

    def __init__(self, database_url: str, cache_size: int, ttl_seconds: float) -> None:
        import psycopg

        self._psycopg = psycopg
        self._url = database_url
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self.cache = TenantCache(self.load, max_size=cache_size, ttl_seconds=ttl_seconds)
        # Every change of a customer's context invalidates it here at once (the TTL is the safety net);
        # after a reconnect, everything (it may have changed while nobody listened).
        self._listener = Listener(
            database_url,
            NOTIFY_CHANNEL,
            name="tenant-invalidation",
            on_notify=self._invalidate,
            on_resync=self.cache.invalidate,
        )
        self.listening = self._listener.listening

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._psycopg.connect(self._url, autocommit=True)
        return self._conn

    def load(self, customer_ids: list[str]) -> dict[str, TenantContext]:
        with self._conn_lock:
            try:
                rows = self._connection().execute(_QUERY, (customer_ids,)).fetchall()
            except self._psycopg.OperationalError:
                # One retry on a fresh connection (the server restarted); a second failure propagates and
                # the runtime retries the batch.
                self._conn = None
                rows = self._connection().execute(_QUERY, (customer_ids,)).fetchall()
        return {
            row[0]: TenantContext(
                plan=row[1],
                support_tier=row[2],
                csm_owner=row[3],
                billing_status=row[4],
                open_tickets=int(row[5]),
            )
            for row in rows
        }

    def check(self) -> bool:
        with self._conn_lock:
            try:
                self._connection().execute("SELECT 1")
                return True
            except self._psycopg.Error:
                self._conn = None
                return False

    def _invalidate(self, customer_ids: list[str]) -> None:
        for customer_id in customer_ids:
            self.cache.invalidate(customer_id or None)  # an empty payload: everything

    def start(self) -> PostgresTenants:
        self._listener.start()
        return self

    def close(self) -> None:
        self._listener.close()
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
