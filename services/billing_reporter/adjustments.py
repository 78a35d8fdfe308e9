"""Late usage after an invoice (docs/billing.md "Adjustments"): a final invoice never changes. When the
ledger's total of a closed period changes afterwards (a backfill, a replayed dead letter, a correction the
aggregator still took), the period's line is re-rated with the invoice's own price version and credits,
and the money difference becomes an **adjustment** (``billing_adjustments``): a line on the customer's
next invoice, and at Stripe an invoice item on the next invoice (positive) or a credit note on the
corrected period's Stripe invoice, credited to the customer's balance (negative).

Exactly once: adjustments are written under a per-customer advisory lock that period close takes too (an
adjustment lands on exactly one invoice), keyed by (customer, period, meter, sequence), and sent to Stripe
under an Idempotency-Key derived from that key (a retry after a lost answer is replayed, not repeated).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import stripe
from psycopg_pool import ConnectionPool

from services.billing_reporter.accounts import (
    Terms,
    grants_of,
    plain,
    plan_changes,
    terms_at,
    usage_over,
    window_of,
)
from services.billing_reporter.stripe_gateway import StripeGateway
from services.customers.windows import CYCLE_MONTH_SQL
from services.kernel import metrics
from services.plans.grants import credits_for
from services.plans.invoice import Adjustment, line_difference
from services.plans.model import CURRENCY_MINOR_UNITS, PlansConfig
from services.plans.periods import Period, billing_period, usage_periods
from services.plans.windows import combine_months

log = logging.getLogger(__name__)
ZERO = Decimal(0)
# Corrections older than this are not looked for (the aggregator's changelog and Stripe's 35 days).
LOOKBACK_MS = 40 * 86_400_000
# An invoice longer than this covers several months (usage billed per annual or custom period).
LONGEST_MONTH_MS = 31 * 86_400_000

WRITTEN = metrics.counter(
    "plg_billing_adjustments", "Adjustments of closed periods written, by sign.", ("sign",)
)
SENT = metrics.counter("plg_billing_adjustments_sent", "Adjustments mirrored at Stripe, by kind.", ("kind",))


def lock_customer(conn: psycopg.Connection[Any], ledger: str, customer_id: str) -> None:
    """Serialises closing and adjusting one customer's invoices (held to the transaction's end)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 15))", (f"{ledger}\x1f{customer_id}",))


def adjustment_key(ledger: str, customer_id: str, period_start: int, meter: str, seq: int) -> str:
    raw = f"{ledger}\x1f{customer_id}\x1f{period_start}\x1f{meter}\x1f{seq}"
    return "plg_adj_" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def pending_for(
    conn: psycopg.Connection[Any], ledger: str, customer_id: str, target: Period
) -> list[Adjustment]:
    """The adjustments the invoice of ``target`` carries (non-zero ones)."""
    rows = conn.execute(
        "SELECT a.meter, a.period_start, i.period_end, a.usage_before, a.usage_after, a.amount, a.currency"
        " FROM billing_adjustments a JOIN billing_invoices i ON i.ledger = a.ledger"
        " AND i.customer_id = a.customer_id AND i.period_start = a.period_start"
        " WHERE a.ledger = %s AND a.customer_id = %s AND a.target_period_start = %s AND a.amount <> 0"
        " ORDER BY a.period_start, a.meter, a.seq",
        (ledger, customer_id, target.start_ms),
    ).fetchall()
    return [
        Adjustment(m, Period(int(s), int(e)), plain(Decimal(b)), plain(Decimal(a)), money(Decimal(amt), cur))
        for m, s, e, b, a, amt, cur in rows
    ]


def money(amount: Decimal, currency: str) -> Decimal:
    """An amount with its currency's minor places (1.000000000 -> 1.00), as invoice lines show money."""
    return amount.quantize(Decimal(1).scaleb(-CURRENCY_MINOR_UNITS.get(currency, 2)))


@dataclass(frozen=True, slots=True)
class Written:
    customer_id: str
    period_start: int
    meter: str
    seq: int
    amount: Decimal
    target_period_start: int


