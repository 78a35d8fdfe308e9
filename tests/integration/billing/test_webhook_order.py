"""Stripe's events applied in Stripe's order, not in arrival order: a stale update after a delete, an
update before the checkout that introduces its subscription, a late invoice.paid after a newer failure,
a forged-but-valid session for a contract plan, an asynchronous payment."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.billing.harness import Billing, signed, stripe_event

T0 = 1_800_000_000


def send(rep: httpx.Client, kind: str, obj: dict[str, Any], created: int) -> httpx.Response:
    event = stripe_event(kind, obj) | {"created": created}
    body, headers = signed(event)
    return rep.post("/v1/stripe/webhooks", content=body, headers=headers)


def state(billing: Billing, customer_id: str) -> tuple[str, str | None]:
    with psycopg.connect(billing.db_url) as conn:
        row = conn.execute(
            "SELECT c.plan, s.status FROM customers c LEFT JOIN subscriptions s USING (customer_id)"
            " WHERE customer_id = %s",
            (customer_id,),
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def completed(customer_id: str, plan: str = "pro", paid: str = "paid", session: str | None = None) -> dict:
    return {
        "id": session or f"cs_{customer_id}", "object": "checkout.session",
        "client_reference_id": customer_id,
        "metadata": {"plg_plan": plan, "plg_customer_id": customer_id}, "customer": f"cus_{customer_id}",
        "subscription": f"sub_{customer_id}", "mode": "subscription", "payment_status": paid,
    }  # fmt: skip


def subscription(customer_id: str, status: str, plan: str = "pro") -> dict:
    return {
        "id": f"sub_{customer_id}", "object": "subscription", "customer": f"cus_{customer_id}",
        "status": status, "metadata": {"plg_plan": plan, "plg_customer_id": customer_id},
    }  # fmt: skip


def invoice(customer_id: str, invoice_id: str) -> dict:
    return {
        "id": invoice_id, "object": "invoice", "customer": f"cus_{customer_id}",
        "parent": {"subscription_details": {"subscription": f"sub_{customer_id}"}},
    }  # fmt: skip


@pytest.fixture
def rep(billing: Billing):
    reporter = billing.start_reporter()
    with reporter.client() as client:
        yield client


def test_a_stale_update_after_the_delete_does_not_bring_the_plan_back(billing: Billing, rep):
    c = billing.customer("free", stripe=False)
    assert send(rep, "checkout.session.completed", completed(c), T0).json()["result"] == "applied"
    assert (
        send(rep, "customer.subscription.deleted", subscription(c, "canceled"), T0 + 20).json()["result"]
        == "applied"
    )
    late = send(rep, "customer.subscription.updated", subscription(c, "active"), T0 + 10)
    assert (late.status_code, late.json()["result"]) == (200, "stale")
    assert state(billing, c) == ("free", "canceled")


def test_an_update_before_its_checkout_is_retried_and_applies_after_it(billing: Billing, rep):
    c = billing.customer("free", stripe=False)
    early = send(rep, "customer.subscription.updated", subscription(c, "past_due"), T0 + 10)
    assert (early.status_code, early.json()["code"]) == (409, "not_known_yet")
    assert state(billing, c) == ("free", None)
    assert send(rep, "checkout.session.completed", completed(c), T0).json()["result"] == "applied"
    # Stripe's retry of the same event (same id would be new here: nothing of it was recorded).
    again = send(rep, "customer.subscription.updated", subscription(c, "past_due"), T0 + 10)
    assert again.json()["result"] == "applied"
    assert state(billing, c) == ("pro", "past_due")


def test_a_late_invoice_paid_does_not_clear_a_newer_failure(billing: Billing, rep):
    c = billing.customer("free", stripe=False)
    send(rep, "checkout.session.completed", completed(c), T0)
    assert send(rep, "invoice.payment_failed", invoice(c, "in_2"), T0 + 30).json()["result"] == "applied"
    late = send(rep, "invoice.paid", invoice(c, "in_1"), T0 + 20)
    assert late.json()["result"] == "stale"
    assert state(billing, c) == ("pro", "past_due")
    # A payment newer than the failure clears it.
    assert send(rep, "invoice.paid", invoice(c, "in_2"), T0 + 40).json()["result"] == "applied"
    assert state(billing, c) == ("pro", "active")


def test_a_valid_session_plg_did_not_create_cannot_grant_a_contract_plan(billing: Billing, rep):
    c = billing.customer("pro", stripe=False)
    forged = send(
        rep, "checkout.session.completed", completed(c, plan="enterprise", session=f"cs_forged_{c}"), T0
    )
    assert forged.json()["result"] == "ignored"
    assert "contract" in forged.json()["detail"]
    assert state(billing, c)[0] == "pro"
    # The same through a subscription update is refused too.
    send(rep, "checkout.session.completed", completed(c, plan="growth"), T0 + 1)
    send(rep, "customer.subscription.updated", subscription(c, "active", plan="enterprise"), T0 + 2)
    assert state(billing, c)[0] == "growth"
    # A session plg created for that plan (sales did it through plg) applies.
    with psycopg.connect(billing.db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO billing_stripe_sessions (session_id, customer_id, plan, kind)"
            " VALUES (%s, %s, 'enterprise', 'checkout')",
            (f"cs_sales_{c}", c),
        )
    ok = send(
        rep, "checkout.session.completed", completed(c, plan="enterprise", session=f"cs_sales_{c}"), T0 + 3
    )
    assert ok.json()["result"] == "applied"
    assert state(billing, c)[0] == "enterprise"


def test_an_unpaid_checkout_waits_for_its_asynchronous_payment(billing: Billing, rep):
    c = billing.customer("free", stripe=False)
    waiting = send(rep, "checkout.session.completed", completed(c, paid="unpaid"), T0)
    assert waiting.json()["result"] == "ignored"
    assert state(billing, c) == ("free", None)
    paid = send(rep, "checkout.session.async_payment_succeeded", completed(c), T0 + 60)
    assert paid.json()["result"] == "applied"
    assert state(billing, c) == ("pro", "active")
