"""End to end: a free customer hits its hard limit, the entitlement API answers with an upgrade, checkout
gives a session URL (stripe-mock), a signed checkout.session.completed applies the upgrade within
seconds (the customer-change notification, not a cache TTL), and a failed payment keeps access during
the grace, then loses it."""

from __future__ import annotations

import time

import psycopg

from tests.integration.billing.harness import Billing, signed, stripe_event
from tests.integration.metering.harness import usage_event, wait_for


def test_a_free_customer_upgrades_through_checkout_and_a_failed_payment_ends_after_the_grace(
    billing: Billing, stripe_mock_url: str
):
    metering = billing.metering
    c = metering.customer("free")
    metering.start()
    # A TTL of an hour: the upgrade must arrive through the change notification.
    entitlements = metering.start_entitlements(customers_refresh_seconds=3600.0)
    reporter = billing.start_reporter(
        stripe={"api_base": stripe_mock_url}, past_due_grace_seconds=4.0, grace_check_seconds=0.2
    )
    metering.send(usage_event(c) for _ in range(1001))
    with entitlements.client() as api, reporter.client() as rep:

        def check() -> dict:
            return api.get(f"/v1/entitlements/{c}/api_requests").json()

        refused = wait_for(lambda: (b := check())["usage"] == 1001 and b, what="usage counted")
        assert refused["allowed"] is False
        assert refused["upgrade"]["suggested_plan"] == "pro"

        session = rep.post(f"/v1/checkout/{c}")
        assert session.status_code == 200, session.text
        assert session.json()["url"].startswith("https://checkout.stripe.com/")
        assert session.json()["plan"] == "pro"

        completed = stripe_event(
            "checkout.session.completed",
            {
                "id": session.json()["session_id"],
                "object": "checkout.session",
                "client_reference_id": c,
                "metadata": {"plg_plan": "pro", "plg_customer_id": c},
                "customer": f"cus_{c}",
                "subscription": f"sub_{c}",
                "mode": "subscription",
                "payment_status": "paid",
            },
        )
        body, headers = signed(completed)
        sent = time.monotonic()
        answer = rep.post("/v1/stripe/webhooks", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"] == "applied"
        # The customer cache's TTL is an hour: seen within the wait, the upgrade came through the change
        # notification. No wall-clock bound: the machine is shared.
        allowed = wait_for(
            lambda: (b := check())["allowed"] and b, timeout=120, interval=0.05, what="upgrade applied"
        )
        took = time.monotonic() - sent
        assert allowed["plan"] == "pro"
        print(f"upgrade visible to the entitlement API {took:.2f}s after the webhook")
        # The same event again (Stripe redelivers) changes nothing.
        assert rep.post("/v1/stripe/webhooks", content=body, headers=headers).json()["result"] == "duplicate"
        with psycopg.connect(billing.db_url) as conn:
            row = conn.execute(
                "SELECT c.plan, c.price_version, c.stripe_customer_id, s.status FROM customers c"
                " JOIN subscriptions s USING (customer_id) WHERE customer_id = %s",
                (c,),
            ).fetchone()
        assert row == ("pro", "pro-2025-06", f"cus_{c}", "active")

        failed = stripe_event(
            "invoice.payment_failed",
            {
                "object": "invoice",
                "customer": f"cus_{c}",
                "parent": {"subscription_details": {"subscription": f"sub_{c}"}},
            },
        )
        body, headers = signed(failed)
        assert rep.post("/v1/stripe/webhooks", content=body, headers=headers).json()["result"] == "applied"
        time.sleep(1.0)
        during = check()
        assert (during["plan"], during["allowed"]) == ("pro", True)  # past_due, within the grace
        lost = wait_for(lambda: (b := check())["plan"] == "free" and b, timeout=10, what="grace over")
        assert lost["allowed"] is False
        assert lost["upgrade"]["suggested_plan"] == "pro"


def test_webhooks_with_a_bad_signature_or_a_stale_timestamp_change_nothing(billing: Billing):
    c = billing.customer("free", stripe=False)
    reporter = billing.start_reporter()
    event = stripe_event(
        "checkout.session.completed",
        {
            "client_reference_id": c,
            "metadata": {"plg_plan": "pro"},
            "customer": "cus_x",
            "payment_status": "paid",
        },
    )
    with reporter.client() as rep:
        body, headers = signed(event, secret="whsec_wrong")
        bad = rep.post("/v1/stripe/webhooks", content=body, headers=headers)
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_signature")
        body, headers = signed(event, at=int(time.time()) - 3600)
        stale = rep.post("/v1/stripe/webhooks", content=body, headers=headers)
        assert (stale.status_code, stale.json()["code"]) == (400, "invalid_signature")
        unsigned = rep.post("/v1/stripe/webhooks", content=body)
        assert (unsigned.status_code, unsigned.json()["code"]) == (400, "missing_signature")
        body, headers = signed(event)
        garbled = rep.post("/v1/stripe/webhooks", content=b"{not json", headers=signed({"x": 1})[1])
        assert garbled.status_code == 400
        with psycopg.connect(billing.db_url) as conn:
            assert conn.execute("SELECT plan FROM customers WHERE customer_id = %s", (c,)).fetchone() == (
                "free",
            )
            assert conn.execute(
                "SELECT count(*) FROM stripe_webhook_events WHERE event_id = %s", (event["id"],)
            ).fetchone() == (0,)
        # Signed properly, the same event applies; an unknown customer's is refused so that Stripe retries.
        assert rep.post("/v1/stripe/webhooks", content=body, headers=headers).json()["result"] == "applied"
        other = stripe_event(
            "checkout.session.completed",
            {"client_reference_id": "nobody", "metadata": {"plg_plan": "pro"}, "payment_status": "paid"},
        )
        body, headers = signed(other)
        retry = rep.post("/v1/stripe/webhooks", content=body, headers=headers)
        assert (retry.status_code, retry.json()["code"]) == (409, "not_known_yet")


def test_checkout_refuses_what_it_cannot_sell(billing: Billing, stripe_mock_url: str):
    free, enterprise = billing.customer("free"), billing.customer("pro")
    reporter = billing.start_reporter(stripe={"api_base": stripe_mock_url})
    with reporter.client() as rep:
        assert rep.post("/v1/checkout/nobody").status_code == 404
        assert rep.post(f"/v1/checkout/{free}", json={"plan": "platinum"}).json()["code"] == "unknown_plan"
        assert rep.post(f"/v1/checkout/{free}", content=b"{").json()["code"] == "invalid_json"
        assert rep.post(f"/v1/checkout/{enterprise}").json()["code"] == "contact_sales"  # pro -> enterprise
        assert rep.post(f"/v1/checkout/{free}", json={"plan": "free"}).json()["code"] == "already_on_plan"
        assert rep.post(f"/v1/checkout/{free}", json={"plan": "starter"}).status_code == 200
