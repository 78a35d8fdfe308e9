"""Customers as billing sees them (plan, anchor, pinned price version, tax region, Stripe id) and the
running invoice of their current period."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from services.customers.windows import CYCLE_MONTH_SQL
from services.plans.grants import Grant, credits_for
from services.plans.invoice import Invoice, calculate_invoice
from services.plans.model import PlansConfig, ResolvedPrice
from services.plans.periods import Period, usage_periods
from services.plans.windows import combine_months, customer_window


@dataclass(frozen=True, slots=True)
class Account:
    customer_id: str
    plan: str
    anchor_day: int
    price_version: str | None
    tax_region: str | None
    stripe_customer_id: str | None
    name: str | None
    # The customer's own tax settings (migration 0135, `plg customers update --tax-...`).
    tax_exempt: bool = False
    tax_id: str | None = None
    tax_id_type: str | None = None
    # Where annual and custom billing windows count from (migration 0136, services/customers/windows.py).
    cycle_month: int = 0

    @property
    def tax_id_pair(self) -> tuple[str, str] | None:
        return (self.tax_id_type, self.tax_id) if self.tax_id and self.tax_id_type else None


#: The ``customers`` columns an :class:`Account` is built from, in its fields' order.
ACCOUNT_COLUMNS = (
    "customer_id, plan, billing_anchor_day, price_version, tax_region, stripe_customer_id, name,"
    f" tax_exempt, tax_id, tax_id_type, {CYCLE_MONTH_SQL}"
)


def get_account(pool: ConnectionPool, customer_id: str) -> Account | None:
    with pool.connection() as conn:
        row = conn.execute(
            f"SELECT {ACCOUNT_COLUMNS} FROM customers WHERE customer_id = %s", (customer_id,)
        ).fetchone()
    return None if row is None else Account(*row)


@dataclass(frozen=True, slots=True)
class Terms:
    """What prices a customer's period: the plan, the pinned price version (None: the version in effect)
    and the cycle month annual and custom windows count from."""

    plan: str
    price_version: str | None
    cycle_month: int


@dataclass(frozen=True, slots=True)
class PlanChange:
    """A recorded plan change (``customer_changes``, migration 0163): when it took effect at Stripe and the
    terms it ended."""

    effective_ms: int
    seq: int
    before: Terms


def terms_at(current: Terms, changes: Iterable[PlanChange], end_ms: int) -> Terms:
    """The terms in force during a period ending at ``end_ms`` (a period is billed on the plan at its end):
    the ones the earliest change taking effect at or after the end replaced, else the current ones. A
    change exactly at the end (a cancel at the period's end) belongs to the next period: Stripe's invoice
    of the period is written at its end, before the change."""
    later = [c for c in changes if c.effective_ms >= end_ms]
    return min(later, key=lambda c: (c.effective_ms, c.seq)).before if later else current


def plan_changes(
    conn: psycopg.Connection[Any], since_ms: int, customer_id: str | None = None
) -> dict[str, list[PlanChange]]:
    """Per customer, the recorded plan changes that took effect at or after ``since_ms`` (rows from before
    migration 0163 carry no terms and are left out: the current terms stand for them, as before)."""
    rows = conn.execute(
        "SELECT customer_id, (extract(epoch FROM effective_at) * 1000)::bigint, seq, from_plan,"
        " from_price_version, from_cycle_month FROM customer_changes"
        " WHERE effective_at >= to_timestamp(%s / 1000.0) AND from_plan IS NOT NULL"
        + (" AND customer_id = %s" if customer_id is not None else ""),
        (since_ms, customer_id) if customer_id is not None else (since_ms,),
    ).fetchall()
    out: dict[str, list[PlanChange]] = {}
    for customer, effective, seq, plan, version, cycle in rows:
        out.setdefault(customer, []).append(PlanChange(int(effective), int(seq), Terms(plan, version, cycle)))
    return out


def opening_price(
    config: PlansConfig, current: Terms, changes: Iterable[PlanChange], price: ResolvedPrice,
    period: Period, anchor_day: int,
) -> ResolvedPrice | None:  # fmt: skip
    """The price whose base a monthly ``period`` priced by ``price`` (the plan at its end) pays, when the
    plan in force at its start was another: Stripe charged that one's base in advance at the start and,
    with ``proration_behavior`` none, neither credits it nor charges the new one's for the period (a
    first checkout inside the period: the free plan's, 0 — Stripe's partial first period is free). None
    when the plan did not change, or either price bills over more than a month (an annual or custom
    window: a new cycle starts with the change, "Changing window"), or the currencies differ."""
    if price.period_months != 1:
        return None
    # In force at the start: a change exactly at the start (a cancel at the previous period's end) is this
    # period's already.
    start = terms_at(current, changes, period.start_ms + 1)
    found = window_of(config, start.plan, start.price_version, period.start_ms, anchor_day, start.cycle_month)
    if found is None:
        return None
    opening = found[0]
    if (
        opening.period_months != 1
        or opening.currency != price.currency
        or (opening.plan, opening.version) == (price.plan, price.version)
    ):
        return None
    return opening


def plain(value: Decimal) -> Decimal:
    """Without the column's trailing zeros: 51234.000000000 -> 51234, 1.250000000 -> 1.25."""
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


