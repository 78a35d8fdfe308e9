"""Previews and simulation: a customer's invoice for a period under another plan or price version, and
every customer's revenue under a proposed price book against the current one — from real usage (the
ledger's period totals), with the same calculator as the real invoice, in exact decimals.

``GET /v1/invoices/{customer}/preview?plan=P[&version=V][&period=YYYY-MM]``, ``plg billing preview``,
``plg billing simulate --price-book FILE``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg

from services.billing_reporter.accounts import (
    ACCOUNT_COLUMNS,
    Account,
    grants_of,
    month_usage,
    usage_over,
)
from services.billing_reporter.reconcile import period_of
from services.plans.grants import credits_for
from services.plans.invoice import Invoice, calculate_invoice
from services.plans.model import PlansConfig, ResolvedPrice
from services.plans.periods import Period
from services.plans.windows import billing_cycle, usage_period

ZERO = Decimal(0)


class PreviewError(ValueError):
    """A request the preview cannot answer: ``code`` says which part (unknown_plan, unknown_version,
    invalid_period)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def account(conn: psycopg.Connection[Any], customer_id: str) -> Account | None:
    row = conn.execute(
        f"SELECT {ACCOUNT_COLUMNS} FROM customers WHERE customer_id = %s", (customer_id,)
    ).fetchone()
    return None if row is None else Account(*row)


def usage_of(
    conn: psycopg.Connection[Any], ledger: str, customer_id: str, period: Period
) -> dict[str, Decimal]:
    """Each meter's total in the period, as the ledger has consumed it (what the invoice is made of)."""
    return month_usage(conn, ledger, customer_id, period.start_ms)


def resolve_price(
    config: PlansConfig, plan: str, version: str | None, period: Period, pinned: str | None = None
) -> ResolvedPrice:
    """The price of ``plan`` for ``period``: the named ``version``, else the version the customer is
    pinned to (their own plan), else the one in effect when the period starts."""
    if config.plan(plan) is None:
        known = ", ".join(p.slug for p in config.plans)
        raise PreviewError("unknown_plan", f"no plan {plan!r}; known: {known}")
    versions = config.price_versions(plan)
    if version is not None:
        for v in versions:
            if v.version == version:
                return v
        known = ", ".join(v.version for v in versions)
        raise PreviewError(
            "unknown_version", f"plan {plan!r} has no price version {version!r}; known: {known}"
        )
    price = config.price_for(plan, period.start.date(), pinned)
    assert price is not None  # the plan exists, so it has at least one version
    return price


def period_for(month: str | None, anchor_day: int, now_ms: int) -> Period:
    try:
        return period_of(month, anchor_day, now_ms)
    except ValueError:
        raise PreviewError("invalid_period", f"period must be YYYY-MM, not {month!r}") from None


def preview(
    conn: psycopg.Connection[Any], ledger: str, config: PlansConfig, who: Account, plan: str,
    version: str | None, month: str | None, now_ms: int,
) -> Invoice:  # fmt: skip
    """``who``'s invoice for the period (current, or starting in ``month``) if it were on ``plan``
    (``version``): real usage, the invoice calculator, a draft."""
    month_period = period_for(month, who.anchor_day, now_ms)
    pinned = who.price_version if plan == who.plan else None
    price = resolve_price(config, plan, version, month_period, pinned)
    # An annual or custom window: usage over its usage period, the base once per billing period.
    period = usage_period(price, month_period.start_ms, who.anchor_day, who.cycle_month)
    cycle = billing_cycle(price, month_period.start_ms, who.anchor_day, who.cycle_month)
    return calculate_invoice(
        customer_id=who.customer_id,
        period=period,
        billing_period=cycle,
        price=price,
        usage=usage_over(conn, ledger, config, who.customer_id, period, who.anchor_day),
        tax_region=who.tax_region,
        credits=credits_for(grants_of(conn, who.customer_id), period),
        tax_exempt=who.tax_exempt,
        tax_id=who.tax_id_pair,
    )


@dataclass
class Revenue:
    customers: int = 0
    current: Decimal = ZERO
    proposed: Decimal = ZERO

    @property
    def change(self) -> Decimal:
        return self.proposed - self.current


@dataclass
class Simulation:
    """Per customer (current total, proposed total) and per plan sums; totals are invoice subtotals
    (before tax: tax does not change with the price book's prices alone)."""

    period: str | None
    customers: list[dict[str, Any]] = field(default_factory=list)
    plans: dict[str, Revenue] = field(default_factory=dict)
    not_priced: list[str] = field(default_factory=list)  # customers whose plan the proposed book lacks

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "plans": {
                plan: {
                    "customers": r.customers,
                    "current": str(r.current),
                    "proposed": str(r.proposed),
                    "change": str(r.change),
                }
                for plan, r in sorted(self.plans.items())
            },
            "customers": self.customers,
            "not_priced": self.not_priced,
            "total": {
                "current": str(sum((r.current for r in self.plans.values()), ZERO)),
                "proposed": str(sum((r.proposed for r in self.plans.values()), ZERO)),
            },
        }


def simulate(
    conn: psycopg.Connection[Any], ledger: str, current: PlansConfig, proposed: PlansConfig,
    month: str | None, now_ms: int, customers: Iterable[Account] | None = None,
) -> Simulation:  # fmt: skip
    """Every customer's invoice for the period under the current and the proposed price book. A pinned
    (grandfathered) customer keeps their version where the proposed book still has it."""
    out = Simulation(month)
    for who in customers if customers is not None else all_accounts(conn):
        period = period_for(month, who.anchor_day, now_ms)
        usage = usage_of(conn, ledger, who.customer_id, period)
        now_price = current.price_for(who.plan, period.start.date(), who.price_version)
        new_price = proposed.price_for(who.plan, period.start.date(), who.price_version)
        if now_price is None or new_price is None:
            out.not_priced.append(who.customer_id)
            continue
        before = calculate_invoice(customer_id=who.customer_id, period=period, price=now_price, usage=usage)
        after = calculate_invoice(customer_id=who.customer_id, period=period, price=new_price, usage=usage)
        revenue = out.plans.setdefault(who.plan, Revenue())
        revenue.customers += 1
        revenue.current += before.subtotal
        revenue.proposed += after.subtotal
        out.customers.append(
            {
                "customer_id": who.customer_id,
                "plan": who.plan,
                "period_start": period.start.isoformat(),
                "current_version": now_price.version,
                "proposed_version": new_price.version,
                "current": str(before.subtotal),
                "proposed": str(after.subtotal),
                "change": str(after.subtotal - before.subtotal),
            }
        )
    return out


def all_accounts(conn: psycopg.Connection[Any]) -> list[Account]:
    rows = conn.execute(f"SELECT {ACCOUNT_COLUMNS} FROM customers ORDER BY customer_id").fetchall()
    return [Account(*row) for row in rows]
