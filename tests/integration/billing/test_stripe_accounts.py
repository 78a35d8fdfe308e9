"""plg's caches of Stripe ids (meters, prices) are per Stripe account: a second Stripe against the same
database — the bench's own double, or live keys after test keys — syncs its own ids next to the first's
instead of over them, so the first keeps reporting, reconciling and checking out against ids it has
(before: "No such billing meter" / "No such price" until it re-synced). Rows cached before migration 0160
are adopted by the first account that reads the cache."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from pydantic import SecretStr

from services.billing_reporter.app import level_meters, reportable_meters
from services.billing_reporter.catalog import sync_catalog, version_prices
from services.billing_reporter.meters import stripe_meter_ids
from services.billing_reporter.stripe_gateway import StripeGateway
from services.plans.loader import load_config
from tests.integration.billing.harness import MINUTE, Billing
from tests.integration.metering.harness import now_ms, wait_for
from tests.stripe_double import StripeDouble


def test_two_stripe_accounts_against_one_database_each_keep_their_own_meter_and_price_ids(
    billing: Billing, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = billing.double
    legacy = f"legacy_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(billing.db_url, autocommit=True) as conn:  # cached before migration 0160
        conn.execute(
            "INSERT INTO billing_stripe_meters (stripe_account, meter, event_name, stripe_meter_id)"
            " VALUES ('', %s, %s, 'mtr_legacy')",
            (legacy, legacy),
        )
    acme = billing.customer(subscribed=True)
    billing.aggregate(acme, 12, window_start=now_ms() - now_ms() % MINUTE - 3 * MINUTE)
    reporter = billing.start_reporter()  # syncs the first account's meters and prices at start
    wait_for(lambda: [r[5] for r in billing.ledger(acme)] == ["delivered"], 60, what="delivered")
    account = billing.stripe_account()
    assert account.startswith("acct_")
    assert account.endswith(":test")

    # A second Stripe (the bench's double) syncs the whole catalog into the same database.
    second = StripeDouble().serve()
    try:
        config = load_config()
        gateway = StripeGateway(second.url, SecretStr("sk_test_bench"))
        with psycopg.connect(billing.db_url, autocommit=True) as conn:
            sync_catalog(gateway, conn, config, reportable_meters(config), level_meters(config))
            other = gateway.account()
            assert other != account
            ours, theirs = stripe_meter_ids(conn, account), stripe_meter_ids(conn, other)
            ours_prices = version_prices(conn, "pro-2025-06", account)
            theirs_prices = version_prices(conn, "pro-2025-06", other)
            left = conn.execute("SELECT count(*) FROM billing_stripe_meters WHERE stripe_account = ''")
            assert left.fetchone() == (0,)
        # Each account's ids are its own (the first's old row was adopted, not lost).
        assert ours.pop(legacy) == "mtr_legacy"
        assert set(ours) == set(theirs) == set(reportable_meters(config))
        assert set(ours.values()) <= set(first.meters)
        assert set(theirs.values()) <= set(second.meters)
        assert set(ours_prices) == set(theirs_prices)
        assert None in ours_prices  # the base and the metered prices
        assert set(ours_prices.values()) <= set(first.billing.prices)
        assert set(theirs_prices.values()) <= set(second.billing.prices)
    finally:
        second.close()

    # The first account still reconciles against its own meters: Stripe holds acme's 12.
    code, rows = billing.reconcile(monkeypatch, capsys, "--customer", acme, "--all")
    assert code == 0, rows
    [requests] = [r for r in rows if r["kind"] == "usage" and r["meter"] == "api_requests"]
    assert requests["stripe"] == "12"
    # ... and checks out with its own prices (the second's would be "No such price" there: a 502).
    upgrading = billing.customer("free", stripe=False)
    with reporter.client() as rep:
        answer = rep.post(f"/v1/checkout/{upgrading}", json={"plan": "pro"})
    assert answer.status_code == 200, answer.text
    session = first.billing.sessions[answer.json()["session_id"]]
    assert {it["price"] for it in session["_items"]} == set(ours_prices.values())
