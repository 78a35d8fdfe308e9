"""Reconciliation: what metering counted (``usage-aggregates``), what the ledger holds and what Stripe
was sent, per customer and meter for one billing period, in whole units (what Stripe can hold).

``plg billing reconcile [--customer C] [--period YYYY-MM]`` prints every row that differs and exits 1 if
any does. Pending reports (not delivered yet) count as a difference: the run is a statement about now.
Usage that is not due at Stripe yet — a window that has not closed and settled, a window whose late
correction is still being coalesced, a level that changed within its reporting interval — is shown as
``open`` and compared on a later run, not counted as a difference (otherwise every run during traffic
would fail on the current hour).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import psycopg
import stripe

from services.billing_reporter.accounts import Terms, grants_of, plain, plan_changes, terms_at
from services.billing_reporter.adjustments import adjustment_rows, money
from services.billing_reporter.catalog import metered_prices
from services.billing_reporter.meters import stripe_meter_ids
from services.billing_reporter.stripe_gateway import StripeGateway
from services.kernel.reading import read_to_end
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_AGGREGATES, topic
from services.plans.grants import credits_for
from services.plans.invoice import round_money
from services.plans.model import CURRENCY_MINOR_UNITS, PlansConfig
from services.plans.periods import Period, billing_period, datetime_to_ms, ms_to_datetime
from services.plans.pricing import usage_charge

log = logging.getLogger(__name__)
ZERO = Decimal(0)
PERIOD = "BILLING_PERIOD"


@dataclass
class Line:
    customer_id: str
    meter: str
    period: Period
    aggregates: Decimal = ZERO  # whole units per window, summed
    ledger_usage: Decimal = ZERO
    delivered: Decimal = ZERO
    pending: Decimal = ZERO
    stripe: Decimal | None = None  # None: not asked (no Stripe customer or meter)
    linked: bool = True  # has a Stripe customer and subscription: its usage is reported
    open: Decimal = ZERO  # counted but not due at Stripe yet (left out of the four columns above)
    # Money: Stripe's invoice line for the meter's price (the preview for the running period, the
    # period's invoice for a closed one) and plg's calculator on the quantity Stripe holds.
    stripe_amount: Decimal | None = None
    plg_amount: Decimal | None = None
    # Units Stripe holds for the period that its invoice line does not bill (what it received less the
    # line's quantity): not zero when usage reached Stripe dated outside the subscription (before it began),
    # which the money check above cannot see, since it prices the quantity the line bills.
    unbilled: Decimal = ZERO
    # Units a canceled subscription held for this period and billed on no invoice (a cancel at once discards
    # the period's metered usage at Stripe), sent again to the subscription that began in the period, dated
    # at its start (ledger._SUPERSEDED_SUM): Stripe holds them twice, bills them once. Not in `delivered`;
    # taken off what Stripe holds before it is compared. A Stripe invoice that did bill them (a cancel with
    # `invoice_now`) shows as `unbilled` below zero.
    superseded: Decimal = ZERO
    # Usage no subscription covered (after a cancel, before a new subscription's period): held by the
    # ledger, not at Stripe (ledger._covered); it must not have been delivered.
    held: Decimal = ZERO

    @property
    def agrees(self) -> bool:
        if not self.linked:  # not billed on Stripe: nothing may have been reported
            return self.aggregates == self.ledger_usage and self.delivered == self.pending == 0
        same = (
            self.aggregates == self.ledger_usage
            and self.delivered == self.ledger_usage - self.held
            and self.pending == 0
        )
        money = self.stripe_amount is None or self.stripe_amount == self.plg_amount
        billed = self.unbilled == 0
        return same and (self.stripe is None or self.stripe == self.delivered) and money and billed

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "usage",
            "customer_id": self.customer_id,
            "meter": self.meter,
            "period_start": self.period.start.isoformat(),
            "aggregates": str(self.aggregates),
            "ledger_usage": str(self.ledger_usage),
            "delivered": str(self.delivered),
            "pending": str(self.pending),
            "stripe": None if self.stripe is None else str(self.stripe),
            "linked": self.linked,
            "open": str(self.open),
            "stripe_amount": None if self.stripe_amount is None else str(self.stripe_amount),
            "plg_amount": None if self.plg_amount is None else str(self.plg_amount),
            "unbilled": str(self.unbilled),
            "superseded": str(self.superseded),
            "held": str(self.held),
            "agrees": self.agrees,
        }


@dataclass(frozen=True, slots=True)
class Cover:
    """Which windows the customer's subscriptions cover (as ledger._covered decides what is reported):
    all, unless the latest one was canceled — then those before its end, and, once a new subscription
    began, those from its first plg period (``usage_from``) on."""

    status: str | None
    canceled_ms: int | None
    usage_from: int | None

    def covers(self, window_start_ms: int) -> bool:
        if self.canceled_ms is None or window_start_ms < self.canceled_ms:
            return True
        return self.status != "canceled" and (self.usage_from is None or window_start_ms >= self.usage_from)

    def canceled_in(self, period: Period) -> bool:
        """Canceled, with no subscription since, before ``period`` ended."""
        return self.status == "canceled" and self.canceled_ms is not None and self.canceled_ms < period.end_ms


def whole(value: Decimal) -> Decimal:
    return value.to_integral_value(rounding=ROUND_FLOOR)


def period_of(month: str | None, anchor_day: int, now_ms: int) -> Period:
    """The customer's period that starts in ``month`` (YYYY-MM), or the current one."""
    if month is None:
        return billing_period(now_ms, anchor_day)
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    probe = datetime_to_ms(start.replace(day=min(anchor_day, 28)))
    return billing_period(probe, anchor_day)


