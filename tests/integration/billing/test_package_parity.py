"""Package pricing on top of included usage (growth: 100 hours included, then 0.50 per started hour) is
exact at Stripe: the reporter sends the derived package meter the packages the period has started, the
synced price bills them over the included ones, and Stripe's line equals plg's to the cent."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from services.billing_reporter.catalog import version_prices
from services.plans.periods import billing_period
from tests.integration.billing.harness import Billing
from tests.integration.metering.harness import now_ms, wait_for

KEY = {"authorization": "Bearer sk_test_packages"}
PACKAGES = "compute_seconds_packages_3600"


def test_growth_compute_packages_cost_the_same_at_stripe_and_in_plg(
    billing: Billing, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    double = billing.double
    reporter = billing.start_reporter()  # syncs the catalog: the package meter and its price
    period = billing_period(now_ms(), 1)
    c, stripe_customer, sub = billing.subscriber("growth", "growth-2025-06", period)
    with psycopg.connect(billing.db_url) as conn:
        prices = version_prices(conn, "growth-2025-06", billing.stripe_account())
    assert "compute_seconds" not in prices  # the inexact per-second price is not sold any more

    # 101 hours and 1.5 s: 2 started hours over the 100 included -> 1.00 (1 hour and 1.5 s would be
    # 0.50 at a per-second rate's nearest cent, and 1.00 here).
    used = Decimal("363601.5")
    billing.period_usage(c, used, period, meter="compute_seconds", aggregation="SUM", count=10)

    def delivered() -> bool:
        rows = billing.ledger(c)
        return {r[0] for r in rows} == {"compute_seconds", PACKAGES} and all(
            r[5] == "delivered" for r in rows
        )

    wait_for(delivered, 60, what="the window and the package level at Stripe")
    assert [(r[3], r[5]) for r in billing.ledger(c) if r[0] == PACKAGES] == [(Decimal(102), "delivered")]

    status, preview, _, _ = double.handle(
        "POST",
        "/v1/invoices/create_preview",
        {},
        {"customer": stripe_customer, "subscription": sub},
        KEY,
    )
    assert status == 200
    line = next(
        ln for ln in preview["lines"]["data"] if ln["pricing"]["price_details"]["price"] == prices[PACKAGES]
    )
    assert (line["quantity"], line["amount"]) == (102, 100)

    with reporter.client() as http:
        upcoming = http.get(f"/v1/invoices/{c}/upcoming").json()
    compute = next(ln for ln in upcoming["lines"] if ln.get("meter") == "compute_seconds")
    assert (compute["packages"], compute["amount"]) == ("2", "1.00")

    code, shown = billing.reconcile(monkeypatch, capsys, "--customer", c, "--all")
    assert code == 0
    rows = {r["meter"]: r for r in shown if r["kind"] == "usage"}
    assert (rows[PACKAGES]["stripe"], rows[PACKAGES]["ledger_usage"]) == ("102", "102")
    assert (rows[PACKAGES]["stripe_amount"], rows[PACKAGES]["plg_amount"]) == ("1.00", "1.00")
