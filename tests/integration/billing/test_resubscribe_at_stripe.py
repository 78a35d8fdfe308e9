"""A customer whose Stripe subscription is canceled and who subscribes again within one billing period.

plg bills the whole period on the plan at its end, once. At Stripe, a subscription canceled at once
(`DELETE /v1/subscriptions/{id}` without `invoice_now`, Stripe's default) writes no final invoice: its
period's metered usage is discarded; the new subscription bills only meter events dated from its start.
So the period's usage — before the cancel, in the gap, after the new start — must all be dated inside
the new subscription for Stripe to charge what plg does: usage in the gap is held (no subscription
covers it) and dated at the new start, usage the canceled subscription held is sent again to the new
one (new identifiers), and `reconcile` tells that first copy apart from a double charge.

The Stripe emulator runs on a clock the test moves (the cancel is dated ten minutes ago, the period ends
within the test)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.plans.periods import billing_period
from tests.integration.billing.conftest import Clock
from tests.integration.billing.harness import HOUR, MINUTE, Billing
from tests.integration.metering.harness import now_ms, wait_for

KEY = {"authorization": "Bearer sk_test_billing"}


def test_usage_before_a_cancel_in_the_gap_and_after_resubscribing_is_billed_once_by_stripe_as_by_plg(
    clocked: Billing, clock: Clock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    billing, double = clocked, clocked.double
    # Syncs the catalog; periods are closed by the test.
    reporter = billing.start_reporter_with_webhooks(close_check_seconds=3600.0)
    anchor = (datetime.now(UTC).day + 13) % 28 + 1  # today mid-period: the test never straddles a start
    start = now_ms()
    period = billing_period(start, anchor)
    assert period.start_ms < start - 30 * MINUTE
    width = period.end_ms - period.start_ms
    c = billing.customer("pro", stripe=False, anchor_day=anchor)
    # Subscribed since before (half an hour ago at Stripe: its events are older than the cancel's).
    clock.move_to(start - 30 * MINUTE)
    stripe_customer, first = billing.subscribe(c, "pro", "pro-2025-06", period)
    clock.offset = 0.0

    def usage(value: int, window: int, total: int, storage: int | None = None) -> None:
        billing.aggregate(c, value, window_start=window)
        billing.aggregate(c, total, window_start=period.start_ms, granularity="BILLING_PERIOD", width=width)
        if storage is not None:
            billing.aggregate(c, storage, window_start=period.start_ms, meter="storage_gb",
                              granularity="BILLING_PERIOD", width=width, aggregation="MAX")  # fmt: skip
        wait_for(lambda: billing.period_total(c) == total, 60, what="the period total in the ledger")

    def settled(window: int) -> bool:
        rows = billing.rows(
            "SELECT dirty FROM billing_usage WHERE customer_id = %s AND granularity = 'MINUTE'"
            " AND window_start = %s",
            c,
            window,
        )
        return rows == [(False,)] and all(r[5] == "delivered" for r in billing.ledger(c))

    # 1. Subscribed: 30 000 requests and 130 GB stored (pro: 50 000 and 100 GB included) reach Stripe.
    before = start - start % MINUTE - 20 * MINUTE
    usage(30_000, before, 30_000, storage=130)
    wait_for(
        lambda: sorted(r[0] for r in billing.ledger(c)) == ["api_requests", "storage_gb"] and settled(before),
        60,
        what="the usage before the cancel at Stripe",
    )

    # 2. Canceled at Stripe ten minutes ago (at once, no final invoice: Stripe's default); plg hears of it.
    clock.move_to(start - 10 * MINUTE)
    status, canceled, _, _ = double.handle("DELETE", f"/v1/subscriptions/{first}", {}, {}, KEY)
    clock.offset = 0.0
    assert status == 200, canceled
    canceled_at = int(canceled["canceled_at"])
    wait_for(
        lambda: billing.rows("SELECT status FROM subscriptions WHERE customer_id = %s", c) == [("canceled",)],
        60,
        what="the cancel's webhook applied",
    )

    # 3. In the gap (no subscription covers it): 15 000 requests. Planned, held: nothing goes to Stripe.
    gap = start - start % MINUTE - 6 * MINUTE
    assert gap >= canceled_at * 1000
    usage(15_000, gap, 45_000)
    wait_for(lambda: settled(gap), 60, what="the gap's window planned")
    assert [r for r in billing.ledger(c) if r[1] == gap] == [], "usage no subscription covers went out"

    # 4. A new checkout to pro in the same period: a second subscription, its first period ends with plg's.
    done = billing.complete_checkout(reporter, c, "pro", KEY)
    assert done["customer"] == stripe_customer
    second = double.billing.subscriptions[done["subscription"]]
    assert second["id"] != first

    # 5. After resubscribing (the minute it began in): 10 000 requests. The period: 55 000 and 130 GB.
    after = now_ms() - now_ms() % MINUTE
    usage(10_000, after, 55_000)
    wait_for(
        lambda: settled(after) and settled(gap) and settled(before),
        90,
        what="the period's usage delivered to the new subscription",
    )
    events = [e for e in double.events if e["payload"]["stripe_customer_id"] == stripe_customer]
    dated_in_second = [e for e in events if int(e["timestamp"]) >= second["start_date"]]
    requests = sum(int(e["payload"]["value"]) for e in dated_in_second if e["event_name"] == "api_requests")
    assert requests == 55_000, events  # all of the period's requests, where the new subscription bills
    levels = [e for e in dated_in_second if e["event_name"] == "storage_gb"]
    assert [int(e["payload"]["value"]) for e in levels][-1:] == [130], events
    assert len({e["identifier"] for e in events}) == len(events)

    # reconcile: quantities, the preview's money, and what Stripe holds but does not bill (the canceled
    # subscription's first copy of the 30 000) all explained: exit 0.
    code, rows = billing.reconcile(monkeypatch, capsys, "--customer", c, "--all")
    assert code == 0, rows
    usage_rows = {r["meter"]: r for r in rows if r.get("kind") == "usage"}
    assert {m: (r["stripe_amount"], r["plg_amount"]) for m, r in usage_rows.items()} == {
        "api_requests": ("5.00", "5.00"),
        "storage_gb": ("3.00", "3.00"),
    }
    assert usage_rows["api_requests"]["superseded"] == "30000"
    assert {m: r["unbilled"] for m, r in usage_rows.items()} == {"api_requests": "0", "storage_gb": "0"}

    # 6. The period ends: Stripe's invoices together bill exactly plg's lines, to the cent.
    clock.move_to(period.end_ms + HOUR)
    wait_for(
        lambda: any(
            i["customer"] == stripe_customer and i["created"] >= period.end_ms // 1000
            for i in list(double.billing.invoices.values())
        ),
        60,
        what="Stripe's invoice at the period's end",
    )
    closed = billing.close_periods(period.end_ms + 2 * HOUR + 1, {c})[c]
    plg_usage = {ln.meter: ln.amount for ln in closed.lines if ln.kind == "usage" and ln.amount}
    assert plg_usage == {"api_requests": Decimal("5.00"), "storage_gb": Decimal("3.00")}
    metered = [
        ln
        for i in list(double.billing.invoices.values())
        if i["customer"] == stripe_customer
        for ln in i["lines"]["data"]
        if _metered(double, ln) and period.start_ms // 1000 < ln["period"]["end"] <= period.end_ms // 1000
    ]
    assert sorted((ln["quantity"], ln["amount"]) for ln in metered if ln["amount"]) == [
        (130, 300),
        (55_000, 500),
    ]
    assert sum(ln["amount"] for ln in metered) == 800 == int(sum(plg_usage.values()) * 100)
    # And the base: paid for this period in advance by the first subscription; the second one's partial
    # first period is free (checkout's proration_behavior=none), as plg bills one base per period. All of
    # Stripe's lines for the period (usage in arrears, licensed items from the period's start) = plg's total.
    start_s, end_s = period.start_ms // 1000, period.end_ms // 1000
    licensed = [
        ln
        for i in list(double.billing.invoices.values())
        if i["customer"] == stripe_customer
        for ln in i["lines"]["data"]
        if not _metered(double, ln) and start_s <= ln["period"]["start"] < end_s
    ]
    assert [ln["amount"] for ln in licensed] == [4900]
    assert sum(ln["amount"] for ln in metered + licensed) == 5700 == int(closed.total * 100)


def _metered(double: Any, line: dict[str, Any]) -> bool:
    price = ((line.get("pricing") or {}).get("price_details") or {}).get("price")
    found = double.billing.prices.get(price) if price else None
    return bool(found) and (found.get("recurring") or {}).get("usage_type") == "metered"
