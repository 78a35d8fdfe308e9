"""Reconciliation: what metering counted (``usage-aggregates``), what the ledger holds and what Stripe
was sent, per customer and meter for one billing period, in whole units (what Stripe can hold).

``plg billing reconcile [--customer C] [--period YYYY-MM]`` prints every row that differs and exits 1 if
any does. Pending reports (not delivered yet) count as a difference: the run is a statement about now.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import psycopg

from services.billing_reporter.stripe_gateway import StripeGateway
from services.kernel.reading import read_to_end
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_AGGREGATES, topic
from services.plans.periods import Period, billing_period, datetime_to_ms

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
    linked: bool = True  # has a Stripe customer: its usage is reported

    @property
    def agrees(self) -> bool:
        if not self.linked:  # not billed on Stripe: nothing may have been reported
            return self.aggregates == self.ledger_usage and self.delivered == self.pending == 0
        same = self.aggregates == self.ledger_usage == self.delivered and self.pending == 0
        return same and (self.stripe is None or self.stripe == self.delivered)

    def to_dict(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "meter": self.meter,
            "period_start": self.period.start.isoformat(),
            "aggregates": str(self.aggregates),
            "ledger_usage": str(self.ledger_usage),
            "delivered": str(self.delivered),
            "pending": str(self.pending),
            "stripe": None if self.stripe is None else str(self.stripe),
            "linked": self.linked,
            "agrees": self.agrees,
        }


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
) -> list[Line]:
    """Sum meters compare window totals and delivered differences; level meters (``levels``) compare the
    period's value with the last delivered level (what Stripe's ``last`` meter holds)."""
    now_ms = now_ms or int(time.time() * 1000)
    wanted = sorted(meters)
    customers = conn.execute(
        "SELECT customer_id, billing_anchor_day, stripe_customer_id FROM customers"
        + (" WHERE customer_id = %s" if customer else "")
        + " ORDER BY customer_id",
        (customer,) if customer else (),
    ).fetchall()
    stripe_meters = dict(conn.execute("SELECT meter, stripe_meter_id FROM billing_stripe_meters").fetchall())
    lines: list[Line] = []
    for customer_id, anchor, stripe_id in customers:
        period = period_of(month, anchor, now_ms)
        usage = dict(
            conn.execute(
                "SELECT meter, sum(floor(value)) FROM billing_usage WHERE ledger = %s AND customer_id = %s"
                " AND ((granularity = %s AND meter <> ALL(%s)) OR (granularity = %s AND meter = ANY(%s)))"
                " AND window_start >= %s AND window_start < %s GROUP BY 1",
                (ledger, customer_id, granularity, list(levels), PERIOD, list(levels),
                 period.start_ms, period.end_ms),
            ).fetchall()
        )  # fmt: skip
        reports = _reports(conn, ledger, customer_id, period, levels)
        for meter in wanted:
            level = meter in levels
            counted = sum(
                (
                    whole(v)
                    for (c, m, g, s), v in aggregates.items()
                    if c == customer_id and m == meter and g == (PERIOD if level else granularity)
                    and period.contains(s)
                ),
                ZERO,
            )  # fmt: skip
            line = Line(
                customer_id,
                meter,
                period,
                aggregates=counted,
                ledger_usage=Decimal(usage.get(meter) or 0),
                delivered=reports.get((meter, "delivered"), ZERO),
                pending=reports.get((meter, "pending"), ZERO),
                linked=bool(stripe_id),
            )
            if stripe_id and gateway is not None and meter in stripe_meters:
                line.stripe = Decimal(
                    gateway.meter_event_total(
                        stripe_meters[meter], stripe_id, period.start_ms // 1000, period.end_ms // 1000
                    )
                )
            if line.aggregates or line.ledger_usage or line.delivered or line.pending or line.stripe:
                lines.append(line)
    return lines


def _reports(
    conn: psycopg.Connection[Any], ledger: str, customer_id: str, period: Period, levels: Collection[str]
) -> dict[tuple[str, str], Decimal]:
    """(meter, status) → what the ledger says Stripe has: the sum of differences for sum meters, the
    latest level for level meters (pending: the level still to deliver)."""
    out: dict[tuple[str, str], Decimal] = {}
    rows = conn.execute(
        "SELECT meter, status, revision, quantity FROM billing_reports WHERE ledger = %s AND customer_id = %s"
        " AND window_start >= %s AND window_start < %s ORDER BY meter, revision",
        (ledger, customer_id, period.start_ms, period.end_ms),
    ).fetchall()
    for meter, status, _revision, quantity in rows:
        key = (meter, status)
        out[key] = Decimal(quantity) if meter in levels else out.get(key, ZERO) + Decimal(quantity)
    return out
