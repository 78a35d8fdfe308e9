"""The per-customer cache of credit grants and trials: read once, served from memory while fresh, read again
once invalidated (the customer changed) or older than the refresh interval."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from services.entitlements.customer_cache import CustomerCache


class Pool:
    """Hands out a marker connection and counts how often one was taken (a PostgreSQL read)."""

    def __init__(self) -> None:
        self.taken = 0

    @contextmanager
    def connection(self) -> Iterator[str]:
        self.taken += 1
        yield "conn"


def test_a_customer_is_read_once_then_again_after_a_change_or_the_refresh_interval() -> None:
    pool = Pool()
    reads: list[tuple[Any, str]] = []

    def load(conn: Any, customer_id: str) -> list[str]:
        reads.append((conn, customer_id))
        return [f"{customer_id}-{len(reads)}"]

    cache = CustomerCache(pool, load, max_age_seconds=3600)  # type: ignore[arg-type]
    assert cache.cached("acme") is None  # never read: the caller reads it off the event loop
    assert cache.get("acme") == ["acme-1"]
    assert cache.get("acme") == ["acme-1"]
    assert cache.cached("acme") == ["acme-1"]
    assert cache.get("globex") == ["globex-2"]
    assert reads == [("conn", "acme"), ("conn", "globex")]

    cache.invalidate("acme")  # the customers trigger's notification
    assert cache.cached("acme") is None
    assert cache.get("acme") == ["acme-3"]
    assert cache.get("globex") == ["globex-2"]  # another customer's change drops only its own

    stale = CustomerCache(pool, load, max_age_seconds=0.0)  # type: ignore[arg-type]  # never fresh
    stale.get("acme")
    assert stale.cached("acme") is None
    taken = pool.taken
    stale.get("acme")
    assert pool.taken == taken + 1
