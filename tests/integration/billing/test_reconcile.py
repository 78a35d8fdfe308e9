"""`plg billing sync-meters`, `plg billing reconcile` and `plg customers create --stripe`."""

from __future__ import annotations

import pytest

from services.cli.__main__ import main as plg
from tests.integration.billing.harness import MINUTE, Billing
from tests.integration.metering.harness import now_ms, wait_for


@pytest.fixture
def cli_env(billing: Billing, monkeypatch: pytest.MonkeyPatch) -> Billing:
    m = billing.metering
    for name, value in {
        "DATABASE_URL": billing.db_url,
        "KAFKA_BOOTSTRAP_SERVERS": m.kafka.bootstrap_servers,
        "SCHEMA_REGISTRY_URL": m.registry.url,
        "PLG_TOPIC_PREFIX": m.prefix,
        "STRIPE_API_BASE": billing.double.url,
        "STRIPE_API_KEY": "sk_test_reconcile",
        "BILLING_REPORT_GRANULARITY": "MINUTE",
        # The reporter's (harness) timing, so reconciliation knows what is due at Stripe already.
        "BILLING_SETTLE_SECONDS": "0",
        "BILLING_CORRECTION_INTERVAL_SECONDS": "0",
        "BILLING_LEVEL_INTERVAL_SECONDS": "0",
        "BILLING_PLAN_INTERVAL_SECONDS": "0.2",
    }.items():
        monkeypatch.setenv(name, value)
    return billing


def test_reconcile_agrees_after_delivery_and_names_the_difference_when_stripe_has_more(
    cli_env: Billing, capsys
):
    billing = cli_env
    acme, beta = billing.customer(), billing.customer()
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
    assert len(billing.double.meters) == 5  # nothing created twice
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
