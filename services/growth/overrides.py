"""Flag values set for one person or a whole customer (``growth_flag_overrides``, migration 0120): what an
onboarding step's ``set_flag`` completion action writes. Applied on top of the flag's own rules wherever the
subject is known — ``POST /v1/flags/evaluate`` and the onboarding conditions — except that a disabled flag
(the kill switch) stays off. A person's value wins over the customer's.

Reads are cached per (customer, person) for a couple of seconds: evaluation is a hot path, and a value set
on another instance is seen within that time (on this instance at once: a completion invalidates)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import psycopg
from plg_sdk.flags import DISABLED, TARGETING_MATCH, Evaluation, FlagSet
from psycopg_pool import ConnectionPool

from services.kernel import metrics
from services.kernel.caches import BoundedCache

CACHED = metrics.gauge(
    "plg_growth_overrides_cache_entries",
    "(customer, person) flag overrides cached in memory (bounded by GROWTH_OVERRIDES_CACHE_SIZE).",
)

PERSON = "person"
CUSTOMER = "customer"


def set_override(
    conn: psycopg.Connection[Any],
    flag: str,
    customer_id: str,
    scope: str,
    subject_id: str,
    variant: str,
    source: str,
) -> None:
    """Set (or replace) the variant served to the subject, in the caller's transaction."""
    conn.execute(
        "INSERT INTO growth_flag_overrides (flag_key, customer_id, scope, subject_id, variant, source)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (flag_key, customer_id, scope, subject_id)"
        " DO UPDATE SET variant = EXCLUDED.variant, source = EXCLUDED.source, set_at = now()",
        (flag, customer_id, scope, subject_id if scope == PERSON else "", variant, source),
    )


class FlagOverrides:
    def __init__(self, pool: ConnectionPool, ttl_seconds: float = 2.0, max_entries: int = 100_000) -> None:
        self._pool = pool
        # (customer, person) -> flag key -> variant; a person evicted (or expired) is read again
        self._cache: BoundedCache[tuple[str, str], dict[str, str]] = BoundedCache(
            max_entries, ttl=ttl_seconds, gauge=CACHED
        )

    def cached(self, customer_id: str, person_id: str) -> dict[str, str] | None:
        """The subject's overrides when cached and fresh (no I/O: safe on the event loop)."""
        return self._cache.get((customer_id, person_id))

    def get(self, customer_id: str, person_id: str) -> dict[str, str]:
        """flag key -> variant for the person (their own values over the customer's). Blocking."""
        found = self.cached(customer_id, person_id)
        if found is not None:
            return found
        now = time.monotonic()
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT flag_key, scope, variant FROM growth_flag_overrides WHERE customer_id = %s"
                " AND (scope = 'customer' OR subject_id = %s)",
                (customer_id, person_id),
            ).fetchall()
        values = {key: variant for key, scope, variant in rows if scope == CUSTOMER}
        values.update({key: variant for key, scope, variant in rows if scope == PERSON})
        self._cache.put((customer_id, person_id), values, stored_at=now)
        return values

    def invalidate(self, customer_id: str) -> None:
        self._cache.discard_where(lambda key: key[0] == customer_id)

    def __len__(self) -> int:
        return len(self._cache)


def apply(results: list[Evaluation], overrides: Mapping[str, str], engine: FlagSet) -> list[Evaluation]:
    """``results`` with each overridden flag serving its override's variant (reason TARGETING_MATCH). A
    disabled flag, an error, or a variant the flag no longer has (changed through the admin API since)
    keeps the flag's own answer."""
    if not overrides:
        return results
    out = []
    for r in results:
        variant = overrides.get(r.flag_key)
        flag = engine.flags.get(r.flag_key)
        if (
            variant is None
            or flag is None
            or r.error_code is not None
            or r.reason == DISABLED
            or variant not in flag.variants
        ):
            out.append(r)
            continue
        out.append(
            replace(r, value=flag.variants[variant], variant=variant, reason=TARGETING_MATCH, sticky=False)
        )
    return out
