"""Usage from before the checkout, in the period the subscription begins in: plg bills the whole period on
the plan at its end, Stripe a metered price only from the subscription's start. The reports of that
period's earlier windows are dated at the subscription's start, so Stripe's first invoice charges what
plg's does (before: the usage before the checkout was on plg's invoice and charged by nobody, and
`reconcile` agreed, since it prices the quantity Stripe's line holds).

The Stripe emulator runs on a clock the test moves, so the period can end within the test."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.cli.__main__ import main as plg
from services.plans.periods import billing_period
from tests.integration.billing.conftest import Clock
from tests.integration.billing.harness import HOUR, MINUTE, Billing
from tests.integration.metering.harness import now_ms, wait_for
from tests.stripe_double import StripeDouble

KEY = {"authorization": "Bearer sk_test_billing"}


def test_usage_before_the_checkout_in_its_period_is_charged_on_stripes_first_invoice_as_on_plgs(
    clocked: Billing, clock: Clock
) -> None:
    billing, double = clocked, clocked.double
    reporter = billing.start_reporter_with_webhooks(close_check_seconds=3600.0)
    # An anchor day that puts today mid-period (so the test never straddles a period's start).
    anchor = (datetime.now(UTC).day + 13) % 28 + 1
    c = billing.customer("free", stripe=False, anchor_day=anchor)
    period = billing_period(now_ms(), anchor)
    assert period.start_ms < now_ms() - 5 * MINUTE

    # 51 000 requests this period before the customer has a Stripe subscription (not reported: no Stripe
    # customer yet).
    window = now_ms() - now_ms() % MINUTE - 3 * MINUTE
    billing.aggregate(c, 51_000, window_start=window)
    width = period.end_ms - period.start_ms
    billing.aggregate(c, 51_000, window_start=period.start_ms, granularity="BILLING_PERIOD", width=width)
    wait_for(lambda: billing.period_total(c) == 51_000, 60, what="the period total in the ledger")

    # Checkout to pro; the subscription begins now, its first period ends with plg's.
    done = billing.complete_checkout(reporter, c, "pro", KEY)
    sub = double.billing.subscriptions[done["subscription"]]
    assert sub["start_date"] * 1000 > window  # the usage is from before the subscription
    wait_for(
        lambda: bool(billing.ledger(c)) and all(r[5] == "delivered" for r in billing.ledger(c)),
        60,
        what="the period's usage at Stripe once the customer is linked",
    )
    [event] = [e for e in double.events if e["payload"]["stripe_customer_id"] == done["customer"]]
    assert int(event["timestamp"]) >= sub["start_date"]  # dated where Stripe bills it

    # The period ends: Stripe's first invoice charges the 1 000 requests over 50 000, as plg's does.
    clock.move_to(period.end_ms + HOUR)
    invoice = wait_for(lambda: _written_at_end(double, done["customer"], period.end_ms), 60, what="Stripe's")
    base = _base(sub)
    metered = [ln for ln in invoice["lines"]["data"] if _price_of(ln) not in (None, base)]
    closed = billing.close_periods(period.end_ms + 2 * HOUR + 1, {c})[c]
    [plg_line] = [ln for ln in closed.lines if ln.kind == "usage" and ln.meter == "api_requests"]
    assert plg_line.amount == Decimal("1.00")
    assert [(ln["quantity"], ln["amount"]) for ln in metered if ln["quantity"]] == [(51_000, 100)]


def test_a_customer_linked_to_stripe_at_signup_is_charged_its_early_usage_on_stripes_first_invoice(
    clocked: Billing, clock: Clock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Stripe customer from sign-up (`plg customers create --stripe`), a checkout mid-period: before,
    its usage went to Stripe at once, dated before the subscription, and Stripe's first invoice charged
    neither the requests nor the storage level (unchanged after the start) that plg's invoice billed."""
    billing, double = clocked, clocked.double
    reporter = billing.start_reporter_with_webhooks(close_check_seconds=3600.0)
    anchor = (datetime.now(UTC).day + 13) % 28 + 1  # today mid-period (see the test above)
    c = f"c-{uuid.uuid4().hex[:12]}"
    billing.cli_env(monkeypatch)
    assert (
        plg(["--json", "customers", "create", c, "--plan", "free", "--stripe", "--anchor-day", str(anchor)])
        == 0
    )
    [stripe_customer] = [
        s for (s,) in billing.rows("SELECT stripe_customer_id FROM customers WHERE customer_id = %s", c)
    ]
    assert stripe_customer in double.billing.customers
    period = billing_period(now_ms(), anchor)
    assert period.start_ms < now_ms() - 5 * MINUTE

    # Before the checkout: 51 000 requests and a storage peak of 130 GB this period (pro: 50 000 and 100 GB
    # included), planned by the reporter while the customer has a Stripe customer but no subscription.
    window = now_ms() - now_ms() % MINUTE - 3 * MINUTE
    width = period.end_ms - period.start_ms
    billing.aggregate(c, 51_000, window_start=window)
    billing.aggregate(c, 51_000, window_start=period.start_ms, granularity="BILLING_PERIOD", width=width)
    billing.aggregate(c, 130, window_start=period.start_ms, meter="storage_gb", granularity="BILLING_PERIOD",
                      width=width, aggregation="MAX")  # fmt: skip
    planned = (
        "SELECT meter, dirty FROM billing_usage WHERE customer_id = %s AND ((granularity = 'MINUTE' AND meter"
        " = 'api_requests') OR (granularity = 'BILLING_PERIOD' AND meter = 'storage_gb')) ORDER BY meter"
    )
    wait_for(
        lambda: (
            billing.rows(planned, c) == [("api_requests", False), ("storage_gb", False)]
            and billing.period_total(c) == 51_000
        ),
        60,
        what="the usage planned in the ledger",
    )
    # Held: Stripe would bill none of it (no subscription covers it).
    assert billing.ledger(c) == []
    assert [e for e in double.events if e["payload"]["stripe_customer_id"] == stripe_customer] == []

    done = billing.complete_checkout(reporter, c, "pro", KEY)
    assert done["customer"] == stripe_customer  # the customer linked at sign-up
    sub = double.billing.subscriptions[done["subscription"]]
    wait_for(
        lambda: (
            sorted(r[0] for r in billing.ledger(c)) == ["api_requests", "storage_gb"]
            and all(r[5] == "delivered" for r in billing.ledger(c))
        ),
        60,
        what="the period's usage at Stripe once the subscription began",
    )
    events = [e for e in double.events if e["payload"]["stripe_customer_id"] == stripe_customer]
    assert sorted(int(e["payload"]["value"]) for e in events) == [130, 51_000]
    assert all(int(e["timestamp"]) >= sub["start_date"] for e in events)  # where Stripe bills them

    # reconcile: quantities and the preview's money agree.
    code, rows = billing.reconcile(monkeypatch, capsys, "--customer", c, "--all")
    assert code == 0, rows
    amounts = {r["meter"]: (r["stripe_amount"], r["plg_amount"]) for r in rows if r.get("kind") == "usage"}
    assert amounts["api_requests"] == ("1.00", "1.00")
    assert amounts["storage_gb"] == ("3.00", "3.00")
    assert {r["meter"]: r["unbilled"] for r in rows if r.get("kind") == "usage"} == {
        "api_requests": "0",
        "storage_gb": "0",
    }

    # What the sender did before: the same reports dated before the subscription began. Stripe holds them
    # for plg's period, as delivered, but its line bills none of them; the money of the line's quantity
    # still agrees, so only comparing what Stripe holds with what its line bills shows it.
    dated = [e["timestamp"] for e in events]
    for e in events:
        e["timestamp"] = type(e["timestamp"])(int(sub["start_date"]) - 60)
    code, rows = billing.reconcile(monkeypatch, capsys, "--customer", c, "--all")
    assert code == 1, rows
    usage = {r["meter"]: r for r in rows if r.get("kind") == "usage"}
    assert {m: (r["stripe"], r["delivered"], r["unbilled"]) for m, r in usage.items()} == {
        "api_requests": ("51000", "51000", "51000"),
        "storage_gb": ("130", "130", "130"),
    }
    for e, timestamp in zip(events, dated, strict=True):
        e["timestamp"] = timestamp

    # The period ends: Stripe's first invoice charges 1.00 for the requests and 3.00 for the storage, as
    # plg's final invoice does.
    clock.move_to(period.end_ms + HOUR)
    invoice = wait_for(lambda: _written_at_end(double, stripe_customer, period.end_ms), 60, what="Stripe's")
    base = _base(sub)
    metered = [ln for ln in invoice["lines"]["data"] if _price_of(ln) not in (None, base)]
    closed = billing.close_periods(period.end_ms + 2 * HOUR + 1, {c})[c]
    plg_usage = {ln.meter: ln.amount for ln in closed.lines if ln.kind == "usage" and ln.amount}
    assert plg_usage == {"api_requests": Decimal("1.00"), "storage_gb": Decimal("3.00")}
    assert sorted((ln["quantity"], ln["amount"]) for ln in metered if ln["quantity"]) == [
        (130, 300),
        (51_000, 100),
    ]
    assert sum(ln["amount"] for ln in metered) == 400 == int(sum(plg_usage.values()) * 100)


def _written_at_end(double: StripeDouble, customer: str, end_ms: int) -> dict[str, Any] | None:
    """Stripe's invoice written when the period ended (the first one, at the start, ends with it too)."""
    return next(
        (i for i in list(double.billing.invoices.values())
         if i["customer"] == customer and i["created"] >= end_ms // 1000),
        None,
    )  # fmt: skip


def _price_of(line: dict[str, object]) -> object:
    return ((line.get("pricing") or {}).get("price_details") or {}).get("price")  # type: ignore[attr-defined]


def _base(sub: dict[str, object]) -> str:
    """The subscription's licensed (base) price id."""
    items = sub["items"]["data"]  # type: ignore[index]
    return next(i["price"]["id"] for i in items if i["price"]["recurring"]["usage_type"] == "licensed")
