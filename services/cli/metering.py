"""``plg customers suspend|unsuspend|cost``: the abuse guard's manual controls and what each customer's
metering costs (docs/metering.md#abuse-guard, #cost-per-customer)."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from services.customers import suspension
from services.kernel.kafka import Consumer, TopicPartition
from services.kernel.reading import read_to_end
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, PlatformSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_EVENTS, USAGE_PERIODS, topic
from services.plans.periods import billing_period

# CPU per counted event of the aggregator with exactly-once, measured by `make bench-metering`
# (docs/metering.md#benchmark: 12.6-13.2 µs on the 2-core machine); --cpu-us-per-event overrides it.
CPU_US_PER_EVENT = 13.0


class Refused(Exception):
    """A problem the user can fix (the CLI prints it, exit 1)."""


def add_parsers(customers: Any) -> None:
    """Add the commands to ``plg customers``'s sub-parsers."""
    sus = customers.add_parser("suspend", help="suspend a customer: every feature refused (abuse guard)")
    sus.add_argument("customer_id")
    sus.add_argument("--reason", required=True, help="shown to the customer with how to appeal")
    sus.add_argument("--hours", type=float, help="lift it automatically after this (default: only by hand)")
    uns = customers.add_parser("unsuspend", help="lift a suspension")
    uns.add_argument("customer_id")
    uns.add_argument(
        "--exempt-hours",
        type=float,
        default=24.0,
        help="the guard does not suspend again automatically for this long (default 24)",
    )
    cost = customers.add_parser(
        "cost", help="events, stored bytes and metering CPU per customer, this period"
    )
    cost.add_argument("--plan", help="only customers on this plan (e.g. free)")
    cost.add_argument("--cpu-us-per-event", type=float, default=CPU_US_PER_EVENT)


COMMANDS = ("suspend", "unsuspend", "cost")


def run(args: argparse.Namespace, conn: psycopg.Connection[Any]) -> int:
    try:
        if args.command == "suspend":
            until = None if args.hours is None else datetime.now(UTC) + timedelta(hours=args.hours)
            suspension.suspend(conn, args.customer_id, reason=args.reason, by="plg-cli", until=until)
            _out(
                args,
                {
                    "customer_id": args.customer_id,
                    "suspended": True,
                    "reason": args.reason,
                    "suspended_until": until,
                },
            )
        elif args.command == "unsuspend":
            was = suspension.unsuspend(conn, args.customer_id, exempt_for=timedelta(hours=args.exempt_hours))
            _out(args, {"customer_id": args.customer_id, "suspended": False, "was_suspended": was})
        else:
            rows = cost_report(conn, plan=args.plan, cpu_us_per_event=args.cpu_us_per_event)
            _table(args, rows)
    except suspension.CustomerNotFound:
        raise Refused(f"no customer {args.customer_id!r}") from None
    return 0


def _out(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        print("  ".join(f"{k}={'-' if v is None else v}" for k, v in doc.items()))


@dataclass
class CustomerCost:
    customer_id: str
    plan: str
    period_start: str
    events: int
    stored_bytes: int
    cpu_seconds: float
    cpu_share_percent: float
    suspended: bool


_COLS = (
    "customer_id",
    "plan",
    "period_start",
    "events",
    "stored_bytes",
    "cpu_seconds",
    "cpu_share_percent",
    "suspended",
)


def _table(args: argparse.Namespace, rows: list[CustomerCost]) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps([asdict(r) for r in rows], option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = [[str(getattr(r, c)) for c in _COLS] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in table]) for i, c in enumerate(_COLS)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(_COLS, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    total = sum(r.cpu_seconds for r in rows)
    print(f"{len(rows)} customers, {sum(r.events for r in rows)} events, {total:.1f} CPU-s of metering")


def cost_report(
    conn: psycopg.Connection[Any],
    *,
    plan: str | None,
    cpu_us_per_event: float,
    kafka: KafkaSettings | None = None,
    registry: SchemaRegistrySettings | None = None,
    prefix: str | None = None,
    now: datetime | None = None,
) -> list[CustomerCost]:
    """Each customer's current billing period: events metered (the largest event count of its meters'
    period totals — every event is in at least one), stored bytes (those events at the mean size of a
    ``usage-events`` record, sampled from the topic's tail, kept as long as its retention) and metering CPU
    (events times the measured cost per event; share of all customers' events). From ``usage-periods``: the
    bounded topic of current periods, so the report costs the same however old the deployment is."""
    kafka = kafka or KafkaSettings()
    registry = registry or SchemaRegistrySettings()
    prefix = PlatformSettings().topic_prefix if prefix is None else prefix
    now = now or datetime.now(UTC)
    customers = {
        row[0]: (row[1], row[2], row[3])
        for row in conn.execute(
            "SELECT customer_id, plan, billing_anchor_day, suspended_at IS NOT NULL"
            " AND (suspended_until IS NULL OR suspended_until > now()) FROM customers"
        ).fetchall()
    }
    decoder = SchemaRegistry(registry).decoder()
    events: dict[str, int] = defaultdict(int)
    now_ms = int(now.timestamp() * 1000)
    name = topic(USAGE_PERIODS, prefix).name
    latest: dict[bytes, dict[str, Any]] = {}
    for record in read_to_end(kafka, name, 120.0, "plg-cli-cost"):
        key, value = record.key(), record.value()
        if key is None:
            continue
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = decoder.decode(value)
    for total in latest.values():
        known = customers.get(total["customer_id"])
        if known is None:
            continue
        current = billing_period(now_ms, known[1]).start_ms
        if total["window_start"] == current:
            c = total["customer_id"]
            events[c] = max(events[c], int(total["event_count"]))
    bytes_per_event = mean_record_bytes(kafka, topic(USAGE_EVENTS, prefix).name)
    everyone = sum(events.values()) or 1
    rows = []
    for customer_id, (customer_plan, anchor, suspended) in sorted(customers.items()):
        if plan is not None and customer_plan != plan:
            continue
        n = events.get(customer_id, 0)
        rows.append(
            CustomerCost(
                customer_id=customer_id,
                plan=customer_plan,
                period_start=datetime.fromtimestamp(billing_period(now_ms, anchor).start_ms / 1000, UTC)
                .isoformat()
                .replace("+00:00", "Z"),
                events=n,
                stored_bytes=round(n * bytes_per_event),
                cpu_seconds=round(n * cpu_us_per_event / 1e6, 3),
                cpu_share_percent=round(100 * n / everyone, 2),
                suspended=bool(suspended),
            )
        )
    rows.sort(key=lambda r: (-r.events, r.customer_id))
    return rows


def mean_record_bytes(kafka: KafkaSettings, name: str, sample: int = 1000) -> float:
    """Mean key + value size of the last ``sample`` records of each partition of ``name`` (0 when empty)."""
    reader = Consumer(kafka, None, client_id="plg-cli-cost-sample", fetch_wait_max_ms=10)
    try:
        tps = reader.assign_all([name])
        ends = reader.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
        reader.assign([TopicPartition(t, p, max(0, end - sample)) for (t, p), end in ends.items()])
        total = count = 0
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while not reader.caught_up(ends) and datetime.now(UTC) < deadline:
            for record in reader.consume(10_000, 0.2):
                total += len(record.key() or b"") + len(record.value() or b"")
                count += 1
        return total / count if count else 0.0
    finally:
        reader.close()
