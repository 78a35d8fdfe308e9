"""Annual and custom billing windows at the Stripe emulator: plg's catalog Prices for an annual version
(sync-catalog's own parameters) make a yearly subscription — the base in advance, a year's usage in arrears
priced as plg prices it — and what the emulator does not implement is refused the way Stripe's classic
billing mode refuses it (items on different intervals; an interval change in place)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
import stripe

from services.billing_reporter.catalog import desired_prices
from services.stripe_emulator.billing import add_months
from services.stripe_emulator.emulator import StripeEmulator
from tests.unit.plans.test_windows import book

KEY = "sk_test_intervals"


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sdk(clock: Clock) -> Iterator[stripe.StripeClient]:
    emulator = StripeEmulator(clock=clock).serve()
    yield stripe.StripeClient(
        KEY, base_addresses={"api": emulator.url}, max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=10),
    )  # fmt: skip
    emulator.close()


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


def test_an_annual_version_bills_its_base_yearly_in_advance_and_the_years_usage_in_arrears(sdk, clock):
    prices, customer = _catalog(sdk, usage_billing="per_period")
    sub = sdk.v1.subscriptions.create(
        {"customer": customer, "items": [{"price": prices[None]}, {"price": prices["api_requests"]}]}
    )
    year_end = add_months(int(sub.start_date), 12)
    assert sub["items"].data[0].current_period_end == year_end
    [first] = sdk.v1.invoices.list({"customer": customer}).data
    assert first.total == 49_000  # 490.00, the year's base in advance
    sdk.v1.billing.meter_events.create(
        {"event_name": "api_requests", "payload": {"stripe_customer_id": customer, "value": "60000"},
         "timestamp": int(clock.now), "identifier": "year-1"}
    )  # fmt: skip
    clock.now = year_end + 1
    invoices = sdk.v1.invoices.list({"customer": customer}).data
    cycle = next(i for i in invoices if i.billing_reason == "subscription_cycle")
    amounts = {ln.pricing.price_details.price: ln.amount for ln in cycle.lines.data}  # type: ignore[union-attr]
    # plg's calculator on the year: 10 000 requests over the 50 000 included at 0.001 = 10.00.
    assert amounts == {prices["api_requests"]: 1_000, prices[None]: 49_000}
    assert Decimal(amounts[prices["api_requests"]]) / 100 == Decimal("10.00")


def test_what_the_emulator_does_not_implement_is_refused_like_classic_billing_mode(sdk):
    prices, customer = _catalog(sdk)  # annual base, usage monthly: a mixed-interval subscription
    with pytest.raises(stripe.InvalidRequestError, match="billing_mode flexible"):
        sdk.v1.subscriptions.create(
            {"customer": customer, "items": [{"price": prices[None]}, {"price": prices["api_requests"]}]}
        )
    sub = sdk.v1.subscriptions.create({"customer": customer, "items": [{"price": prices["api_requests"]}]})
    with pytest.raises(stripe.InvalidRequestError, match="billing interval"):
        sdk.v1.subscriptions.update(sub.id, {"items": [{"price": prices[None]}]})
