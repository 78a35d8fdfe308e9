"""PostgreSQL adapter for tenants and their API keys: what the ``plg`` CLI writes and ingest reads.

The ``customers`` table is shared (migration 0001); ``api_keys`` is ingest's (migration 0020).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services.customers import COLUMNS, Customer
from services.ingest import apikeys


class StoreError(Exception):
    """A request the database refused for a reason the user can fix (duplicate id, unknown customer)."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    customer_id: str
    description: str | None
    created_at: datetime
    revoked_at: datetime | None


_CUSTOMER_COLUMNS = COLUMNS
_KEY_COLUMNS = "key_id, customer_id, description, created_at, revoked_at"


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


def create_key(
    conn: psycopg.Connection[Any], customer_id: str, description: str | None = None
) -> tuple[ApiKey, str]:
    """A new key for ``customer_id``; returns its row and the full key, which is never stored."""
    generated = apikeys.generate()
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"INSERT INTO api_keys (key_id, customer_id, secret_sha256, description)"
                f" VALUES (%s, %s, %s, %s) RETURNING {_KEY_COLUMNS}",
                (generated.key_id, customer_id, generated.secret_sha256, description),
            )
            row = cur.fetchone()
    except psycopg.errors.ForeignKeyViolation:
        raise StoreError(
            f"no customer {customer_id!r}; create it first with `plg customers create`"
        ) from None
    assert row is not None
    return ApiKey(**row), generated.token


def list_keys(conn: psycopg.Connection[Any], customer_id: str) -> list[ApiKey]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE customer_id = %s ORDER BY created_at, key_id",
            (customer_id,),
        )
        return [ApiKey(**row) for row in cur.fetchall()]


def revoke_key(conn: psycopg.Connection[Any], key_id: str) -> ApiKey | None:
    """Revoke a key (idempotent: revoking twice keeps the first time). None if there is no such key."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s"
            f" RETURNING {_KEY_COLUMNS}",
            (key_id,),
        )
        row = cur.fetchone()
    return ApiKey(**row) if row else None


def lookup_key(conn: psycopg.Connection[Any], key_id: str) -> apikeys.KeyRecord | None:
    row = conn.execute(
        "SELECT key_id, customer_id, secret_sha256, revoked_at IS NOT NULL FROM api_keys WHERE key_id = %s",
        (key_id,),
    ).fetchone()
    if row is None:
        return None
    return apikeys.KeyRecord(row[0], row[1], bytes(row[2]), bool(row[3]))