#: The price, usage period and billing period of a customer at an instant (docs/billing.md "Billing
#: windows"); shared with the entitlement API, which enforces limits over the same usage period.
window_of = customer_window


def usage_over(
    conn: psycopg.Connection[Any], ledger: str, config: PlansConfig, customer_id: str, period: Period,
    anchor_day: int,
) -> dict[str, Decimal]:  # fmt: skip
    """Each meter's usage over ``period``: the ledger's monthly period totals, combined when the period
    is longer than a month (usage billed per annual or custom period)."""
    months = usage_periods(period, anchor_day)
    totals = [month_usage(conn, ledger, customer_id, m.start_ms) for m in months]
    return totals[0] if len(totals) == 1 else combine_months(config, totals)


def month_usage(
    conn: psycopg.Connection[Any], ledger: str, customer_id: str, start_ms: int
) -> dict[str, Decimal]:
    """Each meter's total in the ledger for the month (billing period) starting at ``start_ms``."""
    rows = conn.execute(
        "SELECT meter, value FROM billing_usage WHERE ledger = %s AND customer_id = %s"
        " AND granularity = 'BILLING_PERIOD' AND window_start = %s",
        (ledger, customer_id, start_ms),
    ).fetchall()
    return {meter: plain(Decimal(value)) for meter, value in rows}


def grants_of(conn: psycopg.Connection[Any], customer_id: str) -> list[Grant]:
    """The customer's credit grants (top-ups), every one: the invoice counts those of its period."""
    rows = conn.execute(
        "SELECT meter, units, (extract(epoch FROM granted_at) * 1000)::bigint,"
        " (extract(epoch FROM expires_at) * 1000)::bigint FROM billing_credit_grants WHERE customer_id = %s",
        (customer_id,),
    ).fetchall()
    return [Grant(m, plain(Decimal(u)), int(at), None if e is None else int(e)) for m, u, at, e in rows]


def period_credits(pool: ConnectionPool, customer_id: str, period: Period) -> dict[str, Decimal]:
    with pool.connection() as conn:
        return credits_for(grants_of(conn, customer_id), period)


def upcoming_invoice(
    pool: ConnectionPool, ledger: str, config: PlansConfig, customer_id: str, now_ms: int
) -> Invoice | str | None:
    """The draft invoice of the period containing ``now_ms``; None for an unknown customer, a message for
    a plan the config does not price."""
    account = get_account(pool, customer_id)
    if account is None:
        return None
    found = window_of(
        config, account.plan, account.price_version, now_ms, account.anchor_day, account.cycle_month
    )
    if found is None:
        return (
            f"customer {customer_id!r} is on plan {account.plan!r}, which the meters-and-plans config lacks"
        )
    price, period, cycle = found
    from services.billing_reporter.adjustments import pending_for  # it imports this module

    current = Terms(account.plan, account.price_version, account.cycle_month)
    with pool.connection() as conn:
        adjustments = pending_for(conn, ledger, customer_id, period)
        usage = usage_over(conn, ledger, config, customer_id, period, account.anchor_day)
        changes = plan_changes(conn, period.start_ms, customer_id).get(customer_id, [])
    opening = opening_price(config, current, changes, price, period, account.anchor_day)
    return calculate_invoice(
        customer_id=customer_id,
        period=period,
        billing_period=cycle,
        price=price,
        usage=usage,
        tax_region=account.tax_region,
        credits=period_credits(pool, customer_id, period),
        tax_exempt=account.tax_exempt,
        tax_id=account.tax_id_pair,
        adjustments=adjustments,
        opening=opening,
    )
