"""Late usage after an invoice: a closed period's final invoice never changes; the corrected usage becomes an
adjustment line on the next invoice, at Stripe an invoice item (positive) or a credit note on the closed
period's Stripe invoice (negative, used by the next invoice), exactly once, shown by `plg billing reconcile`.

The Stripe emulator runs on a clock the test moves, so the periods can end within the test."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from services.plans.periods import billing_period
from tests.integration.billing.conftest import Clock
from tests.integration.billing.harness import Billing, stripe_invoice
from tests.integration.metering.harness import now_ms, wait_for

HOUR = 3_600_000


def test_late_usage_after_the_invoice_becomes_an_adjustment_on_the_next_invoice_and_at_stripe(
    clocked: Billing, clock: Clock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    billing, double = clocked, clocked.double
    period = billing_period(now_ms(), 1)
    following = billing_period(period.end_ms, 1)
    # The reporter's own closer stays out of the way: this test closes periods on its own clock.
    billing.start_reporter(close_check_seconds=3600.0)
    c, stripe_customer, _ = billing.subscriber("pro", "pro-2025-06", period)
    window = billing.period_usage(c, 51_000, period)
    width = period.end_ms - period.start_ms

    # The period ends: Stripe writes its invoice, plg closes its own (2 h grace).
    clock.move_to(period.end_ms + HOUR)
    wait_for(lambda: stripe_invoice(double, stripe_customer, period.end_ms), 60, what="Stripe's invoice")
    pool = ConnectionPool(billing.db_url, min_size=1, max_size=2, open=True)
    closer = billing.closer(pool)
    try:
        after_close = period.end_ms + 2 * HOUR + 1
        closed = {i.customer_id: i for i in closer.close_due(after_close)}
        assert closed[c].total == Decimal("50.00")  # 49.00 + 1 000 requests over 50 000 at 0.001

        # Late usage for the closed period: 1 000 more requests.
        billing.aggregate(c, 52_000, window_start=window)
        billing.aggregate(c, 52_000, window_start=period.start_ms, granularity="BILLING_PERIOD", width=width)
        wait_for(
            lambda: len(billing.ledger(c)) == 2 and billing.ledger(c)[1][5] == "delivered",
            60,
            what="revision",
        )
        wait_for(lambda: billing.period_total(c) == 52_000, 60, what="the late period total in the ledger")
        for _ in range(2):  # twice: exactly once
            closer.close_due(after_close)
        [(seq, before, after, amount, status, kind, item_id)] = billing.adjustments(c)
        assert (seq, before, after, amount) == (0, Decimal(51_000), Decimal(52_000), Decimal("1.00"))
        assert (status, kind) == ("sent", "invoiceitem")
        assert double.billing.invoice_items[item_id]["amount"] == 100
        with psycopg.connect(billing.db_url) as conn:
            (doc,) = conn.execute(
                "SELECT invoice FROM billing_invoices WHERE customer_id = %s AND period_start = %s",
                (c, period.start_ms),
            ).fetchone()  # type: ignore[misc]
        assert doc["total"] == "50.00"  # the closed invoice is untouched

        # A correction the other way (a backfill removed 500 duplicates): a credit note on Stripe's
        # invoice of the corrected period, to the customer's balance.
        billing.aggregate(c, 51_500, window_start=period.start_ms, granularity="BILLING_PERIOD", width=width)
        wait_for(lambda: billing.period_total(c) == 51_500, 60, what="the ledger took the correction")
        closer.close_due(after_close)
        closer.close_due(after_close)
        rows = billing.adjustments(c)
        assert [(r[0], r[3], r[4], r[5]) for r in rows] == [
            (0, Decimal("1.00"), "sent", "invoiceitem"),
            (1, Decimal("-0.50"), "sent", "credit_note"),
        ]
        note = double.billing.credit_notes[rows[1][6]]
        closed_at_stripe = stripe_invoice(double, stripe_customer, period.end_ms)
        assert closed_at_stripe is not None
        assert (note["total"], note["invoice"]) == (50, closed_at_stripe["id"])
        assert len(double.billing.credit_notes) == 1
        assert len(double.billing.invoice_items) == 1

        # The next period: plg's invoice carries both lines; Stripe's carries the item and uses the credit.
        next_close = following.end_ms + 2 * HOUR + 1
        nxt = {i.customer_id: i for i in closer.close_due(next_close)}[c]
        adjustment_lines = [(ln.kind, ln.amount) for ln in nxt.lines if ln.kind == "adjustment"]
        assert adjustment_lines == [("adjustment", Decimal("1.00")), ("adjustment", Decimal("-0.50"))]
        assert nxt.total == Decimal("49.50")
        clock.move_to(following.end_ms + HOUR)
        stripe_next = wait_for(
            lambda: stripe_invoice(double, stripe_customer, following.end_ms),
            60,
            what="Stripe's next invoice",
        )
        assert [ln["amount"] for ln in stripe_next["lines"]["data"] if ln.get("parent")] == [100]
        assert stripe_next["starting_balance"] == -50
        assert Decimal(stripe_next["amount_due"]).scaleb(-2) == nxt.total  # what the customer pays: the same

        # `plg billing reconcile` shows both adjustments, in agreement with Stripe.
        month = following.start.strftime("%Y-%m")
        code, rows = billing.reconcile(monkeypatch, capsys, "--customer", c, "--period", month)
        assert code == 0
        shown = [r for r in rows if r["kind"] == "adjustment"]
        assert [(r["plg_amount"], r["stripe_amount"], r["stripe_kind"], r["agrees"]) for r in shown] == [
            ("1.00", "1.00", "invoiceitem", True),
            ("-0.50", "-0.50", "credit_note", True),
        ]
    finally:
        pool.close()


def test_a_credit_larger_than_the_corrected_stripe_invoice_is_a_negative_item_on_the_next_invoice(
    clocked: Billing, clock: Clock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stripe refuses a credit note above what the invoice has left to credit. A correction below what a
    later positive adjustment had added (billed on the next invoice, not on that one) is such a credit: it
    stayed pending for ever, and the customer was never credited at Stripe. It is now a negative invoice
    item, which Stripe's next invoice takes off, as plg's next invoice does."""
    billing, double = clocked, clocked.double
    period = billing_period(now_ms(), 1)
    following = billing_period(period.end_ms, 1)
    billing.start_reporter(close_check_seconds=3600.0)
    c, stripe_customer, _ = billing.subscriber("pro", "pro-2025-06", period)
    billing.period_usage(c, 51_000, period)
    width = period.end_ms - period.start_ms
    clock.move_to(period.end_ms + HOUR)
    closed_at_stripe = wait_for(
        lambda: stripe_invoice(double, stripe_customer, period.end_ms), 60, what="Stripe's invoice"
    )
    assert closed_at_stripe["total"] == 5_000  # the period's 1.00 of usage and the next period's 49.00
    pool = ConnectionPool(billing.db_url, min_size=1, max_size=2, open=True)
    closer = billing.closer(pool)
    try:
        after_close = period.end_ms + 2 * HOUR + 1
        assert {i.customer_id: i for i in closer.close_due(after_close)}[c].total == Decimal("50.00")
        for total in (200_000, 50_000):  # a late backfill, then most of it removed again
            billing.aggregate(
                c, total, window_start=period.start_ms, granularity="BILLING_PERIOD", width=width
            )
            wait_for(lambda t=total: billing.period_total(c) == t, 60, what=f"{total} in the ledger")  # type: ignore[misc]
            closer.close_due(after_close)
            closer.close_due(after_close)
        rows = billing.adjustments(c)
        assert [(r[0], r[3], r[4], r[5]) for r in rows] == [
            (0, Decimal("149.00"), "sent", "invoiceitem"),
            (1, Decimal("-150.00"), "sent", "invoiceitem"),  # 150.00 > the 50.00 Stripe's invoice holds
        ]
        assert [double.billing.invoice_items[r[6]]["amount"] for r in rows] == [14_900, -15_000]
        assert not double.billing.credit_notes

        nxt = {i.customer_id: i for i in closer.close_due(following.end_ms + 2 * HOUR + 1)}[c]
        assert nxt.total == Decimal("48.00")  # 49.00 + 149.00 - 150.00
        clock.move_to(following.end_ms + HOUR)
        stripe_next = wait_for(
            lambda: stripe_invoice(double, stripe_customer, following.end_ms),
            60,
            what="Stripe's next invoice",
        )
        assert Decimal(stripe_next["amount_due"]).scaleb(-2) == nxt.total
        code, shown = billing.reconcile(
            monkeypatch, capsys, "--customer", c, "--period", following.start.strftime("%Y-%m")
        )
        assert [
            (r["plg_amount"], r["stripe_amount"], r["agrees"]) for r in shown if r["kind"] == "adjustment"
        ] == [
            ("149.00", "149.00", True),
            ("-150.00", "-150.00", True),
        ]
        assert code == 0, shown
    finally:
        pool.close()
