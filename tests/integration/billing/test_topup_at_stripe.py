"""Top-ups at Stripe: a paid top-up becomes, once, a Stripe billing credit grant scoped to the meter's
metered price and worth what the units cost there, so Stripe's invoice (the preview, and the period's
invoice when it ends) uses it before charging overage: equal to plg's invoice to the cent, and
`plg billing reconcile` agrees."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.plans.periods import billing_period
from tests.integration.billing.conftest import Clock
from tests.integration.billing.harness import Billing, signed, stripe_event, stripe_invoice
from tests.integration.metering.harness import now_ms, wait_for

HOUR = 3_600_000
KEY = {"authorization": "Bearer sk_test_topups"}


def test_a_top_up_is_a_stripe_credit_grant_and_stripes_invoice_equals_plgs(
    clocked: Billing, clock: Clock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    billing, double = clocked, clocked.double
    period = billing_period(now_ms(), 1)
    # The closer's round mirrors grants: every half second here (its periods close on real time: none).
    reporter = billing.start_reporter(close_check_seconds=0.5)
    c, stripe_customer, sub = billing.subscriber("pro", "pro-2025-06", period)

    with reporter.client() as rep:
        answer = rep.post(f"/v1/checkout/{c}/top-up", json={"meter": "api_requests", "quantity": 1})
        assert answer.status_code == 200, answer.text
        session = double.billing.sessions[answer.json()["session_id"]]
        paid = {"id": session["id"], "object": "checkout.session", "client_reference_id": c,
                "mode": "payment", "payment_status": "paid", "amount_total": 1000,
                "metadata": session["metadata"]}  # fmt: skip
        for _ in range(2):  # redelivered: one grant, one credit grant at Stripe
            body, headers = signed(stripe_event("checkout.session.completed", paid))
            assert rep.post("/v1/stripe/webhooks", content=body, headers=headers).status_code == 200
    status, grant_id, value, error = wait_for(
        lambda: (g := billing.credit_grants(c)) and g[0][0] != "pending" and g[0],
        60,
        what="the grant at Stripe",
    )
    assert (status, value, error) == ("sent", Decimal("10.00"), None)  # 10 000 requests at 0.001
    grant = double.billing.credit_grants[grant_id]
    assert grant["amount"]["monetary"] == {"currency": "usd", "value": 1000}
    assert grant["customer"] == stripe_customer
    assert len(double.billing.credit_grants) == 1

    # 65 000 requests: 15 000 over the 50 000 included, 10 000 of them granted -> 5.00 on both sides.
    billing.period_usage(c, 65_000, period)
    with reporter.client() as rep:
        upcoming = rep.get(f"/v1/invoices/{c}/upcoming").json()
    line = next(ln for ln in upcoming["lines"] if ln.get("meter") == "api_requests")
    assert (line["amount"], line["credited"]) == ("5.00", "10000")

    status, preview, _, _ = double.handle(
        "POST", "/v1/invoices/create_preview", {}, {"customer": stripe_customer, "subscription": sub}, KEY
    )
    assert status == 200
    metered = next(ln for ln in preview["lines"]["data"] if ln["pretax_credit_amounts"])
    assert (metered["amount"], [p["amount"] for p in metered["pretax_credit_amounts"]]) == (1500, [1000])

    code, shown = billing.reconcile(monkeypatch, capsys, "--customer", c, "--all")
    assert code == 0
    rows = {r["meter"]: r for r in shown if r["kind"] == "usage"}
    assert (rows["api_requests"]["stripe_amount"], rows["api_requests"]["plg_amount"]) == ("5.00", "5.00")

    # The period ends: Stripe's invoice of it uses the credit the same way.
    clock.move_to(period.end_ms + HOUR)
    invoice = wait_for(
        lambda: stripe_invoice(double, stripe_customer, period.end_ms), 60, what="Stripe's invoice"
    )
    [api] = [ln for ln in invoice["lines"]["data"] if ln["pretax_credit_amounts"]]
    assert api["amount"] - sum(p["amount"] for p in api["pretax_credit_amounts"]) == 500
    assert invoice["total"] == invoice["subtotal"] - 1000