def read_aggregates(
    kafka: KafkaSettings,
    registry: SchemaRegistrySettings,
    prefix: str,
    granularity: str,
    timeout: float = 120.0,
) -> dict[tuple[str, str, str, int], Decimal]:
    """The latest value of every ungrouped window of ``granularity`` and of every billing period on
    usage-aggregates (read_committed), by (customer, meter, granularity, window start)."""
    name = topic(USAGE_AGGREGATES, prefix).name
    decoder = SchemaRegistry(registry).decoder()
    latest: dict[tuple[str, str, str, int], Decimal] = {}
    for record in read_to_end(kafka, name, timeout, "plg-billing-reconcile"):
        raw = record.value()
        if raw is None:
            continue
        v = decoder.decode(raw)
        if v["granularity"] in (granularity, PERIOD) and not v["group"]:
            latest[(v["customer_id"], v["meter"], v["granularity"], int(v["window_start"]))] = v["value"]
    return latest


WINDOW_MS = {"MINUTE": 60_000, "HOUR": 3_600_000, "DAY": 86_400_000}


@dataclass(frozen=True, slots=True)
class Due:
    """When counted usage is due at Stripe (the reporter's settings): a window ``settle_ms`` after it
    ends and ``correction_ms`` after its last change; a level ``level_ms`` + ``settle_ms`` after its last
    change."""

    settle_ms: int = 0
    correction_ms: int = 0
    level_ms: int = 0


