"""Billing windows (seed 003 ``meteringWindow: monthly | annual | custom``): which periods a customer's
price bills in. Pure: the price, the customer's anchor day and cycle month, an instant in; periods out.

* the **billing period** is the base price's cycle: 1, 12 or ``interval_months`` months from the cycle
  month, on the anchor day (``services/plans/periods.billing_period``);
* the **usage period** is what included usage, overage and tiers are measured over: a month
  (``usage_billing: monthly``, the metering aggregator's and the entitlement API's period) or the whole
  billing period (``per_period``), whose usage is the months' added up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from services.plans.model import Aggregation, PlansConfig, ResolvedPrice
from services.plans.periods import Period, billing_period


def billing_cycle(price: ResolvedPrice, at_ms: int, anchor_day: int, cycle_month: int) -> Period:
    """The billing period (base price's cycle) containing ``at_ms``."""
    return billing_period(at_ms, anchor_day, price.period_months, cycle_month)


def usage_period(price: ResolvedPrice, at_ms: int, anchor_day: int, cycle_month: int) -> Period:
    """The period usage is priced over that contains ``at_ms``."""
    return billing_period(at_ms, anchor_day, price.usage_months, cycle_month)


def customer_window(
    config: PlansConfig, plan: str, pinned: str | None, at_ms: int, anchor_day: int, cycle_month: int
) -> tuple[ResolvedPrice, Period, Period] | None:
    """The price of ``plan`` at ``at_ms`` with its usage period and billing period: the version in effect
    when the billing period starts (a longer window is priced by the version in effect when *it* started).
    One answer for the invoices (billing reporter) and the limits (entitlement API), so both count usage
    over the same period. None for an unknown plan."""
    month = billing_period(at_ms, anchor_day)
    price = config.price_for(plan, month.start.date(), pinned)
    if price is None:
        return None
    if price.period_months > 1:
        price = config.price_for(
            plan, billing_cycle(price, at_ms, anchor_day, cycle_month).start.date(), pinned
        )
        assert price is not None
    return (
        price,
        usage_period(price, at_ms, anchor_day, cycle_month),
        billing_cycle(price, at_ms, anchor_day, cycle_month),
    )


def combine_months(config: PlansConfig, months: Sequence[Mapping[str, Decimal]]) -> dict[str, Decimal]:
    """A multi-month usage period's usage from its months' (oldest first): SUM and COUNT meters add up,
    MAX takes the largest, LATEST the last month's. (UNIQUE_COUNT cannot be combined — the price book
    refuses ``per_period`` for it.)"""
    out: dict[str, Decimal] = {}
    for month in months:
        for slug, value in month.items():
            meter = config.meter(slug)
            kind = meter.aggregation if meter is not None else Aggregation.SUM
            if slug not in out or kind is Aggregation.LATEST:
                out[slug] = value
            elif kind is Aggregation.MAX:
                out[slug] = max(out[slug], value)
            else:
                out[slug] += value
    return out
