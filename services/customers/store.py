"""Every write of the ``customers`` table (migration 0001 and the columns later migrations added) and the
plain reads that go with them. This package owns the table: other modules call these functions instead of
writing SQL for it, and ``tests/unit/test_boundaries.py`` fails on an INSERT, UPDATE or DELETE of
``customers`` anywhere else. The suspension columns are written by ``services/customers/suspension.py``.

Every write fires the ``plg_customer_changed`` notification (the table's trigger), which is how the
directories (ingest, metering, entitlements) and enrichment's tenant contexts see a change within a second.
Functions take the caller's connection and never commit: a caller that writes other tables in the same
transaction (billing's plan changes and grants) keeps one transaction.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from services.customers.model import COLUMNS, Customer
from services.kernel.apikeys import StoreError

__all__ = [
    "BILLING_STATUSES",
    "StoreError",
    "create_customer",
    "get_customer",
    "list_customers",
    "notify_changed",
    "set_plan",
    "update_success_context",
]

BILLING_STATUSES = ("active", "trialing", "past_due", "unpaid", "canceled")


def create_customer(
    conn: psycopg.Connection[Any],
    customer_id: str,
    plan: str,
    *,
    name: str | None = None,
    billing_anchor_day: int = 1,
    stripe_customer_id: str | None = None,
) -> Customer:
    """Insert a customer; :class:`StoreError` (for a person to read) when it exists or a value is invalid."""
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"INSERT INTO customers (customer_id, name, plan, billing_anchor_day, stripe_customer_id)"
                f" VALUES (%s, %s, %s, %s, %s) RETURNING {COLUMNS}",
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
        cur.execute(f"SELECT {COLUMNS} FROM customers WHERE customer_id = %s", (customer_id,))
        row = cur.fetchone()
    return Customer(**row) if row else None


def list_customers(conn: psycopg.Connection[Any]) -> list[Customer]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM customers ORDER BY customer_id")
        return [Customer(**row) for row in cur.fetchall()]


def update_success_context(
    conn: psycopg.Connection[Any],
    customer_id: str,
    *,
    support_tier: str | None = None,
    csm_owner: str | None = None,
    clear_csm: bool = False,
    billing_status: str | None = None,
) -> None:
    """Change the customer-success columns given (``clear_csm`` removes the owner) in one UPDATE, so one
    notification; :class:`StoreError` when nothing is given, a value is invalid or the customer is unknown."""
    sets: list[str] = []
    params: list[Any] = []
    if support_tier is not None:
        sets.append("support_tier = %s")
        params.append(support_tier)
    if clear_csm:
        sets.append("csm_owner = NULL")
    elif csm_owner is not None:
        sets.append("csm_owner = %s")
        params.append(csm_owner)
    if billing_status is not None:
        sets.append("billing_status = %s")
        params.append(billing_status)
    if not sets:
        raise StoreError("nothing to update: give --support-tier, --csm, --no-csm or --billing-status")
    sets.append("updated_at = now()")
    try:
        with conn.transaction():
            updated = conn.execute(
                f"UPDATE customers SET {', '.join(sets)} WHERE customer_id = %s",
                (*params, customer_id),
            ).rowcount
    except psycopg.errors.CheckViolation as exc:
        raise StoreError(
            f"invalid value ({exc.diag.constraint_name}): a support tier is 1-40 lower-case letters, digits, "
            f"_ or -; a CSM name 1-200 characters; a billing status one of {', '.join(BILLING_STATUSES)}"
        ) from None
    if not updated:
        raise StoreError(f"no customer {customer_id!r}")


def set_plan(
    conn: psycopg.Connection[Any],
    customer_id: str,
    *,
    plan: str,
    billing_status: str,
    stripe_customer_id: str | None,
    price_version: str | None,
    keep_price_version: bool,
) -> None:
    """Billing's plan change: plan and billing status; the Stripe customer id only when none is set yet;
    the price version replaced, or (``keep_price_version``: the plan did not change, so its grandfathered
    pin holds) only filled in when given."""
    conn.execute(
        "UPDATE customers SET plan = %s, billing_status = %s, updated_at = now(),"
        " stripe_customer_id = COALESCE(stripe_customer_id, %s),"
        " price_version = CASE WHEN %s THEN COALESCE(%s, price_version) ELSE %s END"
        " WHERE customer_id = %s",
        (plan, billing_status, stripe_customer_id, keep_price_version, price_version, price_version,
         customer_id),
    )  # fmt: skip


def notify_changed(conn: psycopg.Connection[Any], customer_id: str) -> None:
    """Tell every reader the customer changed without changing a column of it (a credit grant the
    entitlement API reads with the customer): the trigger notifies ``plg_customer_changed``."""
    conn.execute("UPDATE customers SET updated_at = now() WHERE customer_id = %s", (customer_id,))