def _billed(conn: psycopg.Connection[Any], ledger: str, customer_id: str, start: int) -> dict[str, Decimal]:
    """meter → the usage the closed invoice and its adjustments bill so far."""
    row = conn.execute(
        "SELECT invoice FROM billing_invoices WHERE ledger = %s AND customer_id = %s AND period_start = %s",
        (ledger, customer_id, start),
    ).fetchone()
    out: dict[str, Decimal] = {}
    if row is None:
        return out
    for line in row[0]["lines"]:
        if line.get("kind") == "usage":
            out[line["meter"]] = Decimal(line["usage"])
    for meter, after in conn.execute(
        "SELECT DISTINCT ON (meter) meter, usage_after FROM billing_adjustments WHERE ledger = %s"
        " AND customer_id = %s AND period_start = %s ORDER BY meter, seq DESC",
        (ledger, customer_id, start),
    ).fetchall():
        out[meter] = Decimal(after)
    return out


class Adjuster:
    """Finds closed periods whose usage changed, writes their adjustments, mirrors them at Stripe."""

    def __init__(
        self, pool: ConnectionPool, config: PlansConfig, *, ledger: str, grace_ms: int,
        gateway: StripeGateway | None = None,
    ) -> None:  # fmt: skip
        self.pool = pool
        self.config = config
        self.ledger = ledger
        self.grace_ms = grace_ms
        self.gateway = gateway

    def changed_periods(self, now_ms: int) -> list[tuple[str, int]]:
        """(customer, period start) of closed invoices whose ledger total differs from what they bill: a
        month's invoice against its ``BILLING_PERIOD`` row, an invoice of a whole annual or custom period
        billed ``per_period`` against its months added up as its invoice added them (:func:`usage_over`)."""
        since = now_ms - LOOKBACK_MS
        with self.pool.connection() as conn:
            rows = conn.execute(
                """
                WITH billed AS (
                    SELECT i.customer_id, i.period_start, l->>'meter' AS meter,
                           (l->>'usage')::numeric AS usage
                    FROM billing_invoices i, jsonb_array_elements(i.invoice->'lines') l
                    WHERE i.ledger = %(ledger)s AND i.period_end > %(since)s AND l->>'kind' = 'usage'
                ), adjusted AS (
                    SELECT DISTINCT ON (customer_id, period_start, meter) customer_id, period_start, meter,
                           usage_after
                    FROM billing_adjustments WHERE ledger = %(ledger)s
                    ORDER BY customer_id, period_start, meter, seq DESC
                )
                SELECT DISTINCT u.customer_id, u.window_start
                FROM billing_usage u
                JOIN billing_invoices i ON i.ledger = u.ledger AND i.customer_id = u.customer_id
                     AND i.period_start = u.window_start AND i.period_end = u.window_end
                LEFT JOIN billed b ON b.customer_id = u.customer_id AND b.period_start = u.window_start
                     AND b.meter = u.meter
                LEFT JOIN adjusted a ON a.customer_id = u.customer_id AND a.period_start = u.window_start
                     AND a.meter = u.meter
                WHERE u.ledger = %(ledger)s AND u.granularity = 'BILLING_PERIOD' AND i.period_end > %(since)s
                  AND u.value <> COALESCE(a.usage_after, b.usage, 0)
                ORDER BY 1, 2
                """,
                {"ledger": self.ledger, "since": since},
            ).fetchall()
            changed = {(str(c), int(s)) for c, s in rows}
            changed |= self._changed_multi_month(conn, since)
        return sorted(changed)

    def _changed_multi_month(self, conn: psycopg.Connection[Any], since: int) -> set[tuple[str, int]]:
        """Closed invoices longer than a month (usage billed ``per_period`` over an annual or custom window)
        whose months, combined as the invoice combined them, no longer add up to what they bill. The
        ledger's period rows are months, so no single row matches such an invoice: its months are read in
        one query and combined here (SUM/COUNT added, MAX the largest, LATEST the last month's)."""
        months: dict[tuple[str, int], dict[int, dict[str, Decimal]]] = {}
        invoices: dict[tuple[str, int], tuple[int, int]] = {}
        for customer_id, start, end, anchor, meter, window_start, value in conn.execute(
            "SELECT i.customer_id, i.period_start, i.period_end, c.billing_anchor_day, u.meter,"
            " u.window_start, u.value FROM billing_invoices i"
            " JOIN customers c ON c.customer_id = i.customer_id"
            " LEFT JOIN billing_usage u ON u.ledger = i.ledger AND u.customer_id = i.customer_id"
            "  AND u.granularity = 'BILLING_PERIOD' AND u.window_start >= i.period_start"
            "  AND u.window_end <= i.period_end"
            " WHERE i.ledger = %s AND i.period_end > %s AND i.period_end - i.period_start > %s",
            (self.ledger, since, LONGEST_MONTH_MS),
        ).fetchall():
            key = (str(customer_id), int(start))
            invoices[key] = (int(end), int(anchor))
            if meter is not None:
                month = months.setdefault(key, {}).setdefault(int(window_start), {})
                month[str(meter)] = plain(Decimal(value))
        out: set[tuple[str, int]] = set()
        for (customer_id, start), (end, anchor) in invoices.items():
            by_month = months.get((customer_id, start), {})
            usage = combine_months(
                self.config, [by_month.get(m.start_ms, {}) for m in usage_periods(Period(start, end), anchor)]
            )
            billed = _billed(conn, self.ledger, customer_id, start)
            if any(usage.get(m, ZERO) != billed.get(m, ZERO) for m in usage.keys() | billed.keys()):
                out.add((customer_id, start))
        return out

    def adjust(self, now_ms: int) -> list[Written]:
        """Write the adjustments of every closed period whose usage changed since it was billed."""
        out: list[Written] = []
        for customer_id, start in self.changed_periods(now_ms):
            try:
                out += self._adjust_one(customer_id, start, now_ms)
            except Exception:
                log.exception("adjusting %s's period %s failed; retrying next round", customer_id, start)
        return out

    def _adjust_one(self, customer_id: str, start: int, now_ms: int) -> list[Written]:
        written: list[Written] = []
        with self.pool.connection() as conn, conn.transaction():
            lock_customer(conn, self.ledger, customer_id)
            row = conn.execute(
                "SELECT i.plan, i.price_version, i.period_end, c.billing_anchor_day FROM billing_invoices i"
                " JOIN customers c ON c.customer_id = i.customer_id"
                " WHERE i.ledger = %s AND i.customer_id = %s AND i.period_start = %s",
                (self.ledger, customer_id, start),
            ).fetchone()
            if row is None:
                return []
            plan, version, end, anchor = row
            corrected = Period(start, int(end))
            price = self.config.price_for(plan, corrected.start.date(), version)
            if price is None or price.version != version:
                log.warning("cannot re-rate %s's %s: price version %s is gone", customer_id, start, version)
                return []
            # The period's usage as its invoice counted it: the month's total, or the months of an
            # annual/custom period billed per_period added up.
            usage = usage_over(conn, self.ledger, self.config, customer_id, corrected, int(anchor))
            billed = _billed(conn, self.ledger, customer_id, start)
            credits = credits_for(grants_of(conn, customer_id), corrected)
            target = self._target(conn, customer_id, int(anchor), now_ms)
            for meter in sorted(usage):
                before, after = billed.get(meter, ZERO), usage[meter]
                if before == after:
                    continue
                amount = line_difference(price, meter, before, after, credits.get(meter, ZERO))
                seq = conn.execute(
                    "SELECT COALESCE(max(seq) + 1, 0) FROM billing_adjustments WHERE ledger = %s"
                    " AND customer_id = %s AND period_start = %s AND meter = %s",
                    (self.ledger, customer_id, start, meter),
                ).fetchone()[0]  # type: ignore[index]
                conn.execute(
                    "INSERT INTO billing_adjustments (ledger, customer_id, period_start, meter, seq,"
                    " usage_before, usage_after, amount, currency, target_period_start, idempotency_key,"
                    " stripe_status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (self.ledger, customer_id, start, meter, seq, before, after, amount, price.currency,
                     target.start_ms, adjustment_key(self.ledger, customer_id, start, meter, seq),
                     "pending" if amount else "not_at_stripe"),
                )  # fmt: skip
                WRITTEN.labels("credit" if amount < 0 else "charge" if amount else "zero").inc()
                written.append(Written(customer_id, start, meter, seq, amount, target.start_ms))
        return written

    def _target(self, conn: psycopg.Connection[Any], customer_id: str, anchor: int, now_ms: int) -> Period:
        """The customer's first usage period not closed yet: the next invoice (close takes the same lock).
        A month, or a whole annual/custom period when its usage is billed ``per_period`` — the period the
        closer will close (:func:`window_of`), so the adjustment is on exactly the invoice it writes."""
        row = conn.execute(
            f"SELECT plan, price_version, {CYCLE_MONTH_SQL} FROM customers WHERE customer_id = %s",
            (customer_id,),
        ).fetchone()

        changes = plan_changes(conn, now_ms - self.grace_ms - 32 * 86_400_000, customer_id).get(
            customer_id, ()
        )

        def usage_period_at(at_ms: int) -> Period:
            # On the terms the closer will price that period with: those in force at its month's end.
            if row is None:
                return billing_period(at_ms, anchor)
            terms = terms_at(Terms(*row), changes, billing_period(at_ms, anchor).end_ms)
            found = window_of(self.config, terms.plan, terms.price_version, at_ms, anchor, terms.cycle_month)
            return billing_period(at_ms, anchor) if found is None else found[1]

        period = usage_period_at(now_ms - self.grace_ms)
        while conn.execute(
            "SELECT 1 FROM billing_invoices WHERE ledger = %s AND customer_id = %s AND period_start = %s",
            (self.ledger, customer_id, period.start_ms),
        ).fetchone():
            period = usage_period_at(period.end_ms)
        return period

    # -- Stripe ---------------------------------------------------------------------------------------
    def send_pending(self) -> int:
        """Mirror every adjustment not at Stripe yet; a failure stays pending for the next round."""
        if self.gateway is None:
            return 0
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT a.customer_id, a.period_start, i.period_end, a.meter, a.seq, a.amount, a.currency,"
                " a.idempotency_key, c.stripe_customer_id, s.stripe_subscription_id"
                " FROM billing_adjustments a"
                " JOIN billing_invoices i ON i.ledger = a.ledger AND i.customer_id = a.customer_id"
                "  AND i.period_start = a.period_start"
                " JOIN customers c ON c.customer_id = a.customer_id"
                " LEFT JOIN subscriptions s ON s.customer_id = a.customer_id"
                " WHERE a.ledger = %s AND a.stripe_status = 'pending' ORDER BY a.created_at LIMIT 500",
                (self.ledger,),
            ).fetchall()
        sent = 0
        for customer_id, start, end, meter, _seq, amount, currency, key, stripe_customer, sub in rows:
            if not stripe_customer or not sub:
                self._record(key, "not_at_stripe", None, None, "no Stripe subscription: plg's invoice only")
                continue
            try:
                kind, object_id = self._send(
                    str(customer_id), Period(int(start), int(end)), str(meter), Decimal(amount),
                    str(currency), str(key), str(stripe_customer), str(sub),
                )  # fmt: skip
            except stripe.StripeError as exc:
                log.warning("adjustment %s not at Stripe yet: %s", key, exc.user_message or exc)
                self._record(key, "pending", None, None, str(exc.user_message or exc)[:1000])
                continue
            self._record(key, "sent", kind, object_id, None)
            SENT.labels(kind).inc()
            sent += 1
        return sent

    def _send(
        self, customer_id: str, corrected: Period, meter: str, amount: Decimal, currency: str, key: str,
        stripe_customer: str, subscription: str,
    ) -> tuple[str, str]:  # fmt: skip
        assert self.gateway is not None
        minor = int(amount.scaleb(CURRENCY_MINOR_UNITS.get(currency, 2)).to_integral_value())
        day = corrected.start.date().isoformat()
        description = f"plg: {meter} correction of the period from {day}"
        metadata = {"plg_adjustment": key, "plg_customer_id": customer_id, "plg_meter": meter,
                    "plg_period_start": str(corrected.start_ms)}  # fmt: skip
        if minor < 0:
            invoice = self._stripe_invoice_of(stripe_customer, subscription, corrected)
            if invoice is not None:
                notes = self.gateway.list_credit_notes(str(invoice["id"]))
                mine = [n for n in notes if (n.get("metadata") or {}).get("plg_adjustment") == key]
                if mine:  # an earlier attempt made it and its answer was lost
                    return "credit_note", str(mine[0]["id"])
                credited = sum(int(n["total"]) for n in notes if n.get("status") != "void")
                if -minor <= int(invoice["total"]) - credited:
                    # A credit note on the corrected period's own Stripe invoice, to the customer's
                    # balance: Stripe's next invoice uses the credit first, as plg's next invoice carries
                    # the line.
                    note = self.gateway.create_credit_note(
                        {"invoice": invoice["id"], "credit_amount": -minor, "memo": description,
                         "metadata": metadata, "lines": [{"type": "custom_line_item",
                         "description": description, "quantity": 1, "unit_amount": -minor}]},
                        idempotency_key=key,
                    )  # fmt: skip
                    return "credit_note", str(note["id"])
                # More than that invoice has left to credit (a correction below what a later positive
                # adjustment added, or earlier credit notes): Stripe refuses such a credit note, and the
                # adjustment would stay pending for ever. A negative invoice item on the next invoice
                # credits the same amount where plg's next invoice carries it.
        item = self.gateway.create_invoice_item(
            {"customer": stripe_customer, "subscription": subscription, "amount": minor,
             "currency": currency.lower(), "description": description, "metadata": metadata},
            idempotency_key=key,
        )  # fmt: skip
        return "invoiceitem", str(item["id"])

    def _stripe_invoice_of(
        self, stripe_customer: str, subscription: str, period: Period
    ) -> dict[str, Any] | None:
        """Stripe's invoice that billed ``period``'s usage (it ends with the period); None if none did."""
        assert self.gateway is not None
        for invoice in self.gateway.list_invoices(stripe_customer, subscription):
            ended_with_period = invoice.get("period_end") == period.end_ms // 1000
            if ended_with_period and invoice.get("status") in ("paid", "open"):
                return invoice
        return None

    def _record(
        self, key: str, status: str, kind: str | None, object_id: str | None, error: str | None
    ) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE billing_adjustments SET stripe_status = %s, stripe_kind = COALESCE(%s, stripe_kind),"
                " stripe_id = COALESCE(%s, stripe_id), stripe_error = %s WHERE idempotency_key = %s",
                (status, kind, object_id, error, key),
            )


