"""An annual base price with usage billed monthly, at the Stripe emulator (issue 20): checkout asks Stripe
for a flexible-mode subscription (items on two intervals), and a plan change from a monthly plan migrates
the classic subscription to flexible mode before moving its items; the year's base is charged once, in
advance;
each month's usage line at Stripe equals plg's to the cent (the preview, `plg billing reconcile`, and the
month's invoice when it ends); over the month the customer pays Stripe what plg's invoice says."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from services.plans.loader import load_config
from services.plans.periods import billing_period
from tests.integration.billing.conftest import Clock
from tests.integration.billing.harness import HOUR, Billing, stripe_invoice
from tests.integration.metering.harness import now_ms, wait_for
from tests.price_books import annual_plan, write_book

KEY = {"authorization": "Bearer sk_test_annual"}
VERSION = "pro-annual-2025"


def test_an_annual_base_with_monthly_usage_bills_at_stripe_as_plg_does(
    clocked: Billing, clock: Clock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    billing, double = clocked, clocked.double
    book = write_book(tmp_path, annual_plan("pro_annual", "monthly", version=VERSION))
    monkeypatch.setenv("PLG_METERING_CONFIG", str(book))  # the CLI's price book (reconcile)
    period = billing_period(now_ms(), 1)
    # Syncs the catalog (a yearly base Price, a monthly metered one); its closer stays out of the way.
    reporter = billing.start_reporter(config_path=book, close_check_seconds=3600.0)

    # Checkout: one subscription, items on two intervals -> billing_mode flexible, which Stripe requires.
    upgrading = billing.customer("pro", stripe=False)
    with reporter.client() as rep:
        answer = rep.post(f"/v1/checkout/{upgrading}", json={"plan": "pro_annual"})
    assert answer.status_code == 200, answer.text
    session = double.billing.sessions[answer.json()["session_id"]]
    assert session["_subscription_data"]["billing_mode"] == {"type": "flexible"}
    status, done, _, _ = double.handle(
        "POST", f"/_emulator/checkout/sessions/{session['id']}/complete", {}, {}, KEY
    )
    assert status == 200, done
    made = double.billing.subscriptions[done["subscription"]]
    assert made["billing_mode"]["type"] == "flexible"
    assert sorted(it["price"]["recurring"]["interval"] for it in made["items"]["data"]) == ["month", "year"]

    # A plan change to it from a monthly plan, whose subscription is classic: plg has Stripe move it to
    # flexible billing mode first (classic refuses items on two intervals), then moves the items.
    monthly, _, monthly_sub = billing.subscriber("pro", "pro-2025-06", period)
    with reporter.client() as rep:
        change = rep.post(f"/v1/checkout/{monthly}", json={"plan": "pro_annual"})
    assert change.status_code == 200, change.text
    assert change.json()["subscription_id"] == monthly_sub
    moved = double.billing.subscriptions[monthly_sub]
    assert (moved["billing_mode"]["type"], moved["metadata"]["plg_plan"]) == ("flexible", "pro_annual")
    assert sorted(it["price"]["recurring"]["interval"] for it in moved["items"]["data"]) == ["month", "year"]

    # A customer on it, Stripe's periods on plg's: the year's base at once, in advance.
    c, stripe_customer, sub = billing.subscriber("pro_annual", VERSION, period, billing_mode="flexible")
    [first] = [i for i in double.billing.invoices.values() if i["customer"] == stripe_customer]
    assert first["total"] == 49_000

    billing.period_usage(c, 51_000, period)  # 1 000 over the month's 50 000 at 0.001 -> 1.00
    with reporter.client() as rep:
        upcoming = rep.get(f"/v1/invoices/{c}/upcoming").json()
    amounts = {ln.get("meter") or ln["kind"]: ln["amount"] for ln in upcoming["lines"]}
    assert (amounts["base"], amounts["api_requests"]) == ("490.00", "1.00")  # the year's first month
    status, preview, _, _ = double.handle(
        "POST", "/v1/invoices/create_preview", {}, {"customer": stripe_customer, "subscription": sub}, KEY
    )
    assert status == 200, preview
    # Mid-year, Stripe's next invoice is the month's usage only (the base renews with the year).
    assert [(ln["quantity"], ln["amount"]) for ln in preview["lines"]["data"]] == [(51_000, 100)]
    code, rows = billing.reconcile(monkeypatch, capsys, "--customer", c, "--all")
    assert code == 0, rows
    usage = {r["meter"]: r for r in rows if r["kind"] == "usage"}
    assert (usage["api_requests"]["stripe_amount"], usage["api_requests"]["plg_amount"]) == ("1.00", "1.00")

    # The month ends: Stripe invoices its usage (no base), plg closes its invoice (base + usage).
    clock.move_to(period.end_ms + HOUR)
    invoice = wait_for(
        lambda: stripe_invoice(double, stripe_customer, period.end_ms), 60, what="Stripe's invoice"
    )
    assert [ln["amount"] for ln in invoice["lines"]["data"]] == [100]
    closed = billing.close_periods(period.end_ms + 2 * HOUR + 1, {c}, load_config(book))[c]
    assert closed.total == Decimal("491.00")
    assert Decimal(first["total"] + invoice["total"]).scaleb(-2) == closed.total  # the month's money
