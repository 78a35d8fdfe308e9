"""Issue 15's parity, for a closed period: for the seeds' plans — overage (starter, pro), packages on top of
included usage (growth compute), graduated and volume tiers (enterprise) and level meters (storage) — usage
reported through the reporter, the period ended at Stripe (the emulator's clock) and closed by plg: Stripe's
invoice of the period equals plg's final invoice line by line and in total, to the cent."""

from __future__ import annotations

from decimal import Decimal

import psycopg

from services.billing_reporter.catalog import version_prices
from services.plans.loader import load_config
from services.plans.periods import billing_period
from tests.integration.billing.conftest import Clock
from tests.integration.billing.harness import HOUR, Billing, stripe_invoice
from tests.integration.metering.harness import now_ms, wait_for

CONFIG = load_config()
COUNT, SUM, MAX = "COUNT", "SUM", "MAX"
# plan -> meter -> (usage, aggregation): every meter each plan prices, amounts that exercise the rounding.
USAGE = {
    "starter": {"api_requests": (12_345, COUNT), "storage_gb": (7, MAX)},  # 11.725 -> 11.73 (ceil); 4.00
    "pro": {"api_requests": (51_505, COUNT), "compute_seconds": (400_000, SUM), "storage_gb": (101, MAX)},
    "growth": {  # 70.371 -> 70.38; 363 601.5 s = 102 started hours, 2 over the 100 included -> 1.00
        "api_requests": (123_457, COUNT), "compute_seconds": (Decimal("363601.5"), SUM),
        "storage_gb": (61, MAX),
    },
    "enterprise": {  # graduated: 1 345 678 x 0.0005 = 672.839 -> 672.84; volume: 1 234 567 x 0.00005
        "api_requests": (2_345_678, COUNT), "compute_seconds": (1_234_567, SUM),
    },
}  # fmt: skip


def test_stripes_invoice_of_a_closed_period_equals_plgs_for_the_seeds_plans(
    clocked: Billing, clock: Clock
) -> None:
    billing, double = clocked, clocked.double
    period = billing_period(now_ms(), 1)
    billing.start_reporter(close_check_seconds=3600.0)  # syncs the catalog; this test closes periods
    customers: dict[str, tuple[str, str, dict[str | None, str]]] = {}
    for plan, meters in USAGE.items():
        price = CONFIG.price_for(plan, period.start.date())
        assert price is not None
        c, stripe_customer, _ = billing.subscriber(plan, price.version, period)
        with psycopg.connect(billing.db_url) as conn:
            prices = version_prices(conn, price.version, billing.stripe_account())
        customers[plan] = (c, stripe_customer, prices)
        for meter, (value, aggregation) in meters.items():
            billing.period_usage(c, value, period, meter=meter, aggregation=aggregation)
    growth = customers["growth"][0]
    wait_for(  # the derived package meter's level, reported after the compute window
        lambda: any(
            r[0] == "compute_seconds_packages_3600" and r[5] == "delivered" for r in billing.ledger(growth)
        ),
        60,
        what="growth's packages at Stripe",
    )

    clock.move_to(period.end_ms + HOUR)
    closed = billing.close_periods(period.end_ms + 2 * HOUR + 1, {c for c, _, _ in customers.values()})
    for plan, (c, stripe_customer, prices) in customers.items():
        invoice = wait_for(
            lambda s=stripe_customer: stripe_invoice(double, s, period.end_ms), 60, what=f"{plan} at Stripe"
        )
        at_stripe = {ln["pricing"]["price_details"]["price"]: ln["amount"] for ln in invoice["lines"]["data"]}
        by_meter = {
            (None if m is None else m.split("_packages_")[0]): pid for m, pid in prices.items()
        }  # growth's compute is priced on its derived package meter
        mine = closed[c]
        expected = {
            by_meter[None if ln.kind == "base" else ln.meter]: int(ln.amount.scaleb(2))
            for ln in mine.lines
            if ln.kind in ("base", "usage")
        }
        # The base is Stripe's next period's in advance, plg's of this period: the same price.
        assert at_stripe == expected, plan
        assert Decimal(invoice["total"]).scaleb(-2) == mine.total, plan
    assert closed[customers["growth"][0]].line("compute_seconds").amount == Decimal("1.00")  # type: ignore[union-attr]
    assert closed[customers["enterprise"][0]].line("api_requests").amount == Decimal("672.84")  # type: ignore[union-attr]
