"""The customer's billing cycle month (migration 0136): where annual and custom billing windows count
their periods from (docs/billing.md "Billing windows"). The only writer of that column."""

from __future__ import annotations

from typing import Any

import psycopg

from services.plans.periods import billing_period, month_index

#: The customer's cycle month in SQL: the stored one, else the month the customer was created in.
CYCLE_MONTH_SQL = (
    "COALESCE(billing_cycle_month,"
    " (extract(year FROM created_at AT TIME ZONE 'UTC') * 12"
    " + extract(month FROM created_at AT TIME ZONE 'UTC') - 1)::int)"
)


def start_cycle(conn: psycopg.Connection[Any], customer_id: str, anchor_day: int, at_ms: int) -> int:
    """Start the customer's billing cycle at the monthly period containing ``at_ms`` (a plan change: the
    period it happens in is billed on the new plan, so a new annual window starts with it); returns the
    month index stored."""
    month = month_index(billing_period(at_ms, anchor_day).start.date())
    conn.execute(
        "UPDATE customers SET billing_cycle_month = %s, updated_at = now() WHERE customer_id = %s",
        (month, customer_id),
    )
    return month
