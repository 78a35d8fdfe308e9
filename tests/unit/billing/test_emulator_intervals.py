"""Annual and custom billing windows at the Stripe emulator: plg's catalog Prices for an annual version
(sync-catalog's own parameters) make a yearly subscription — the base in advance, a year's usage in arrears
priced as plg prices it — or, with usage billed monthly, a flexible-mode subscription whose items renew on
their own intervals; classic mode refuses mixed intervals and the emulator an interval change in place."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
import stripe

from services.billing_reporter.catalog import desired_prices
from services.plans.invoice import calculate_invoice
from services.plans.periods import Period
from services.stripe_emulator.billing import add_months
from tests.unit.billing.conftest import Clock, meter_event
from tests.unit.plans.test_windows import book


def _catalog(sdk: stripe.StripeClient, **window: str) -> tuple[dict[str | None, str], str]:
    full = book(**window)
    # Only the annual plan (the others' catalog needs meters this test does not make).
    config = full.model_copy(update={"plans": tuple(p for p in full.plans if p.slug == "pro_annual")})
    meters = {
        m.slug: sdk.v1.billing.meters.create(
            {"display_name": m.slug, "event_name": m.slug, "default_aggregation": {"formula": "sum"}}
        ).id
        for m in config.meters
    }
    product = sdk.v1.products.create({"id": "plg_plan_pro_annual", "name": "pro annual"})
    prices = {
        d.meter: sdk.v1.prices.create(d.params).id  # type: ignore[arg-type]
        for d in desired_prices(config, meters)
    }
    assert product.id
    return prices, sdk.v1.customers.create({"name": "acme"}).id


def test_an_annual_version_bills_its_base_yearly_in_advance_and_the_years_usage_in_arrears(sdk, clock: Clock):
    prices, customer = _catalog(sdk, usage_billing="per_period")
    sub = sdk.v1.subscriptions.create(
        {"customer": customer, "items": [{"price": prices[None]}, {"price": prices["api_requests"]}]}
    )
    year_end = add_months(int(sub.start_date), 12)
    assert sub["items"].data[0].current_period_end == year_end
    [first] = sdk.v1.invoices.list({"customer": customer}).data
    assert first.total == 49_000  # 490.00, the year's base in advance
    meter_event(sdk, customer, 60_000, clock.now, "year-1")
    clock.now = year_end + 1
    invoices = sdk.v1.invoices.list({"customer": customer}).data
    cycle = next(i for i in invoices if i.billing_reason == "subscription_cycle")
    amounts = {ln.pricing.price_details.price: ln.amount for ln in cycle.lines.data}  # type: ignore[union-attr]
    # plg's calculator on the year: 10 000 requests over the 50 000 included at 0.001 = 10.00.
    assert amounts == {prices["api_requests"]: 1_000, prices[None]: 49_000}
    assert Decimal(amounts[prices["api_requests"]]) / 100 == Decimal("10.00")


def test_an_annual_base_with_monthly_usage_is_a_flexible_mode_subscription(sdk, clock: Clock):
    """Issue 20: the annual base once a year in advance, the usage every month in arrears, each month's
    line equal to plg's calculator on that month's usage; classic mode refuses the mix, as Stripe does."""
    prices, customer = _catalog(sdk)  # annual base, usage billed monthly
    items = [{"price": prices[None]}, {"price": prices["api_requests"]}]
    with pytest.raises(stripe.InvalidRequestError, match=r"billing_mode\[type\]=flexible"):
        sdk.v1.subscriptions.create({"customer": customer, "items": items})
    sub = sdk.v1.subscriptions.create(
        {"customer": customer, "items": items, "billing_mode": {"type": "flexible"}}
    )
    assert sub.billing_mode.type == "flexible"
    start = int(sub.start_date)
    periods = {it.price.id: (it.current_period_start, it.current_period_end) for it in sub["items"].data}
    assert periods == {
        prices[None]: (start, add_months(start, 12)),
        prices["api_requests"]: (start, add_months(start, 1)),
    }
    [first] = sdk.v1.invoices.list({"customer": customer}).data
    assert first.total == 49_000  # the year's base, in advance

    config = book()
    price = config.price_for("pro_annual", date(2026, 1, 1))
    assert price is not None
    for month in range(1, 14):
        meter_event(sdk, customer, 51_000, clock.now, f"m-{month}")
        if month == 5:  # mid-year: the next invoice bills the month's usage, no base
            preview = sdk.v1.invoices.create_preview({"customer": customer, "subscription": sub.id})
            assert [ln.pricing.price_details.price for ln in preview.lines.data] == [prices["api_requests"]]  # type: ignore[union-attr]
        clock.now = add_months(start, month) + 1
        invoices = sdk.v1.invoices.list({"customer": customer}).data
        cycle = max(
            (i for i in invoices if i.billing_reason == "subscription_cycle"), key=lambda i: i.period_end
        )
        assert cycle.period_end == add_months(start, month)
        amounts = {ln.pricing.price_details.price: ln.amount for ln in cycle.lines.data}  # type: ignore[union-attr]
        usage_period = Period(add_months(start, month - 1) * 1000, add_months(start, month) * 1000)
        plg = calculate_invoice(
            customer_id="c", period=usage_period, price=price, usage={"api_requests": Decimal(51_000)}
        ).line("api_requests")
        assert plg is not None
        assert plg.amount == Decimal("1.00")  # 1 000 over the month's 50 000 included, at 0.001
        expected = {prices["api_requests"]: int(plg.amount * 100)}
        if month % 12 == 0:  # the year ends: the next year's base, in advance
            expected[prices[None]] = 49_000
        assert amounts == expected, month
    # A second year's items: the base renewed once, on the anchor.
    renewed = sdk.v1.subscriptions.retrieve(sub.id)
    base = next(it for it in renewed["items"].data if it.price.id == prices[None])
    assert (base.current_period_start, base.current_period_end) == (
        add_months(start, 12),
        add_months(start, 24),
    )


def test_an_interval_change_in_place_is_refused(sdk):
    prices, customer = _catalog(sdk)
    sub = sdk.v1.subscriptions.create({"customer": customer, "items": [{"price": prices["api_requests"]}]})
    with pytest.raises(stripe.InvalidRequestError, match="billing interval"):
        sdk.v1.subscriptions.update(sub.id, {"items": [{"price": prices[None]}]})