def adjustment_rows(
    conn: psycopg.Connection[Any], ledger: str, customer: str | None, target: Period | None
) -> list[dict[str, Any]]:
    """Adjustments for reconciliation: every one whose target or corrected period is ``target`` (all of
    them without a period), with where they stand at Stripe."""
    where, args = ["a.ledger = %s", "a.amount <> 0"], [ledger]
    if customer:
        where.append("a.customer_id = %s")
        args.append(customer)
    if target is not None:
        where.append("(a.target_period_start = %s OR a.period_start = %s)")
        args += [target.start_ms, target.start_ms]  # type: ignore[list-item]
    rows = conn.execute(
        "SELECT a.customer_id, a.period_start, a.meter, a.seq, a.usage_before, a.usage_after, a.amount,"
        " a.currency, a.target_period_start, a.stripe_status, a.stripe_kind, a.stripe_id, a.stripe_error"
        " FROM billing_adjustments a WHERE " + " AND ".join(where) + " ORDER BY 1, 2, 3, 4",
        args,
    ).fetchall()
    keys = ("customer_id", "period_start", "meter", "seq", "usage_before", "usage_after", "amount",
            "currency", "target_period_start", "stripe_status", "stripe_kind", "stripe_id",
            "stripe_error")  # fmt: skip
    return [dict(zip(keys, r, strict=True)) for r in rows]
