"""A customer whose tax settings plg holds but who has no Stripe customer yet: checkout creates the Stripe
customer first, gives it the exempt status and tax id, links it, and names it in the session — so Stripe
taxes the first invoice as plg's invoice does."""

from __future__ import annotations

import psycopg
import pytest

from services.cli.__main__ import main as plg
from tests.integration.billing.harness import Billing


def test_checkout_gives_stripe_the_tax_settings_before_the_first_invoice(
    billing: Billing, monkeypatch: pytest.MonkeyPatch
):
    double = billing.double
    reporter = billing.start_reporter()
    customer = billing.customer("free", stripe=False)
    monkeypatch.setenv("DATABASE_URL", billing.db_url)
    monkeypatch.setenv("STRIPE_API_BASE", double.url)
    assert plg(["customers", "update", customer, "--tax-region", "DE", "--tax-exempt", "yes",
                "--tax-id", "DE123456789"]) == 0  # fmt: skip
    with reporter.client() as rep:
        answer = rep.post(f"/v1/checkout/{customer}", json={"plan": "pro"})
        assert answer.status_code == 200, answer.text
        again = rep.post(f"/v1/checkout/{customer}", json={"plan": "pro"})
        assert again.status_code == 200, again.text
    session = double.billing.sessions[answer.json()["session_id"]]
    stripe_customer = session["customer"]
    assert stripe_customer
    found = double.billing.customers[stripe_customer]
    assert found["tax_exempt"] == "exempt"
    assert [(t["type"], t["value"]) for t in found["_tax_ids"].values()] == [("eu_vat", "DE123456789")]
    assert found["metadata"]["plg_customer_id"] == customer
    with psycopg.connect(billing.db_url) as conn:
        linked = conn.execute(
            "SELECT stripe_customer_id, stripe_tax_id FROM customers WHERE customer_id = %s", (customer,)
        ).fetchone()
    assert linked == (stripe_customer, next(iter(found["_tax_ids"])))
    # The second click named the same Stripe customer: created once.
    assert (
        sum(1 for c in double.billing.customers.values() if c["metadata"].get("plg_customer_id") == customer)
        == 1
    )
