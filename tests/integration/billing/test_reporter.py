"""The reporter from usage-aggregates to Stripe: once per window, corrections as differences, offsets in
the ledger's transaction, every delivered report on billing-reports."""

from __future__ import annotations

from decimal import Decimal

import psycopg

from services.billing_reporter.planning import report_identifier
from tests.integration.billing.harness import MINUTE, Billing
from tests.integration.metering.harness import now_ms, wait_for


def closed_minute(minutes_ago: int) -> int:
    now = now_ms()
    return now - now % MINUTE - minutes_ago * MINUTE


def test_each_closed_window_is_reported_once_with_its_identifier(billing: Billing):
    acme, beta = billing.customer(subscribed=True), billing.customer(subscribed=True)
    w1, w2 = closed_minute(3), closed_minute(2)
    for total in (5, 9, 12):  # running totals of one window: only the last counts
        billing.aggregate(acme, total, window_start=w1)
    billing.aggregate(acme, 7, window_start=w2)
    billing.aggregate(beta, 4, window_start=w1)
    billing.start_reporter()
    wait_for(
        lambda: billing.stripe_total(acme) == 19 and billing.stripe_total(beta) == 4, what="reports at Stripe"
    )
    rows = billing.ledger(acme)
    assert [(r[1], r[2], r[3], r[5]) for r in rows] == [(w1, 0, 12, "delivered"), (w2, 0, 7, "delivered")]
    assert rows[0][6] == report_identifier(acme, "api_requests", w1, 0)
    # One Stripe call per window, not per event or per aggregate update.
    assert sorted(billing.double.accepted_identifiers) == sorted(r[6] for r in rows + billing.ledger(beta))
    published = wait_for(
        lambda: len(billing.published()) == 3 and billing.published(), what="billing-reports"
    )
    assert {p["report_id"] for p in published} == set(billing.double.accepted_identifiers)
    assert {(p["customer_id"], p["quantity"], p["revision"]) for p in published} >= {(acme, Decimal(12), 0)}


def test_a_late_correction_is_a_new_revision_with_only_the_difference(billing: Billing):
    acme = billing.customer(subscribed=True)
    w = closed_minute(3)
    billing.aggregate(acme, 10, window_start=w)
    billing.start_reporter()
    wait_for(lambda: billing.stripe_total(acme) == 10, what="first report")
    billing.aggregate(acme, 13, window_start=w)  # three late events counted into the closed window
    wait_for(lambda: billing.stripe_total(acme) == 13, what="correction")
    rows = billing.ledger(acme)
    assert [(r[2], r[3], r[4]) for r in rows] == [(0, 10, 10), (1, 3, 13)]
    assert len(billing.double.events) == 2


def test_open_windows_wait_and_unlinked_or_unsubscribed_customers_are_not_sent(billing: Billing):
    acme, free = billing.customer(subscribed=True), billing.customer("free", stripe=False)
    linked = billing.customer("free")  # a Stripe customer, no subscription yet: Stripe would not bill it
    now = now_ms()
    billing.aggregate(acme, 5, window_start=now - now % MINUTE)  # the current minute: still open
    billing.aggregate(acme, 2, window_start=closed_minute(2))
    billing.aggregate(free, 8, window_start=closed_minute(2))
    billing.aggregate(linked, 8, window_start=closed_minute(10))
    billing.start_reporter(settle_seconds=120.0)  # nothing closed two minutes ago is "settled" yet either
    billing.aggregate(acme, 1, window_start=closed_minute(10))
    wait_for(lambda: billing.stripe_total(acme) == 1, what="the settled window")
    assert [r[1] for r in billing.ledger(acme)] == [closed_minute(10)]
    assert billing.ledger(free) == []
    # The unsubscribed customer's settled window was looked at (planned: no longer dirty) and held.
    held = "SELECT dirty FROM billing_usage WHERE customer_id = %s AND granularity = 'MINUTE'"
    wait_for(lambda: billing.rows(held, linked) == [(False,)], what="the held window planned")
    assert billing.ledger(linked) == []


