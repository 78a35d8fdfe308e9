"""`plg billing sync-meters`, `plg billing reconcile` and `plg customers create --stripe`."""

from __future__ import annotations

import psycopg
import pytest

from services.cli.__main__ import main as plg
from tests.integration.billing.harness import MINUTE, Billing
from tests.integration.metering.harness import now_ms, wait_for


@pytest.fixture
def cli_env(billing: Billing, monkeypatch: pytest.MonkeyPatch) -> Billing:
    billing.cli_env(monkeypatch)
    return billing


def test_reconcile_agrees_after_delivery_and_names_the_difference_when_stripe_has_more(
    cli_env: Billing, capsys
):
    billing = cli_env
    acme, beta = billing.customer(subscribed=True), billing.customer(subscribed=True)
    start = now_ms() - now_ms() % MINUTE - 3 * MINUTE
    billing.aggregate(acme, 12, window_start=start)
    billing.aggregate(acme, 5, window_start=start + MINUTE)
    billing.aggregate(beta, 7, window_start=start)
    billing.start_reporter()  # it syncs the meters at start too
    formulas = {m["event_name"]: m["default_aggregation"]["formula"] for m in billing.double.meters.values()}
    assert formulas == {
        "api_requests": "sum",
        "compute_seconds": "sum",
        "storage_gb": "last",
        "seats": "last",
        "active_users": "last",
        "compute_seconds_packages_3600": "last",  # growth's packages (docs/billing.md "Parity")
    }
    wait_for(
        lambda: (
            all(r[5] == "delivered" for r in billing.ledger(acme) + billing.ledger(beta))
            and len(billing.ledger(acme)) == 2
        ),
        what="delivered",
    )
    assert plg(["billing", "sync-meters"]) == 0
    assert "found" in capsys.readouterr().out
    assert len(billing.double.meters) == 6  # nothing created twice
    assert plg(["billing", "reconcile", "--customer", acme]) == 0
    assert "0 differ" in capsys.readouterr().err
    # Someone else sent Stripe one more event for acme: reconciliation says so and fails.
    billing.double.handle(
        "POST", "/v1/billing/meter_events", {},
        {"event_name": "api_requests", "payload": {"stripe_customer_id": f"cus_{acme}", "value": "3"},
         "timestamp": str(start // 1000)},
        {"authorization": "Bearer sk_test_x"},
    )  # fmt: skip
    assert plg(["--json", "billing", "reconcile"]) == 1
    out = capsys.readouterr().out
    assert acme in out
    assert beta not in out
    assert '"stripe": "20"' in out


def test_customers_create_links_a_new_stripe_customer(
    billing: Billing, stripe_mock_url: str, monkeypatch, capsys
):
    monkeypatch.setenv("DATABASE_URL", billing.db_url)
    monkeypatch.setenv("STRIPE_API_BASE", stripe_mock_url)
    customer_id = f"linked-{now_ms()}"
    assert plg(["--json", "customers", "create", customer_id, "--plan", "pro", "--stripe"]) == 0
    assert '"stripe_customer_id":"cus_' in capsys.readouterr().out.replace(" ", "")


def test_reconcile_compares_stripes_invoice_with_plgs_to_the_cent(cli_env: Billing, capsys):
    import json

    import httpx

    from services.plans.periods import billing_period
    from tests.auth_support import operator_token
    from tests.integration.billing.harness import WEBHOOK_SECRET

    billing = cli_env
    double = billing.double
    reporter = billing.start_reporter()
    double.webhooks.url, double.webhooks.secret = f"{reporter.url}/v1/stripe/webhooks", WEBHOOK_SECRET
    double.webhooks.start()
    c = billing.customer("free", stripe=False)
    editor = {"Authorization": f"Bearer {operator_token(billing.db_url, 'editor')}"}
    session = httpx.post(
        f"{reporter.url}/v1/checkout/{c}", json={"plan": "pro"}, headers=editor, timeout=10
    ).json()
    double.handle("POST", f"/_emulator/checkout/sessions/{session['session_id']}/complete", {}, {},
                  {"authorization": "Bearer sk_test_x"})  # fmt: skip

    def linked() -> bool:
        with psycopg.connect(billing.db_url) as conn:
            row = conn.execute("SELECT plan, stripe_customer_id FROM customers WHERE customer_id = %s", (c,))
            plan, stripe_id = row.fetchone()  # type: ignore[misc]
        return plan == "pro" and stripe_id is not None

    wait_for(linked, what="subscribed through the emulator's events")
    period = billing_period(now_ms(), 1)
    # As if subscribed since the period began: Stripe's line then covers plg's whole period.
    sub = double.billing.subscriptions[double.billing.sessions[session["session_id"]]["subscription"]]
    sub["_period"] = (period.start_ms // 1000, period.end_ms // 1000)
    double.billing._sync_periods(sub)
    start = now_ms() - now_ms() % MINUTE - 3 * MINUTE
    billing.aggregate(c, 51_000, window_start=start)
    billing.aggregate(c, 505, window_start=start + MINUTE)
    billing.aggregate(c, 103, window_start=period.start_ms, meter="storage_gb", granularity="BILLING_PERIOD",
                      width=period.end_ms - period.start_ms, aggregation="MAX")  # fmt: skip
    wait_for(
        lambda: len(billing.ledger(c)) == 3 and all(r[5] == "delivered" for r in billing.ledger(c)),
        what="delivered",
    )
    capsys.readouterr()
    assert plg(["--json", "billing", "reconcile", "--customer", c, "--all"]) == 0
    rows = {r["meter"]: r for r in json.loads(capsys.readouterr().out)}
    # 1 505 requests over the 50 000 included at 0.001, rounded up (ceil): 1.51 on both sides.
    assert (rows["api_requests"]["stripe_amount"], rows["api_requests"]["plg_amount"]) == ("1.51", "1.51")
    assert (rows["storage_gb"]["stripe_amount"], rows["storage_gb"]["plg_amount"]) == ("0.30", "0.30")
    # Stripe charging something else is a difference.
    price = next(
        p for p in double.billing.prices.values() if p.get("lookup_key") == "plg_pro-2025-06_api_requests"
    )
    price["_tiers"][1]["unit_amount_decimal"] = "0.2"
    assert plg(["--json", "billing", "reconcile", "--customer", c]) == 1
    assert '"stripe_amount": "3.01"' in capsys.readouterr().out
