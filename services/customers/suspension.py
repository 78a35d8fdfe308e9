"""Suspending and unsuspending a customer (the abuse guard, docs/metering.md#abuse-guard): the only writes
of the suspension columns of ``customers`` (migration 0100), used by the metering aggregator (automatic
suspensions from abuse signals) and the CLI (``plg customers suspend|unsuspend``). The customers trigger
notifies ``plg_customer_changed``, so every directory (entitlements, ingest) sees the change within a
second; the entitlement API then refuses every feature with ``code: "suspended"``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from services.customers.model import Customer

# Shown with every refusal: where a suspended customer turns.
APPEAL = (
    "If you think this is a mistake, contact support with your customer id; support can lift the "
    "suspension at once (plg customers unsuspend)."
)


def suspension_notice(customer: Customer) -> dict[str, Any]:
    """What an app is told about its suspension (ingest's accepted batches, the entitlement API's fields)."""
    return {
        "code": "suspended",
        "reason": customer.suspended_reason or "suspended",
        "suspended_since": _utc(customer.suspended_at),
        "suspended_until": _utc(customer.suspended_until),
        "appeal": APPEAL,
    }


def _utc(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


class CustomerNotFound(LookupError):
    pass


def suspend(
    conn: psycopg.Connection[Any],
    customer_id: str,
    *,
    reason: str,
    by: str,
    until: datetime | None = None,
) -> bool:
    """Suspend by hand (support, tests): always applies, replacing a current suspension's reason and end.
    Raises :class:`CustomerNotFound`; returns True."""
    cur = conn.execute(
        "UPDATE customers SET suspended_at = now(), suspended_until = %s, suspended_reason = %s,"
        " suspended_by = %s, updated_at = now() WHERE customer_id = %s",
        (until, reason, by, customer_id),
    )
    if cur.rowcount == 0:
        raise CustomerNotFound(customer_id)
    return True


def suspend_automatically(
    conn: psycopg.Connection[Any], customer_id: str, *, reason: str, cool_down: timedelta | None
) -> bool:
    """The guard's suspension: only when the customer is not suspended already and no unsuspension by hand
    exempts it; returns whether it applied. Idempotent: a signal applied twice suspends once."""
    cur = conn.execute(
        "UPDATE customers SET suspended_at = now(), suspended_until = now() + %s, suspended_reason = %s,"
        " suspended_by = 'abuse-guard', updated_at = now()"
        " WHERE customer_id = %s"
        " AND (suspended_at IS NULL OR (suspended_until IS NOT NULL AND suspended_until <= now()))"
        " AND (suspension_exempt_until IS NULL OR suspension_exempt_until <= now())",
        (cool_down if cool_down is not None else None, reason, customer_id),
    )
    return cur.rowcount > 0


def unsuspend(
    conn: psycopg.Connection[Any], customer_id: str, *, exempt_for: timedelta | None = None
) -> bool:
    """Lift a suspension; the guard does not suspend again automatically for ``exempt_for``. Raises
    :class:`CustomerNotFound`; returns whether the customer was suspended."""
    row = conn.execute(
        "UPDATE customers c SET suspended_at = NULL, suspended_until = NULL, suspended_reason = NULL,"
        " suspended_by = NULL, suspension_exempt_until = now() + %s, updated_at = now()"
        " FROM customers old WHERE c.customer_id = %s AND old.customer_id = c.customer_id"
        " RETURNING old.suspended_at IS NOT NULL",
        (exempt_for or timedelta(0), customer_id),
    ).fetchone()
    if row is None:
        raise CustomerNotFound(customer_id)
    return bool(row[0])


def record_signal(conn: psycopg.Connection[Any], signal: dict[str, Any]) -> None:
    """Keep an abuse signal (decoded ``abuse-signals`` record) for customer success; idempotent by id."""
    evidence = {
        k: (str(v) if not isinstance(v, int | float | str | type(None)) else v)
        for k, v in signal.items()
        if k not in ("signal_id", "customer_id", "kind", "action", "reason", "minute_start", "detected_at")
    }
    conn.execute(
        "INSERT INTO abuse_signals (signal_id, customer_id, kind, action, reason, evidence, minute_start,"
        " detected_at) VALUES (%s, %s, %s, %s, %s, %s, to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0))"
        " ON CONFLICT (signal_id) DO NOTHING",
        (
            signal["signal_id"],
            signal["customer_id"],
            signal["kind"],
            signal["action"],
            signal["reason"],
            orjson.dumps(evidence).decode(),
            signal["minute_start"],
            signal["detected_at"],
        ),
    )


def abuse_overview(conn: psycopg.Connection[Any], hours: int = 24) -> list[dict[str, Any]]:
    """Customers suspended now, and those with abuse signals in the last ``hours`` that are not (suspected),
    suspended first; for the CS dashboard."""
    rows = conn.execute(
        """
        WITH recent AS (
            SELECT customer_id, count(*) AS signals,
                   (array_agg(reason ORDER BY detected_at DESC))[1] AS last_reason
            FROM abuse_signals WHERE detected_at > now() - make_interval(hours => %s) GROUP BY customer_id
        )
        SELECT c.customer_id, c.plan,
               c.suspended_at IS NOT NULL AND (c.suspended_until IS NULL OR c.suspended_until > now()),
               COALESCE(r.signals, 0), COALESCE(c.suspended_reason, r.last_reason), c.suspended_until
        FROM customers c LEFT JOIN recent r USING (customer_id)
        WHERE r.customer_id IS NOT NULL
           OR (c.suspended_at IS NOT NULL AND (c.suspended_until IS NULL OR c.suspended_until > now()))
        ORDER BY 3 DESC, 4 DESC, 1
        LIMIT 500
        """,
        (hours,),
    ).fetchall()
    return [
        {
            "customer_id": cid,
            "plan": plan,
            "state": "suspended" if suspended else "suspected",
            "signals": signals,
            "reason": reason,
            "until": _utc(until) if suspended else None,
        }
        for cid, plan, suspended, signals, reason, until in rows
    ]
