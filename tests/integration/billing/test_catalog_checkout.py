"""The price book at Stripe: sync-catalog is idempotent, a checkout subscribes to the base and the
metered prices (Stripe's billing cycle starting at the customer's next plg period), a plan change moves
the subscription's items, and Stripe's events — delivered by the emulator, signed — apply both."""

from __future__ import annotations

import psycopg
import pytest

from services.billing_reporter.catalog import lookup_key
from services.cli.__main__ import main as plg
from services.plans.periods import billing_period
from tests.integration.billing.harness import WEBHOOK_SECRET, Billing
from tests.integration.metering.harness import now_ms, wait_for


def _plan(billing: Billing, customer_id: str) -> str:
    with psycopg.connect(billing.db_url) as conn:
        row = conn.execute("SELECT plan FROM customers WHERE customer_id = %s", (customer_id,)).fetchone()
    assert row is not None
    return str(row[0])


def _price_ids(billing: Billing, version: str) -> dict[str | None, str]:
    with psycopg.connect(billing.db_url) as conn:
        rows = conn.execute(
            "SELECT meter, stripe_price_id FROM billing_stripe_prices WHERE stripe_account = %s"
            " AND price_version = %s",
            (billing.stripe_account(), version),
        ).fetchall()
    return dict(rows)


def test_checkout_subscribes_to_base_and_metered_prices_and_a_plan_change_moves_the_items(
    billing: Billing, monkeypatch: pytest.MonkeyPatch, capsys
):
    double = billing.double
    reporter = billing.start_reporter()
    # The emulator delivers its events to this reporter, signed, as on the local stack.
    double.webhooks.url = f"{reporter.url}/v1/stripe/webhooks"
    double.webhooks.secret = WEBHOOK_SECRET
    double.webhooks.start()
    pro = _price_ids(billing, "pro-2025-06")
    assert set(pro) == {None, "api_requests", "compute_seconds", "storage_gb"}

    # sync-catalog by hand finds everything the reporter created at start.
    monkeypatch.setenv("DATABASE_URL", billing.db_url)
    monkeypatch.setenv("STRIPE_API_BASE", double.url)
    prices_before = len(double.billing.prices)
    assert plg(["--json", "billing", "sync-catalog"]) == 0
    assert '"action":"created"' not in capsys.readouterr().out
    assert len(double.billing.prices) == prices_before

    customer = billing.customer("free", stripe=False, anchor_day=15)
    with reporter.client() as rep:
        answer = rep.post(f"/v1/checkout/{customer}", json={"plan": "pro"})
        assert answer.status_code == 200, answer.text
        session = double.billing.sessions[answer.json()["session_id"]]
        assert sorted(i["price"] for i in session["_items"]) == sorted(pro.values())
        base_item = next(i for i in session["_items"] if i["price"] == pro[None])
        assert base_item["quantity"] == 1
        assert all(i["quantity"] is None for i in session["_items"] if i is not base_item)  # metered
        anchor = int(session["_subscription_data"]["billing_cycle_anchor"])
        assert anchor * 1000 == billing_period(now_ms(), 15).end_ms

        double.handle(
            "POST", f"/_emulator/checkout/sessions/{session['id']}/complete", {}, {},
            {"authorization": "Bearer sk_test_billing"},
        )  # fmt: skip
        wait_for(lambda: _plan(billing, customer) == "pro", what="upgrade applied from Stripe's event")
        subscription = double.billing.subscriptions[session["subscription"]]
        assert subscription["metadata"]["plg_plan"] == "pro"

        growth = _price_ids(billing, "growth-2025-06")
        change = rep.post(f"/v1/checkout/{customer}", json={"plan": "growth"})
        assert change.status_code == 200, change.text
        assert change.json()["subscription_id"] == subscription["id"]
        assert len(double.billing.subscriptions) == 1  # moved, not a second subscription
        items = sorted(i["price"]["id"] for i in subscription["items"]["data"])
        assert items == sorted(growth.values())
        wait_for(lambda: _plan(billing, customer) == "growth", what="plan change applied")
    assert lookup_key("growth-2025-06", None) in {p["lookup_key"] for p in double.billing.prices.values()}
