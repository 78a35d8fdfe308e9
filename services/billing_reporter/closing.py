"""Period close: once a customer's billing period has ended and a grace for late events has passed, and
the ledger holds every report of it (no window still to plan, no report still to deliver), its final
invoice is computed, written once (``billing_invoices``, keyed by ledger, customer and period) and
published on ``billing-invoices`` through that table as an outbox. Stripe's side needs no action: every
report of the period went out under its identifier already, so nothing is sent twice. Usage that changes
after the close becomes an adjustment on the next invoice (:mod:`services.billing_reporter.adjustments`),
never a change of the closed one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from services.billing_reporter.accounts import (
    Terms,
    opening_price,
    period_credits,
    plan_changes,
    terms_at,
    usage_over,
    window_of,
)
from services.billing_reporter.adjustments import Adjuster, lock_customer, pending_for
from services.customers.windows import CYCLE_MONTH_SQL
from services.kernel import metrics
from services.plans.invoice import Invoice, calculate_invoice
from services.plans.model import PlansConfig
from services.plans.periods import billing_period

log = logging.getLogger(__name__)

CLOSED = metrics.counter("plg_billing_periods_closed", "Billing periods closed with a final invoice.")
WAITING = metrics.gauge("plg_billing_periods_waiting", "Ended periods whose ledger is not complete yet.")


@dataclass(frozen=True, slots=True)
class FinalInvoice:
    """A written final invoice as the outbox hands it to publishing: the stored document (to_dict())."""

    customer_id: str
    period_start: int
    period_end: int
    document: dict[str, Any]
    finalized_at: float

    def record(self) -> dict[str, Any]:
        from decimal import Decimal

        doc = self.document
        return {
            "invoice_id": f"{self.customer_id}:{self.period_start}",
            "customer_id": self.customer_id,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "plan": doc["plan"],
            "price_version": doc["price_version"],
            "currency": doc["currency"],
            "subtotal": Decimal(doc["subtotal"]),
            "tax": Decimal(doc["tax"]["amount"]),
            "total": Decimal(doc["total"]),
            "lines_json": json.dumps(doc["lines"], sort_keys=True),
            "finalized_at": int(self.finalized_at * 1000),
        }


class PeriodCloser:
    def __init__(
        self,
        pool: ConnectionPool,
        config: PlansConfig,
        *,
        ledger: str,
        report_granularity: str,
        grace_ms: int,
        publish: Callable[[list[FinalInvoice]], None] | None = None,
        adjuster: Adjuster | None = None,
        mirrors: Sequence[Callable[[], int]] = (),
    ) -> None:
        self.pool = pool
        self.adjuster = adjuster
        # More of what Stripe must be told each round (top-ups' credit grants), each retried on failure.
        self.mirrors = tuple(mirrors)
        self.config = config
        self.ledger = ledger
        self.report_granularity = report_granularity
        self.grace_ms = grace_ms
        self.publish = publish

    def close_due(self, now_ms: int | None = None) -> list[Invoice]:
        """Close every customer's last period that ended more than the grace ago; returns the invoices
        written now (a period already closed, or whose ledger is incomplete, is skipped)."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        if self.adjuster is not None:
            # First: an adjustment whose next invoice closes in this round is on it.
            self.adjuster.adjust(now_ms)
        written: list[Invoice] = []
        waiting = 0
        with self.pool.connection() as conn:
            customers = conn.execute(
                "SELECT customer_id, plan, billing_anchor_day, price_version, tax_region,"
                " (extract(epoch FROM created_at) * 1000)::bigint, tax_exempt, tax_id_type, tax_id,"
                f" {CYCLE_MONTH_SQL} FROM customers"
            ).fetchall()
            # Plan changes since the earliest period start this round can close (two months before the
            # grace): a period's usage is priced on the plan in force at its end, not on the one the
            # customer has now, and its base on the plan at its start (opening_price).
            changes = plan_changes(conn, now_ms - self.grace_ms - 64 * 86_400_000)
        for (
            customer_id,
            plan,
            anchor,
            pinned,
            region,
            created_ms,
            exempt,
            id_type,
            tax_id,
            cycle_month,
        ) in customers:
            current = billing_period(now_ms - self.grace_ms, anchor)
            last_month = billing_period(current.start_ms - 1, anchor)
            if last_month.end_ms <= created_ms:
                continue  # the customer did not exist yet
            # An upgrade, a downgrade, a cancel or a new checkout during the grace (after the period ended,
            # before it closes) does not reprice it: Stripe invoiced it at its end, on the plan then.
            current_terms = Terms(plan, pinned, cycle_month)
            history = changes.get(customer_id, [])
            terms = terms_at(current_terms, history, last_month.end_ms)
            found = window_of(
                self.config, terms.plan, terms.price_version, last_month.start_ms, anchor, terms.cycle_month
            )
            if found is None:
                continue
            # The usage period (a month, or a whole annual/custom period billed per_period) and the
            # billing period around it: only a usage period that ended with this month closes now.
            price, ended, cycle = found
            if ended.end_ms != last_month.end_ms:
                continue
            with self.pool.connection() as conn, conn.transaction():
                if self._closed(conn, customer_id, ended.start_ms):
                    continue
                if not self._complete(conn, customer_id, ended.start_ms, ended.end_ms):
                    waiting += 1
                    continue
                # The adjuster takes the same lock: an adjustment is on exactly one invoice.
                lock_customer(conn, self.ledger, customer_id)
                if self._closed(conn, customer_id, ended.start_ms):
                    continue
                usage = usage_over(conn, self.ledger, self.config, customer_id, ended, anchor)
                adjustments = pending_for(conn, self.ledger, customer_id, ended)
                opening = opening_price(self.config, current_terms, history, price, ended, anchor)
                charges_base = bool((opening or price).base_price) and cycle.start_ms == ended.start_ms
                if not usage and not charges_base and not adjustments:
                    continue  # nothing to bill: a free customer without usage, a quiet month of a year
                invoice = calculate_invoice(
                    customer_id=customer_id,
                    period=ended,
                    billing_period=cycle,
                    price=price,
                    usage=usage,
                    tax_region=region,
                    tax_exempt=exempt,
                    tax_id=(id_type, tax_id) if tax_id else None,
                    status="final",
                    credits=period_credits(self.pool, customer_id, ended),
                    adjustments=adjustments,
                    opening=opening,
                )
                conn.execute(
                    "INSERT INTO billing_invoices (ledger, customer_id, period_start, period_end, plan,"
                    " price_version,"
                    " currency, total, invoice) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (self.ledger, customer_id, ended.start_ms, ended.end_ms, invoice.plan,
                     invoice.price_version, invoice.currency, invoice.total, json.dumps(invoice.to_dict())),
                )  # fmt: skip
                written.append(invoice)
                CLOSED.inc()
        WAITING.set(waiting)
        if self.adjuster is not None:
            self.adjuster.send_pending()
        for mirror in self.mirrors:
            mirror()
        self.publish_pending()
        return written

    def _closed(self, conn: psycopg.Connection[Any], customer_id: str, start_ms: int) -> bool:
        return (
            conn.execute(
                "SELECT 1 FROM billing_invoices WHERE ledger = %s AND customer_id = %s AND period_start = %s",
                (self.ledger, customer_id, start_ms),
            ).fetchone()
            is not None
        )

    def _complete(self, conn: psycopg.Connection[Any], customer_id: str, start_ms: int, end_ms: int) -> bool:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM billing_usage WHERE ledger = %s AND customer_id = %s AND dirty"
            "        AND granularity = %s AND window_start >= %s AND window_start < %s),"
            "       (SELECT count(*) FROM billing_reports WHERE ledger = %s AND customer_id = %s"
            "        AND status = 'pending' AND window_start >= %s AND window_start < %s)",
            (self.ledger, customer_id, self.report_granularity, start_ms, end_ms,
             self.ledger, customer_id, start_ms, end_ms),
        ).fetchone()  # fmt: skip
        return row is not None and row[0] == 0 and row[1] == 0

    def publish_pending(self) -> None:
        if self.publish is None:
            return
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT customer_id, period_start, period_end, invoice, extract(epoch FROM"
                " finalized_at)::float8"
                " FROM billing_invoices WHERE ledger = %s AND published_at IS NULL ORDER BY finalized_at"
                " LIMIT 500",
                (self.ledger,),
            ).fetchall()
        if not rows:
            return
        finals = [FinalInvoice(c, int(s), int(e), doc, at) for c, s, e, doc, at in rows]
        self.publish(finals)
        with self.pool.connection() as conn:
            conn.cursor().executemany(
                "UPDATE billing_invoices SET published_at = now() WHERE ledger = %s AND customer_id = %s"
                " AND period_start = %s",
                [(self.ledger, f.customer_id, f.period_start) for f in finals],
            )

    def run(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            try:
                self.close_due()
            except Exception:
                log.exception("period close round failed; retrying")
