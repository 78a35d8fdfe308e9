"""Credit grants (top-ups) per customer, as the entitlement API needs them: read from PostgreSQL
(``billing_credit_grants``, billing's table) and cached per customer until billing touches the customer's
row with the next grant (:class:`~services.entitlements.customer_cache.CustomerCache`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from services.entitlements.customer_cache import CustomerCache
from services.plans.grants import Grant


def unexpired_grants(conn: psycopg.Connection[Any], customer_id: str) -> list[Grant]:
    rows = conn.execute(
        "SELECT meter, units, (extract(epoch FROM granted_at) * 1000)::bigint,"
        " (extract(epoch FROM expires_at) * 1000)::bigint FROM billing_credit_grants"
        " WHERE customer_id = %s AND (expires_at IS NULL OR expires_at > now())",
        (customer_id,),
    ).fetchall()
    return [
        Grant(meter, Decimal(units), int(at), None if ends is None else int(ends))
        for meter, units, at, ends in rows
    ]


class GrantCache(CustomerCache[list[Grant]]):
    def __init__(
        self, pool: ConnectionPool, max_age_seconds: float = 30.0, max_entries: int = 100_000
    ) -> None:
        super().__init__(pool, unexpired_grants, max_age_seconds, name="grants", max_entries=max_entries)