def reconcile(
    conn: psycopg.Connection[Any],
    aggregates: dict[tuple[str, str, str, int], Decimal],
    *,
    ledger: str,
    granularity: str,
    meters: Iterable[str],
    gateway: StripeGateway | None,
    levels: Collection[str] = (),
    customer: str | None = None,
    month: str | None = None,
    now_ms: int | None = None,
    due: Due = Due(),
    config: PlansConfig | None = None,
    packages: Mapping[str, tuple[str, Decimal]] | None = None,
) -> list[Line]:
    """Sum meters compare window totals and delivered differences; level meters (``levels``) compare the
    period's value with the last delivered level (what Stripe's ``last`` meter holds). Usage not due yet
    (``due``) is left out of the comparison and shown as ``open``."""
    now_ms = now_ms or int(time.time() * 1000)
    width = WINDOW_MS.get(granularity, 0)
    packages = dict(packages or {})
    # A derived package meter holds ceil(period total / size) of its plg meter: compare that.
    aggregates = dict(aggregates)
    for (c, m, g, s), v in list(aggregates.items()):
        for derived, (base, size) in packages.items():
            if m == base and g == PERIOD:
                aggregates[(c, derived, PERIOD, s)] = _packages(v, size)
    wanted = sorted(meters)
    customers = conn.execute(
        # A Stripe customer without a subscription is not reported to (the ledger holds its usage until one
        # begins: ledger._covered): not linked here either.
        "SELECT c.customer_id, billing_anchor_day, CASE WHEN s.stripe_subscription_id IS NOT NULL"
        " THEN c.stripe_customer_id END, c.plan, price_version, s.status,"
        " (extract(epoch FROM s.canceled_at) * 1000)::bigint, s.usage_from"
        " FROM customers c LEFT JOIN subscriptions s ON s.customer_id = c.customer_id"
        + (" WHERE c.customer_id = %s" if customer else "")
        + " ORDER BY c.customer_id",
        (customer,) if customer else (),
    ).fetchall()
    stripe_meters = {} if gateway is None else stripe_meter_ids(conn, gateway.account())
    lines: list[Line] = []
    for customer_id, anchor, stripe_id, plan, pinned, status, canceled_ms, usage_from in customers:
        period = period_of(month, anchor, now_ms)
        cover = Cover(status, None if canceled_ms is None else int(canceled_ms), usage_from)
        amounts: dict[str, tuple[Decimal, Decimal | None]] = {}
        # The plan in force at the period's end, as the closer prices it (a change since does not reprice it).
        changes = plan_changes(conn, period.end_ms, customer_id).get(customer_id, ())
        terms = terms_at(Terms(plan, pinned, 0), changes, period.end_ms)
        price = (
            None if config is None else config.price_for(terms.plan, period.start.date(), terms.price_version)
        )
        credits = credits_for(grants_of(conn, customer_id), period)
        if stripe_id and gateway is not None and price is not None:
            amounts = stripe_line_amounts(
                conn, gateway, customer_id, stripe_id, period, now_ms, price.minor_unit
            )
        usage: dict[tuple[str, int], Decimal] = {
            (meter, int(start)): Decimal(value)
            for meter, start, value in conn.execute(
                "SELECT meter, window_start, floor(value) FROM billing_usage WHERE ledger = %s"
                " AND customer_id = %s"
                " AND ((granularity = %s AND meter <> ALL(%s)) OR (granularity = %s AND meter = ANY(%s)))"
                " AND window_start >= %s AND window_start < %s",
                (ledger, customer_id, granularity, list(levels), PERIOD, list(levels),
                 period.start_ms, period.end_ms),
            ).fetchall()
        }  # fmt: skip
        reports = _reports(conn, ledger, customer_id, period, levels)
        uncovered = {(m, s) for (m, s) in usage if m not in levels and not cover.covers(s)}
        changed = _last_changes(conn, ledger, customer_id, period)
        for derived, (base, size) in packages.items():
            for meter, start, value in conn.execute(
                "SELECT meter, window_start, value FROM billing_usage WHERE ledger = %s AND customer_id = %s"
                " AND granularity = %s AND meter = %s AND window_start >= %s AND window_start < %s",
                (ledger, customer_id, PERIOD, base, period.start_ms, period.end_ms),
            ).fetchall():
                usage[(derived, int(start))] = _packages(Decimal(value), size)
                changed[(derived, int(start))] = changed.get((meter, int(start)), 0)
        for meter in wanted:
            level = meter in levels
            wanted_granularity = PERIOD if level else granularity
            windows = {
                s: whole(v)
                for (c, m, g, s), v in aggregates.items()
                if c == customer_id and m == meter and g == wanted_granularity and period.contains(s)
            }
            # Windows (a level: the period) whose usage is not due at Stripe yet.
            not_due = set()
            for start in windows.keys() | {s for (m, s) in changed if m == meter}:
                last_change = changed.get((meter, start), 0)
                if level:
                    if linked_level_open(last_change, due, now_ms):
                        not_due.add(start)
                elif start + width + due.settle_ms > now_ms or last_change + due.correction_ms > now_ms:
                    not_due.add(start)
            open_windows = frozenset(not_due)
            line = Line(
                customer_id,
                meter,
                period,
                aggregates=sum((v for s, v in windows.items() if s not in open_windows), ZERO),
                ledger_usage=Decimal(
                    sum((v for (m, s), v in usage.items() if m == meter and s not in open_windows), ZERO)
                ),
                delivered=_sum(reports, meter, "delivered", open_windows, level),
                pending=_sum(reports, meter, "pending", open_windows, level),
                linked=bool(stripe_id),
                open=sum((v for s, v in windows.items() if s in open_windows), ZERO),
                superseded=_sum(reports, meter, "superseded", None, level),
            )
            if level:
                # A level that changed after a cancel, with no subscription since: held, not at Stripe.
                if cover.canceled_in(period) and line.ledger_usage > line.delivered:
                    line.held = line.ledger_usage - line.delivered
            else:
                line.held = Decimal(
                    sum(
                        (v for (m, s), v in usage.items()
                         if m == meter and (m, s) in uncovered and s not in open_windows),
                        ZERO,
                    )
                )  # fmt: skip
            if stripe_id and gateway is not None and meter in stripe_meters:
                total = Decimal(
                    gateway.meter_event_total(
                        stripe_meters[meter], stripe_id, period.start_ms // 1000, period.end_ms // 1000
                    )
                )
                # What Stripe holds for windows still open is compared on a later run.
                # The canceled subscription's copy of re-sent usage (superseded) is held by Stripe too.
                total_billable = total - line.superseded
                line.stripe = (
                    total
                    if level
                    else total_billable - _sum(reports, meter, "delivered", None, level, open_windows)
                )
                if level and open_windows:
                    line.stripe = line.delivered
                if meter in amounts and price is not None:
                    # plg's calculator on the quantity Stripe's line bills: the prices must agree to the
                    # cent (the quantity itself is the `stripe` column's business).
                    line.stripe_amount, billed = amounts[meter]
                    if billed is not None:
                        line.unbilled = total_billable - billed
                    priced = price.meters.get(meter)
                    units_meter = meter
                    if meter in packages:  # the line bills packages: plg prices their units
                        units_meter, size = packages[meter]
                        priced = price.meters.get(units_meter)
                        billed = (billed if billed is not None else total) * size
                    quantity = billed if billed is not None else total
                    # Top-up units are used first (plg's invoice does the same).
                    quantity -= min(credits.get(units_meter, ZERO), quantity)
                    line.plg_amount = (
                        round_money(
                            usage_charge(priced, quantity),
                            price.minor_unit,
                            price.rounding,
                        )
                        if priced is not None
                        else ZERO
                    )
            if (
                line.aggregates
                or line.ledger_usage
                or line.delivered
                or line.pending
                or line.stripe
                or line.open
            ):
                lines.append(line)
    return lines


