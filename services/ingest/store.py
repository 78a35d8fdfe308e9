"""PostgreSQL adapter for tenants: what the ``plg`` CLI writes.

The ``customers`` table is shared (migration 0001). API keys moved to the kernel
(``services/kernel/apikeys.py`` owns ``api_keys`` and ``operators``); their functions are re-exported here
for the callers that knew them from this module.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from services.customers import COLUMNS, Customer
from services.kernel.apikeys import (
    ApiKey,
    StoreError,
    create_key,
    list_keys,
    lookup_key,
    revoke_key,
)

__all__ = [
    "ApiKey",
    "StoreError",
    "create_customer",
    "create_key",
    "get_customer",
    "list_customers",
    "list_keys",
    "lookup_key",
    "revoke_key",
]

_CUSTOMER_COLUMNS = COLUMNS


def create_customer(
    conn: psycopg.Connection[Any],
    customer_id: str,
    plan: str,
    *,
    name: str | None = None,
    billing_anchor_day: int = 1,
    stripe_customer_id: str | None = None,
) -> Customer:
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"INSERT INTO customers (customer_id, name, plan, billing_anchor_day, stripe_customer_id)"
                f" VALUES (%s, %s, %s, %s, %s) RETURNING {_CUSTOMER_COLUMNS}",
                (customer_id, name, plan, billing_anchor_day, stripe_customer_id),
            )
            row = cur.fetchone()
    except psycopg.errors.UniqueViolation:
        raise StoreError(f"customer {customer_id!r} already exists") from None
    except psycopg.errors.CheckViolation as exc:
        raise StoreError(
            f"invalid customer: {exc.diag.constraint_name}: customer ids are 1-128 characters "
            "of letters, digits and . _ : - starting with a letter or digit; "
            "the anchor day is 1-31"
        ) from None
    assert row is not None
    return Customer(**row)


def get_customer(conn: psycopg.Connection[Any], customer_id: str) -> Customer | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE customer_id = %s", (customer_id,))
        row = cur.fetchone()
    return Customer(**row) if row else None


def list_customers(conn: psycopg.Connection[Any]) -> list[Customer]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_CUSTOMER_COLUMNS} FROM customers ORDER BY customer_id")
        return [Customer(**row) for row in cur.fetchall()]
