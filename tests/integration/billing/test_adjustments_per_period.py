"""Late usage after the invoice of a whole annual period billed ``per_period`` (usage included and priced
over the year, the months added up): the closed year's invoice never changes; the year re-rated from the
ledger's months becomes an adjustment on the customer's next (annual) invoice — the difference of the two
rounded lines, by the invoice's own calculator, not units x price — and at Stripe an invoice item
(positive) or a credit note on Stripe's invoice of that year (negative), once; `plg billing reconcile`
lists them.

The Stripe emulator runs on a clock the test moves, so the years can end within the test."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from services.plans.loader import load_config
from services.plans.periods import Period, billing_period
from services.plans.windows import customer_window
from tests.integration.billing.conftest import Clock
from tests.integration.billing.harness import HOUR, Billing, stripe_invoice
from tests.integration.metering.harness import now_ms, wait_for
from tests.price_books import annual_plan, write_book

VERSION = "pro-yearly-2025"


def test_late_usage_after_an_annual_per_period_invoice_is_adjusted_on_the_next_years_invoice_and_at_stripe(
    clocked: Billing, clock: Clock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    billing, double = clocked, clocked.double
    # 490.00 a year, 50 000 requests included per year, then 0.001 each (ceil to the cent).
    book = write_book(tmp_path, annual_plan("pro_yearly", "per_period", version=VERSION))
    monkeypatch.setenv("PLG_METERING_CONFIG", str(book))  # the CLI's price book (reconcile)
    config = load_config(book)
    # Syncs the catalog (yearly base and metered Prices); its own closer stays out of the way.
    billing.start_reporter(config_path=book, close_check_seconds=3600.0)

    month = billing_period(now_ms(), 1)
    c = billing.customer("pro_yearly", stripe=False)
    cycle = month.start.year * 12 + month.start.month - 1  # a new customer's year starts this month
    found = customer_window(config, "pro_yearly", None, now_ms(), 1, cycle)
    assert found is not None
    _, year, _ = found
    assert year == billing_period(now_ms(), 1, 12, cycle)
    assert year.start_ms == month.start_ms
    following = Period(year.end_ms, billing_period(year.end_ms, 1, 12, cycle).end_ms)
    last_month = billing_period(year.end_ms - 1, 1)
    stripe_customer, _ = billing.subscribe(c, "pro_yearly", VERSION, year)
    billing.period_usage(c, 49_600, month)  # within the year's 50 000: the usage line is 0.00

    # The year ends: Stripe writes its invoice, plg closes its own (2 h grace).
    clock.move_to(year.end_ms + HOUR)
    wait_for(lambda: stripe_invoice(double, stripe_customer, year.end_ms), 60, what="Stripe's invoice")
    pool = ConnectionPool(billing.db_url, min_size=1, max_size=2, open=True)
    closer = billing.closer(pool, config)
    try:
        after_close = year.end_ms + 2 * HOUR + 1
        closed = {i.customer_id: i for i in closer.close_due(after_close)}
        assert (closed[c].period, closed[c].total) == (year, Decimal("490.00"))

        # Late usage in the year's last month: 1 000 requests. The year now has 50 600: 600 over the
        # included 50 000 -> +0.60 (1 000 x 0.001 = 1.00 would be wrong: the year's total is re-rated).
        def late_month(total: int) -> None:  # the last month's BILLING_PERIOD total, as metering writes it
            width = last_month.end_ms - last_month.start_ms
            billing.aggregate(
                c, total, window_start=last_month.start_ms, granularity="BILLING_PERIOD", width=width
            )

        late_month(1_000)
        wait_for(lambda: billing.period_total(c) == 1_000, 60, what="the late month in the ledger")
        for _ in range(2):  # twice: exactly once
            closer.close_due(after_close)
        [(seq, before, after, amount, status, kind, item_id)] = billing.adjustments(c)
        assert (seq, before, after, amount) == (0, Decimal(49_600), Decimal(50_600), Decimal("0.60"))
        assert (status, kind) == ("sent", "invoiceitem")
        assert double.billing.invoice_items[item_id]["amount"] == 60
        with psycopg.connect(billing.db_url) as conn:
            (doc,) = conn.execute(
                "SELECT invoice FROM billing_invoices WHERE customer_id = %s AND period_start = %s",
                (c, year.start_ms),
            ).fetchone()  # type: ignore[misc]
        assert doc["total"] == "490.00"  # the closed year's invoice is untouched

        # A correction the other way (300 of the late requests were duplicates): 50 300 -> -0.30, a credit
        # note on Stripe's invoice of the year, to the customer's balance.
        late_month(700)
        wait_for(lambda: billing.period_total(c) == 700, 60, what="the ledger took the correction")
        closer.close_due(after_close)
        closer.close_due(after_close)
        rows = billing.adjustments(c)
        assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
            (0, Decimal(49_600), Decimal(50_600), Decimal("0.60"), "sent", "invoiceitem"),
            (1, Decimal(50_600), Decimal(50_300), Decimal("-0.30"), "sent", "credit_note"),
        ]
        note = double.billing.credit_notes[rows[1][6]]
        year_at_stripe = stripe_invoice(double, stripe_customer, year.end_ms)
        assert year_at_stripe is not None
        assert (note["total"], note["invoice"]) == (30, year_at_stripe["id"])
        assert (len(double.billing.credit_notes), len(double.billing.invoice_items)) == (1, 1)

        # The next invoice is the next year's: plg's carries both lines; Stripe's the item and the credit.
        nxt = {i.customer_id: i for i in closer.close_due(following.end_ms + 2 * HOUR + 1)}[c]
        assert nxt.period == following
        adjustment_lines = [(ln.kind, ln.amount) for ln in nxt.lines if ln.kind == "adjustment"]
        assert adjustment_lines == [("adjustment", Decimal("0.60")), ("adjustment", Decimal("-0.30"))]
        assert nxt.total == Decimal("490.30")
        clock.move_to(following.end_ms + HOUR)
        stripe_next = wait_for(
            lambda: stripe_invoice(double, stripe_customer, following.end_ms), 60, what="Stripe's next"
        )
        assert [ln["amount"] for ln in stripe_next["lines"]["data"] if ln.get("parent")] == [60]
        assert stripe_next["starting_balance"] == -30
        assert Decimal(stripe_next["amount_due"]).scaleb(-2) == nxt.total  # what the customer pays: the same

        # `plg billing reconcile` shows both adjustments on the next year's invoice, agreeing with Stripe.
        code, rows = billing.reconcile(
            monkeypatch, capsys, "--customer", c, "--period", following.start.strftime("%Y-%m")
        )
        shown = [r for r in rows if r["kind"] == "adjustment"]
        assert [(r["plg_amount"], r["stripe_amount"], r["stripe_kind"], r["agrees"]) for r in shown] == [
            ("0.60", "0.60", "invoiceitem", True),
            ("-0.30", "-0.30", "credit_note", True),
        ]
        assert code == 0, rows
    finally:
        pool.close()
