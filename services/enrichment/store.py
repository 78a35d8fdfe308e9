"""PostgreSQL adapter for the customer-success context: support tier, CSM owner, billing status, tickets.

What ``plg tickets`` writes (migration 0030), and the context ``plg customers update`` shows; that
command writes the context's columns of ``customers`` through the table's owner
(``services/customers/store.py``, ``update_success_context``). Every write of a
customer fires the ``plg_customer_changed`` notification (a trigger), which makes enrichment reload that
customer's context.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services.customers.store import BILLING_STATUSES, StoreError

__all__ = ["BILLING_STATUSES", "PRIORITIES", "StoreError"]

PRIORITIES = ("low", "normal", "high", "urgent")


@dataclass(frozen=True)
class SuccessContext:
    customer_id: str
    plan: str
    support_tier: str
    csm_owner: str | None
    billing_status: str
    open_tickets: int


@dataclass(frozen=True)
class Ticket:
    ticket_id: int
    customer_id: str
    subject: str
    priority: str
    status: str
    opened_at: datetime
    closed_at: datetime | None


_TICKET_COLUMNS = "ticket_id, customer_id, subject, priority, status, opened_at, closed_at"


def get_context(conn: psycopg.Connection[Any], customer_id: str) -> SuccessContext | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT customer_id, plan, support_tier, csm_owner, billing_status,"
            " (SELECT count(*) FROM support_tickets t WHERE t.customer_id = c.customer_id"
            "  AND t.status = 'open')::int AS open_tickets"
            " FROM customers c WHERE customer_id = %s",
            (customer_id,),
        )
        row = cur.fetchone()
    return SuccessContext(**row) if row else None


def open_ticket(
    conn: psycopg.Connection[Any], customer_id: str, subject: str, priority: str = "normal"
) -> Ticket:
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"INSERT INTO support_tickets (customer_id, subject, priority) VALUES (%s, %s, %s)"
                f" RETURNING {_TICKET_COLUMNS}",
                (customer_id, subject, priority),
            )
            row = cur.fetchone()
    except psycopg.errors.ForeignKeyViolation:
        raise StoreError(f"no customer {customer_id!r}") from None
    except psycopg.errors.CheckViolation:
        raise StoreError(
            f"a subject is 1-500 characters; a priority one of {', '.join(PRIORITIES)}"
        ) from None
    assert row is not None
    return Ticket(**row)


def close_tickets(
    conn: psycopg.Connection[Any], customer_id: str, ticket_ids: list[int] | None = None
) -> list[Ticket]:
    """Close the given open tickets of the customer (None: all of them); returns those closed now."""
    query = (
        "UPDATE support_tickets SET status = 'closed', closed_at = now()"
        " WHERE customer_id = %s AND status = 'open'"
    )
    params: list[Any] = [customer_id]
    if ticket_ids is not None:
        query += " AND ticket_id = ANY(%s)"
        params.append(ticket_ids)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        if conn.execute("SELECT 1 FROM customers WHERE customer_id = %s", (customer_id,)).fetchone() is None:
            raise StoreError(f"no customer {customer_id!r}")
        cur.execute(query + f" RETURNING {_TICKET_COLUMNS}", params)
        rows = cur.fetchall()
        if ticket_ids is not None and len(rows) != len(set(ticket_ids)):
            # Raised inside the transaction: all or nothing, so a typo closes no ticket.
            missing = sorted(set(ticket_ids) - {r["ticket_id"] for r in rows})
            raise StoreError(f"not open tickets of {customer_id!r}: {missing}; nothing was closed")
    return [Ticket(**r) for r in rows]


def list_tickets(
    conn: psycopg.Connection[Any], customer_id: str, include_closed: bool = False
) -> list[Ticket]:
    where = "customer_id = %s" + ("" if include_closed else " AND status = 'open'")
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_TICKET_COLUMNS} FROM support_tickets WHERE {where} ORDER BY ticket_id", (customer_id,)
        )
        return [Ticket(**r) for r in cur.fetchall()]
