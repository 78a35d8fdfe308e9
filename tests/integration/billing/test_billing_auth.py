"""Who may read an upcoming invoice, start a checkout or post a webhook, on the real billing reporter:
the customer's own secret key or an operator; never a publishable key or another customer's key."""

from __future__ import annotations

from tests.auth_support import Case, Tenants, check_cases, tenant_cases
from tests.integration.billing.harness import Billing


def test_invoices_and_checkout_take_the_customers_secret_key_or_an_operator(
    billing: Billing, stripe_mock_url: str
) -> None:
    reporter = billing.start_reporter(stripe={"api_base": stripe_mock_url})
    a, b = billing.customer("free"), billing.customer("free")
    tenants = Tenants.make(billing.db_url, a=a, b=b)
    cases = tenant_cases("GET", lambda c: f"/v1/invoices/{c}/upcoming", tenants, publishable=False)
    # Starting a checkout acts for the customer: an operator needs editor.
    cases += tenant_cases(
        "POST", lambda c: f"/v1/checkout/{c}", tenants, publishable=False, operator="editor"
    )
    cases += [
        Case("viewer", "POST", f"/v1/checkout/{a}", 403),
        # Stripe's webhook is authenticated by its signature, not a plg credential: unsigned is a 400.
        Case("none", "POST", "/v1/stripe/webhooks", 400, {"id": "evt_1"}),
    ]
    check_cases(reporter.url, tenants, cases)