def test_a_restart_never_reports_a_window_twice(billing: Billing):
    acme = billing.customer(subscribed=True)
    for i in range(5):
        billing.aggregate(acme, i + 1, window_start=closed_minute(10 - i))
    billing.start_reporter()
    wait_for(lambda: billing.stripe_total(acme) == 15, what="reports")
    billing.stop_reporters()
    with psycopg.connect(billing.db_url) as conn:
        stored = conn.execute("SELECT count(*) FROM billing_offsets WHERE consumer_group LIKE %s",
                              (billing.metering.prefix + "%",)).fetchone()  # fmt: skip
    assert stored is not None
    assert stored[0] > 0
    billing.aggregate(acme, 6, window_start=closed_minute(4))
    billing.start_reporter()
    wait_for(lambda: billing.stripe_total(acme) == 21, what="the new window")
    assert len(billing.ledger(acme)) == 6
    assert billing.double.stats.duplicate_identifiers_refused == 0


def test_the_upcoming_invoice_prices_the_period_so_far(billing: Billing):
    acme = billing.customer("pro")
    api = billing.start_reporter()
    from services.plans.periods import billing_period

    period = billing_period(now_ms(), 1)
    billing.aggregate(acme, 51234, window_start=period.start_ms, granularity="BILLING_PERIOD",
                      width=period.end_ms - period.start_ms)  # fmt: skip
    with api.client() as client:
        body = wait_for(
            lambda: (
                (r := client.get(f"/v1/invoices/{acme}/upcoming").json()).get("lines")
                and r["lines"][1]["usage"] == "51234"
                and r
            ),
            what="upcoming invoice",
        )
        assert body["plan"] == "pro"
        assert body["total"] == "50.24"  # 49.00 + 1 234 x 0.001 = 1.234 -> ceil 1.24
        assert client.get("/v1/invoices/nobody/upcoming").status_code == 404


def test_a_level_meter_reports_its_period_value_as_it_changes(billing: Billing):
    from services.plans.periods import billing_period

    acme = billing.customer("pro", subscribed=True)
    period = billing_period(now_ms(), 1)
    width = period.end_ms - period.start_ms

    def peak(gb: int) -> None:
        billing.aggregate(acme, gb, meter="storage_gb", aggregation="MAX", granularity="BILLING_PERIOD",
                          window_start=period.start_ms, width=width)  # fmt: skip

    peak(5)
    # Levels at most every 1.5 s here (a reporting window in production): each has its own second, which
    # is how Stripe's `last` tells the latest.
    billing.start_reporter(level_interval_seconds=1.5)
    meter = wait_for(
        lambda: next((m for m in billing.double.meters.values() if m["event_name"] == "storage_gb"), None),
        what="the storage meter",
    )
    assert meter["default_aggregation"]["formula"] == "last"
    wait_for(lambda: [r[3] for r in billing.ledger(acme)] == [5], what="level 5 reported")
    peak(9)
    wait_for(lambda: [r[3] for r in billing.ledger(acme)] == [5, 9], what="level 9")
    rows = billing.ledger(acme)
    assert [r[2] for r in rows] == [0, 1]
    assert [r[1] for r in rows] == [period.start_ms] * 2
    wait_for(lambda: len(billing.double.events) == 2, what="both at Stripe")
    # Stripe's `last` meter holds the latest level, not a sum.
    import httpx

    summary = httpx.get(
        f"{billing.double.url}/v1/billing/meters/{meter['id']}/event_summaries",
        params={
            "customer": f"cus_{acme}",
            "start_time": period.start_ms // 1000,
            "end_time": period.end_ms // 1000,
        },
        headers={"Authorization": "Bearer sk_test_x"},
    ).json()
    assert [s["aggregated_value"] for s in summary["data"]] == [9]