def stripe_line_amounts(
    conn: psycopg.Connection[Any], gateway: StripeGateway, customer_id: str, stripe_customer_id: str,
    period: Period, now_ms: int, minor_unit: int,
) -> dict[str, tuple[Decimal, Decimal | None]]:  # fmt: skip
    """meter → (amount, quantity) that Stripe's invoices bill for ``period``: every metered line of the
    customer's invoices whose period ends inside it (a subscription's first period starts when it did, a
    canceled one's final invoice, if it wrote one, ends at the cancel), added up, plus the preview of the
    running period of a subscription that is not canceled. Empty without a Stripe subscription. Lines of
    every subscription of the customer count: a period billed on two invoices is billed twice."""
    row = conn.execute(
        "SELECT stripe_subscription_id, status FROM subscriptions WHERE customer_id = %s", (customer_id,)
    ).fetchone()
    if row is None or not row[0]:
        return {}
    meters = metered_prices(conn, gateway.account())
    try:
        invoices = gateway.list_invoices(stripe_customer_id)
        if period.contains(now_ms) and row[1] != "canceled":
            invoices.append(gateway.preview_invoice(stripe_customer_id, str(row[0])))
    except stripe.InvalidRequestError as exc:
        # Stripe does not know the subscription (another account, deleted): no invoice to compare.
        log.warning("no Stripe invoice for %s: %s", customer_id, exc.user_message or exc)
        return {}
    start_s, end_s = period.start_ms // 1000, period.end_ms // 1000
    out: dict[str, tuple[Decimal, Decimal | None]] = {}
    for invoice in invoices:
        for line in (invoice.get("lines") or {}).get("data") or []:
            price_id = ((line.get("pricing") or {}).get("price_details") or {}).get("price")
            end = (line.get("period") or {}).get("end")
            if price_id in meters and isinstance(end, int) and start_s < end <= end_s:
                quantity = line.get("quantity")
                # What Stripe charges for the line: its amount less the billing credits it used (top-ups).
                credited = sum(int(c["amount"]) for c in line.get("pretax_credit_amounts") or [])
                amount = Decimal(int(line["amount"]) - credited).scaleb(-minor_unit)
                units = None if quantity is None else Decimal(int(quantity))
                meter = meters[price_id]
                if meter in out:
                    before, billed = out[meter]
                    amount += before
                    units = None if units is None or billed is None else units + billed
                out[meter] = (amount, units)
    return out


