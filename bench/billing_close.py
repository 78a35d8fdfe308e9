"""The close phase of ``make bench-billing``: period end → finalised, reconciled invoice for N customers.

Set-up (not timed): N pro customers with Stripe customers and subscriptions at the Stripe emulator (in
this process, on a clock the bench moves), their periods aligned to plg's; each customer's usage of the
period (requests, compute seconds, a storage level; random) as the reporter leaves it — the ledger's
window and period rows, delivered reports — and the same usage at Stripe as meter events.

Timed, from the moment the period ends (the emulator's clock and the closer's ``now`` move past the period
end and plg's close grace together):

* **plg**: the period closer's round (``PeriodCloser.close_due``, with the adjuster) writes every
  customer's final invoice; each invoice's ``finalized_at`` against the period end gives its latency;
* **Stripe**: the emulator writes each subscription's invoice of the period (its once-a-second clock);
* **reconciled**: ``reconcile`` over every customer with Stripe's invoices (one list per customer and
  the meter summaries) — every line agreeing in quantity and money — and each plg total equal to
  Stripe's invoice total.

In-run raw baselines (same process, same database and emulator, same moment): one single-row insert
transaction per customer of its invoice document into a scratch table (the floor of writing N invoices
durably, one by one), and one Stripe list-invoices call per customer (the floor of reading Stripe back).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from decimal import Decimal
from typing import Any

from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from bench.common import load_average, pct
from services.billing_reporter.adjustments import Adjuster
from services.billing_reporter.app import level_meters, reportable_meters
from services.billing_reporter.catalog import package_meters, sync_catalog, version_prices
from services.billing_reporter.closing import PeriodCloser
from services.billing_reporter.reconcile import Due, reconcile
from services.billing_reporter.stripe_gateway import StripeGateway
from services.kernel.db import migrate
from services.plans.loader import load_config
from services.plans.periods import billing_period
from tests.stripe_double import StripeDouble

GRACE_MS = 2 * 3_600_000
KEY = {"authorization": "Bearer sk_test_bench"}


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _post(double: StripeDouble, path: str, form: dict[str, Any]) -> dict[str, Any]:
    status, body, _, _ = double.handle("POST", path, {}, form, KEY)
    assert status == 200, body
    return body


def run(database: str, customers: int, seed: int = 7) -> dict[str, float]:
    """The close phase against ``database``; prints its figures and returns them."""
    migrate(database)
    config = load_config()
    clock = Clock()
    double = StripeDouble(clock=clock).serve()
    gateway = StripeGateway(double.url, SecretStr("sk_test_bench"), timeout=60)
    prefix = f"benchclose{uuid.uuid4().hex[:6]}-"
    ledger = f"{prefix}billing-reporter"
    period = billing_period(int(time.time() * 1000), 1)
    window = int(time.time() * 1000) // 60_000 * 60_000 - 120_000
    rng = random.Random(seed)
    pool = ConnectionPool(database, min_size=1, max_size=4, open=True)
    print(f"close phase: setting up {customers:,} customers with Stripe subscriptions and usage ...")
    t_setup = time.monotonic()
    try:
        with pool.connection() as conn:
            sync_catalog(gateway, conn, config, reportable_meters(config), level_meters(config))
            prices = version_prices(conn, "pro-2025-06", gateway.account())
        events = reportable_meters(config)
        aggregates: dict[tuple[str, str, str, int], Decimal] = {}
        ids = [f"bc-{prefix}{i}" for i in range(customers)]
        customer_rows, sub_rows, usage_rows, report_rows = [], [], [], []
        for i, c in enumerate(ids):
            stripe_customer = _post(double, "/v1/customers", {"metadata": {"plg_customer_id": c}})["id"]
            sub = _post(
                double, "/v1/subscriptions",
                {"customer": stripe_customer, "items": [{"price": p} for p in prices.values()]},
            )  # fmt: skip
            state = double.billing.subscriptions[sub["id"]]
            state.update(billing_cycle_anchor=period.start_ms // 1000, _cycle=1)
            state["_period"] = (period.start_ms // 1000, period.end_ms // 1000)
            double.billing._sync_periods(state)
            customer_rows.append((c, stripe_customer))
            sub_rows.append((c, stripe_customer, sub["id"]))
            usage = {
                "api_requests": rng.randrange(0, 120_000),
                "compute_seconds": rng.randrange(0, 500_000),
                "storage_gb": rng.randrange(1, 160),
            }
            for meter, value in usage.items():
                level = meter == "storage_gb"
                granularity, start, end = (
                    ("BILLING_PERIOD", period.start_ms, period.end_ms)
                    if level
                    else ("MINUTE", window, window + 60_000)
                )
                ident = f"plg_bench_{prefix}{i}_{meter}"
                if not level:
                    usage_rows.append((ledger, c, meter, "MINUTE", window, window + 60_000, value))
                usage_rows.append((ledger, c, meter, "BILLING_PERIOD", period.start_ms, period.end_ms, value))
                aggregates[(c, meter, granularity, start)] = Decimal(value)
                aggregates[(c, meter, "BILLING_PERIOD", period.start_ms)] = Decimal(value)
                if value:
                    report_rows.append((ledger, c, meter, start, end, value, value, ident, stripe_customer))
                    _post(double, "/v1/billing/meter_events", {
                        "event_name": events[meter], "identifier": ident, "timestamp": str(window // 1000),
                        "payload": {"stripe_customer_id": stripe_customer, "value": str(value)},
                    })  # fmt: skip
            # The reporter also sends every compute user's started hours to the package meter (a level).
            for derived, (base, size) in package_meters(config).items():
                packages = -(-usage[base] // int(size))
                if packages:
                    ident = f"plg_bench_{prefix}{i}_{derived}"
                    report_rows.append(
                        (ledger, c, derived, period.start_ms, period.end_ms, packages, packages, ident,
                         stripe_customer)
                    )  # fmt: skip
                    _post(double, "/v1/billing/meter_events", {
                        "event_name": events[derived], "identifier": ident, "timestamp": str(window // 1000),
                        "payload": {"stripe_customer_id": stripe_customer, "value": str(packages)},
                    })  # fmt: skip
        with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO customers (customer_id, plan, stripe_customer_id, created_at)"
                " VALUES (%s, 'pro', %s, now() - interval '1 day')",
                customer_rows,
            )
            cur.executemany(
                "INSERT INTO subscriptions (customer_id, plan, status, stripe_customer_id,"
                " stripe_subscription_id) VALUES (%s, 'pro', 'active', %s, %s)",
                sub_rows,
            )
            cur.executemany(
                "INSERT INTO billing_usage (ledger, customer_id, meter, granularity, window_start,"
                " window_end, value, event_count, updated_at, dirty)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, 1, 0, false)",
                usage_rows,
            )
            cur.executemany(
                "INSERT INTO billing_reports (ledger, customer_id, meter, window_start, window_end, revision,"
                " quantity, window_total, identifier, stripe_customer_id, status, delivered_at)"
                " VALUES (%s, %s, %s, %s, %s, 0, %s, %s, %s, %s, 'delivered', now())",
                report_rows,
            )
        print(f"  set up in {time.monotonic() - t_setup:.1f} s")

        load_before = load_average()
        closer = PeriodCloser(
            pool, config, ledger=ledger, report_granularity="MINUTE", grace_ms=GRACE_MS,
            adjuster=Adjuster(pool, config, ledger=ledger, grace_ms=GRACE_MS, gateway=gateway),
        )  # fmt: skip
        # The period ends (and plg's close grace is over): both sides at once.
        clock.offset = (period.end_ms + GRACE_MS) / 1000 - time.time()
        ended_wall = time.time()
        t0 = time.monotonic()
        written = closer.close_due(period.end_ms + GRACE_MS + 1)
        plg_done = time.monotonic() - t0
        mine = [i for i in written if i.customer_id.startswith(f"bc-{prefix}")]
        stripe_customers = {s for _, s in customer_rows}

        def stripe_invoices() -> dict[str, dict[str, Any]]:
            return {
                inv["customer"]: inv
                for inv in list(double.billing.invoices.values())
                if inv["customer"] in stripe_customers and inv["period_end"] == period.end_ms // 1000
            }

        while len(stripe_invoices()) < customers and time.monotonic() - t0 < 600:
            time.sleep(0.2)
        stripe_done = time.monotonic() - t0
        with pool.connection() as conn:
            lines = reconcile(
                conn, aggregates, ledger=ledger, granularity="MINUTE", meters=events, gateway=gateway,
                levels=level_meters(config), month=period.start.strftime("%Y-%m"),
                now_ms=period.end_ms + GRACE_MS + 1, due=Due(), config=config,
                packages=package_meters(config),
            )  # fmt: skip
            finalized = conn.execute(
                "SELECT customer_id, extract(epoch FROM finalized_at)::float8, total FROM billing_invoices"
                " WHERE ledger = %s",
                (ledger,),
            ).fetchall()
        reconciled = time.monotonic() - t0
        mine_lines = [ln for ln in lines if ln.customer_id.startswith(f"bc-{prefix}")]
        differing = [ln for ln in mine_lines if not ln.agrees]
        by_stripe = stripe_invoices()
        totals_differ = sum(
            1
            for c, stripe_customer in customer_rows
            for doc in [next((f for f in finalized if f[0] == c), None)]
            if doc is None or Decimal(by_stripe[stripe_customer]["total"]).scaleb(-2) != Decimal(doc[2])
        )
        latencies = [at - ended_wall for _, at, _ in finalized]
        load_after = load_average()

        # In-run raw baselines.
        t1 = time.monotonic()
        with pool.connection() as conn:
            conn.execute("CREATE TEMP TABLE bench_raw_invoices (customer_id text PRIMARY KEY, invoice jsonb)")
            for inv in mine:
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO bench_raw_invoices VALUES (%s, %s)",
                        (inv.customer_id, json.dumps(inv.to_dict())),
                    )
        raw_writes = time.monotonic() - t1
        t2 = time.monotonic()
        for _, stripe_customer, sub_id in sub_rows:
            gateway.list_invoices(stripe_customer, sub_id)
        raw_reads = time.monotonic() - t2
        figures = {
            "customers": float(customers),
            "plg_s": plg_done,
            "stripe_s": stripe_done,
            "reconciled_s": reconciled,
            "p50": pct(latencies, 50),
            "p99": pct(latencies, 99),
            "raw_writes_s": raw_writes,
            "raw_reads_s": raw_reads,
        }
        print(
            f"\nperiod end -> finalised, reconciled invoice ({customers:,} pro customers, 3 meters each;"
            f" load {load_before} -> {load_after}):\n"
            f"  plg: {len(mine):,} final invoices in {plg_done:.1f} s ({len(mine) / plg_done:,.0f}/s);"
            f" period end -> invoice finalised p50 {figures['p50']:.2f} s, p99 {figures['p99']:.2f} s\n"
            f"  Stripe (emulator): {len(by_stripe):,} invoices of the period written {stripe_done:.1f} s"
            f" after it ended\n"
            f"  reconciled: {len(mine_lines):,} customer/meter lines against Stripe's invoices,"
            f" {len(differing)} differ; {customers - totals_differ:,}/{customers:,} invoice totals"
            f" equal Stripe's;"
            f" all done {reconciled:.1f} s after the period end"
            f" ({customers / max(reconciled - stripe_done, 1e-9):,.0f} customers/s reconciling)\n"
            f"  in-run raw: {customers:,} one-row insert transactions {raw_writes:.2f} s"
            f" ({customers / raw_writes:,.0f}/s; closing is {plg_done / raw_writes:.1f}x that),"
            f" {customers:,} Stripe invoice lists {raw_reads:.2f} s"
            f" ({customers / raw_reads:,.0f}/s; reconciling is"
            f" {(reconciled - stripe_done) / raw_reads:.1f}x that)"
        )
        if differing or totals_differ or len(mine) != customers:
            print("  NOT all reconciled:", [ln.to_dict() for ln in differing[:3]])
        return figures
    finally:
        pool.close()
        double.close()
