"""``make bench-billing``: (1) the report phase — usage events for many customers and meters through
metering into the billing reporter and on to a Stripe double: how many Stripe calls it makes (it must be
O(customers x meters x windows), never per event: the ratio to events is printed), ledger rows written per
second, and the time from an aggregate's commit to its Stripe report (p50/p99).

Uses the stack named by ``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL``/``DATABASE_URL`` when all are
set, otherwise a private one. Steps: fresh topic prefix; ``--customers`` pro customers linked to Stripe;
``--events`` events (``api_call_made``, ``job_completed`` and ``storage_measured``: three meters; the
first two are reported as window differences and compared here, storage as its period level) with event
times over the last minutes; the aggregator and the reporter as processes (reporting window ``--window``,
MINUTE by default so windows close during the run; production reports hourly); the Stripe double in this
process (tests/stripe_double.py) with no faults and no rate limit, so the reporter's own budget (``--rps``)
is what paces it. Ends when the double's totals equal the usage-aggregates totals for every customer and
sum meter. (2) The close phase (``bench/billing_close.py``): period end → finalised, reconciled invoice
for ``--close-customers`` (1,000). ``--phase report|close`` runs one of them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import time
import uuid
from decimal import Decimal
from typing import Any

import psycopg

from bench import billing_close
from bench.common import (
    StackInfo,
    counter_values,
    cpu_seconds,
    delete_topics,
    load_average,
    pct,
    service,
    stack,
)
from services.devstack.config import free_port
from services.kernel.db import migrate
from services.kernel.kafka import Consumer, Producer, TopicPartition
from services.kernel.provision import provision_all
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_AGGREGATES, USAGE_EVENTS, topic
from tests.stripe_double import StripeDouble

REPORTED = ("api_requests", "compute_seconds")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.billing", description=__doc__)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--customers", type=int, default=1_000)
    p.add_argument("--minutes", type=int, default=10, help="event times spread over this many past minutes")
    p.add_argument("--window", default="MINUTE", choices=["MINUTE", "HOUR"])
    p.add_argument("--rps", type=float, default=1000.0, help="the reporter's Stripe requests/s budget")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for Stripe to agree")
    p.add_argument(
        "--phase",
        default="all",
        choices=["all", "report", "close"],
        help="report: events -> Stripe meter events; close: period end -> finalised, reconciled invoices"
        " (bench/billing_close.py); all: both",
    )
    p.add_argument("--close-customers", type=int, default=1_000, help="customers of the close phase")
    return p.parse_args()


def event(rng: random.Random, customer: str, ts: int) -> dict[str, Any]:
    kind = rng.randrange(3)
    name, props = (
        ("api_call_made", {"path": "/v1/things"}),
        ("job_completed", {"duration_seconds": rng.randrange(1, 30), "region": rng.choice(["eu", "us"])}),
        ("storage_measured", {"gb": rng.randrange(1, 100)}),
    )[kind]
    return {
        "event_id": str(uuid.uuid4()), "customer_id": customer, "name": name, "timestamp": ts,
        "properties": props, "user_id": None, "anonymous_id": None, "session_id": None, "ingest": None,
    }  # fmt: skip


def aggregate_totals(
    kafka: KafkaSettings, sr: SchemaRegistry, prefix: str, window: str
) -> dict[tuple[str, str], Decimal]:
    decoder = sr.decoder()
    reader = Consumer(kafka, None, client_id="bench-billing-reader", fetch_wait_max_ms=10)
    latest: dict[bytes, tuple[str, str, Decimal]] = {}
    try:
        tps = reader.assign_all([topic(USAGE_AGGREGATES, prefix).name])
        ends = reader.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
        while not reader.caught_up(ends):
            for r in reader.consume(10_000, 0.2):
                v = r.value()
                if v is None:
                    continue
                d = decoder.decode(v)
                if d["granularity"] == window and not d["group"] and d["meter"] in REPORTED:
                    latest[r.key() or b""] = (d["customer_id"], d["meter"], d["value"])
    finally:
        reader.close()
    totals: dict[tuple[str, str], Decimal] = {}
    for c, m, amount in latest.values():
        totals[(c, m)] = totals.get((c, m), Decimal(0)) + amount.to_integral_value(rounding="ROUND_FLOOR")
    return totals


def main() -> int:
    args = parse_args()
    with stack() as st:
        if args.phase in ("all", "report"):
            report_phase(args, st)
        if args.phase in ("all", "close"):
            billing_close.run(st.database, args.close_customers)
    return 0


def report_phase(args: argparse.Namespace, st: StackInfo) -> None:
    load_before = load_average()
    kafka, registry = KafkaSettings(bootstrap_servers=st.kafka), SchemaRegistrySettings(url=st.registry)
    migrate(st.database)
    prefix = f"benchbill{uuid.uuid4().hex[:6]}-"
    created, _ = provision_all(kafka, registry, prefix=prefix)
    customers = [f"bb-{prefix}{i}" for i in range(args.customers)]
    with psycopg.connect(st.database, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO customers (customer_id, plan, stripe_customer_id) VALUES (%s, 'pro', %s)",
            [(c, f"cus_{c}") for c in customers],
        )
        # Subscribed: only a customer with a Stripe subscription is reported (docs/billing.md "Windows").
        cur.executemany(
            "INSERT INTO subscriptions (customer_id, plan, status, stripe_customer_id,"
            " stripe_subscription_id) VALUES (%s, 'pro', 'active', %s, %s)",
            [(c, f"cus_{c}", f"sub_{c}") for c in customers],
        )
    double = StripeDouble().serve()
    sr = SchemaRegistry(registry)
    spec = topic(USAGE_EVENTS, prefix)
    assert spec.schema_path is not None
    encoder = sr.encoder(spec.value_subject, spec.schema_path, auto_register=False)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": st.kafka, "SCHEMA_REGISTRY_URL": st.registry,
        "DATABASE_URL": st.database,
        "PLG_TOPIC_PREFIX": prefix, "PLG_LOG_LEVEL": "WARNING",
        "STRIPE_API_BASE": double.url, "STRIPE_API_KEY": "sk_test_bench",
        "BILLING_REPORT_GRANULARITY": args.window, "BILLING_SETTLE_SECONDS": "5",
        "BILLING_CORRECTION_INTERVAL_SECONDS": "30", "BILLING_PLAN_INTERVAL_SECONDS": "1",
        "BILLING_REQUESTS_PER_SECOND": str(args.rps), "BILLING_SEND_BATCH": "500",
    }  # fmt: skip
    agg_port, rep_port = free_port(), free_port()
    producer = Producer(kafka, client_id="bench-billing")
    rng = random.Random(5)
    now = int(time.time() * 1000)
    span_ms = args.minutes * 60_000
    print(f"producing {args.events:,} events for {args.customers:,} customers x 3 meters ...")
    t0 = time.monotonic()
    for i in range(args.events):
        c = customers[rng.randrange(len(customers))]
        ts = now - span_ms + (i * span_ms) // args.events
        producer.produce(spec.name, encoder.encode(event(rng, c, ts)), c)
    assert producer.flush(300) == 0
    print(f"  produced in {time.monotonic() - t0:.1f} s")
    started = time.monotonic()
    with (
        service(
            "services.metering_aggregator",
            {**env, "METERING_PORT": str(agg_port)},
            agg_port,
            "aggregator",
        ) as agg,
        service(
            "services.billing_reporter", {**env, "BILLING_PORT": str(rep_port)}, rep_port, "reporter"
        ) as rep,
    ):
        deadline = time.monotonic() + args.timeout
        # (time, aggregates the reporter processed), from the reporter's start
        samples: list[tuple[float, float]] = [(started, 0.0)]
        while True:
            time.sleep(5)
            processed = counter_values(rep_port, "plg_stream_records_total", "outcome").get("processed", 0.0)
            samples.append((time.monotonic(), processed))
            want = aggregate_totals(kafka, sr, prefix, args.window)
            got = {(cus[4:], m): Decimal(v) for (cus, m), v in double.totals().items() if m in REPORTED}
            agreed = sum(1 for k, v in want.items() if got.get(k) == v)
            elapsed = time.monotonic() - started
            print(f"  {elapsed:6.0f} s: {agreed}/{len(want)} customer-meters agree at Stripe")
            if want and agreed == len(want) and len(got) == len(want):
                break
            if time.monotonic() > deadline:
                print("  timed out before Stripe agreed")
                break
        took = time.monotonic() - started
        agg_cpu, rep_cpu = cpu_seconds(agg.pid), cpu_seconds(rep.pid)
    with psycopg.connect(st.database) as conn:
        rows = conn.execute(
            "SELECT r.identifier, extract(epoch FROM r.created_at)::float8,"
            " u.updated_at / 1000.0::float8, r.revision"
            " FROM billing_reports r JOIN billing_usage u ON u.ledger = r.ledger"
            " AND u.customer_id = r.customer_id AND u.meter = r.meter AND u.granularity = %s"
            " AND u.window_start = r.window_start"
            " WHERE r.ledger = %s",
            (args.window, f"{prefix}billing-reporter"),
        ).fetchall()
        ledger_rows = conn.execute(
            "SELECT count(*) FROM billing_reports WHERE ledger = %s", (f"{prefix}billing-reporter",)
        ).fetchone()
    calls = double.stats.requests
    # Usage reporting's calls, and the one-off set-up (meters, products, prices at the reporter's start).
    event_calls = double.stats.by_path.get("POST /v1/billing/meter_events", 0)
    setup_calls = calls - event_calls
    accepted = double.accepted_at
    planned_to_stripe, commit_to_stripe = [], []
    for ident, planned_at, updated, _rev in rows:
        if ident in accepted:
            planned_to_stripe.append(accepted[ident] - planned_at)
            # The window's latest aggregate predates this report only for its last revision.
            if float(updated) <= planned_at:
                commit_to_stripe.append(accepted[ident] - float(updated))
    # The ledger writer's pace: aggregates consumed into the ledger per second, best 5-s interval.
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples)]
    ledger_rate = max(rates, default=0.0)
    aggregates_seen = samples[-1][1] if samples else 0.0
    print(
        f"\nbilling bench ({args.events:,} events, {args.customers:,} customers, window {args.window}, "
        f"load {load_before} -> {load_average()}):\n"
        f"  Stripe calls: {calls:,} for {args.events:,} events (ratio {calls / args.events:.5f}; "
        f"{len(accepted):,} meter events accepted; {ledger_rows[0] if ledger_rows else 0:,} ledger rows,"
        f" of them {len(rows):,} for sum meters)\n"
        f"  Stripe calls per customer-period: {event_calls / max(1, args.customers):.2f} meter events"
        f" (one billing period, {args.minutes} min of event time in {args.window} windows; plus"
        f" {setup_calls:,} set-up and summary calls once: meters, catalog, reconciliation)\n"
        f"  all customers and meters agreed at Stripe after {took:.0f} s\n"
        f"  ledger writer: {aggregates_seen:,.0f} aggregates consumed (every granularity and group), best"
        f" {ledger_rate:,.0f} aggregates/s into the ledger in one transaction with their offsets\n"
        f"  aggregate commit -> Stripe report (sum meters): p50 {pct(commit_to_stripe, 50):.1f} s,"
        f" p99 {pct(commit_to_stripe, 99):.1f} s"
        f" (includes the window closing and the {env['BILLING_SETTLE_SECONDS']} s settle)\n"
        f"  ledger row -> Stripe report: p50 {pct(planned_to_stripe, 50) * 1000:.0f} ms, "
        f"p99 {pct(planned_to_stripe, 99) * 1000:.0f} ms\n"
        f"  CPU: aggregator {agg_cpu:.1f} s, reporter {rep_cpu:.1f} s"
    )
    double.close()
    producer.close()
    delete_topics(kafka, created)


if __name__ == "__main__":
    raise SystemExit(main())