def _packages(total: Decimal, size: Decimal) -> Decimal:
    return (Decimal(total) / size).to_integral_value(rounding=ROUND_CEILING)


def linked_level_open(last_change_ms: int, due: Due, now_ms: int) -> bool:
    """A level that changed within its reporting interval (plus the settle delay) is not due yet."""
    return last_change_ms + due.level_ms + due.settle_ms > now_ms


def _last_changes(
    conn: psycopg.Connection[Any], ledger: str, customer_id: str, period: Period
) -> dict[tuple[str, int], int]:
    """(meter, window start) → when the ledger last saw its aggregate change (epoch ms)."""
    rows = conn.execute(
        "SELECT meter, window_start, updated_at FROM billing_usage WHERE ledger = %s AND customer_id = %s"
        " AND window_start >= %s AND window_start < %s",
        (ledger, customer_id, period.start_ms, period.end_ms),
    ).fetchall()
    out: dict[tuple[str, int], int] = {}
    for meter, start, updated in rows:
        key = (meter, int(start))
        out[key] = max(out.get(key, 0), int(updated))
    return out


Reports = dict[tuple[str, str, int], list[tuple[int, Decimal]]]


def _reports(
    conn: psycopg.Connection[Any], ledger: str, customer_id: str, period: Period, levels: Collection[str]
) -> Reports:
    """(meter, status, window start) → its reports' (revision, quantity), oldest revision first. A sum
    meter's delivered report that a new subscription's report of the same window replaced (the ledger's
    _SUPERSEDED_SUM: held by a canceled subscription that billed it on no invoice) is ``superseded``."""
    out: Reports = {}
    rows = conn.execute(
        "SELECT b.meter, b.status, b.window_start, b.revision, b.quantity, COALESCE(b.event_at IS NOT NULL"
        " AND s.usage_from IS NOT NULL AND s.started_at IS NOT NULL AND b.window_start >= s.usage_from"
        " AND b.event_at < extract(epoch FROM s.started_at), false)"
        " FROM billing_reports b LEFT JOIN subscriptions s ON s.customer_id = b.customer_id"
        " WHERE b.ledger = %s AND b.customer_id = %s AND b.window_start >= %s AND b.window_start < %s"
        " ORDER BY b.meter, b.revision",
        (ledger, customer_id, period.start_ms, period.end_ms),
    ).fetchall()
    for meter, status, start, revision, quantity, superseded in rows:
        if superseded and status == "delivered" and meter not in levels:
            status = "superseded"
        out.setdefault((meter, status, int(start)), []).append((int(revision), Decimal(quantity)))
    return out


def _sum(
    reports: Reports, meter: str, status: str, excluded: Collection[int] | None, level: bool,
    only: Collection[int] | None = None,
) -> Decimal:  # fmt: skip
    """What the ledger says Stripe has (or is still to get): the sum of differences for a sum meter, the
    latest level for a level meter; windows in ``excluded`` left out, or only those in ``only``."""
    total = ZERO
    for (m, st, start), revisions in reports.items():
        if m != meter or st != status:
            continue
        if (excluded is not None and start in excluded) or (only is not None and start not in only):
            continue
        if level:
            total = max(revisions)[1]
        else:
            total += sum((q for _, q in revisions), ZERO)
    return total


@dataclass
class AdjustmentLine:
    """An adjustment of a closed period (late usage) as plg bills it and as Stripe holds it."""

    customer_id: str
    meter: str
    corrects: Period
    target_start_ms: int
    amount: Decimal
    usage_before: Decimal
    usage_after: Decimal
    stripe_status: str  # pending | sent | not_at_stripe
    stripe_kind: str | None = None
    stripe_id: str | None = None
    stripe_amount: Decimal | None = None  # the invoice item's amount, or minus the credit note's

    @property
    def agrees(self) -> bool:
        if self.stripe_status == "not_at_stripe":
            return True  # no Stripe subscription: plg's invoice is the only one
        return self.stripe_status == "sent" and self.stripe_amount == self.amount

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "adjustment",
            "customer_id": self.customer_id,
            "meter": self.meter,
            "corrects_period_start": self.corrects.start.isoformat(),
            "on_invoice_of": ms_to_datetime(self.target_start_ms).isoformat(),
            "usage_before": str(self.usage_before),
            "usage_after": str(self.usage_after),
            "plg_amount": str(self.amount),
            "stripe_status": self.stripe_status,
            "stripe_kind": self.stripe_kind,
            "stripe_id": self.stripe_id,
            "stripe_amount": None if self.stripe_amount is None else str(self.stripe_amount),
            "agrees": self.agrees,
        }


def reconcile_adjustments(
    conn: psycopg.Connection[Any], *, ledger: str, gateway: StripeGateway | None,
    customer: str | None = None, month: str | None = None, now_ms: int | None = None,
) -> list[AdjustmentLine]:  # fmt: skip
    """Adjustments that correct the period or are billed on its invoice (each customer's period starting
    in ``month``, or the current one), with Stripe's object read back (its amount must be plg's)."""
    now_ms = now_ms or int(time.time() * 1000)
    anchors = dict(conn.execute("SELECT customer_id, billing_anchor_day FROM customers").fetchall())
    out: list[AdjustmentLine] = []
    for row in adjustment_rows(conn, ledger, customer, None):
        anchor = anchors.get(row["customer_id"], 1)
        period = period_of(month, anchor, now_ms)
        if period.start_ms not in (int(row["period_start"]), int(row["target_period_start"])):
            continue
        corrected = billing_period(int(row["period_start"]), anchor)
        line = AdjustmentLine(
            row["customer_id"], row["meter"], corrected, int(row["target_period_start"]),
            money(Decimal(row["amount"]), row["currency"]), plain(Decimal(row["usage_before"])),
            plain(Decimal(row["usage_after"])), row["stripe_status"], row["stripe_kind"], row["stripe_id"],
        )  # fmt: skip
        if gateway is not None and row["stripe_id"]:
            minor = CURRENCY_MINOR_UNITS.get(row["currency"], 2)
            if row["stripe_kind"] == "credit_note":
                note = gateway.retrieve_credit_note(row["stripe_id"])
                line.stripe_amount = -Decimal(int(note["total"])).scaleb(-minor)
            else:
                item = gateway.retrieve_invoice_item(row["stripe_id"])
                line.stripe_amount = Decimal(int(item["amount"])).scaleb(-minor)
            line.stripe_amount = money(line.stripe_amount, row["currency"])
        out.append(line)
    return out
