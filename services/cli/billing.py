"""``plg billing sync-catalog``, ``sync-meters`` and ``reconcile``; ``plg customers create --stripe`` links a
new customer to a Stripe customer it creates. Stripe is reached with ``STRIPE_API_BASE`` /
``STRIPE_API_KEY`` (docs/billing.md), only through the billing reporter's gateway."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import stripe

from services.billing_reporter import previews
from services.billing_reporter.app import WINDOW_SECONDS, level_meters, reportable_meters
from services.billing_reporter.catalog import CatalogError, package_meters, sync_catalog
from services.billing_reporter.config import BillingSettings
from services.billing_reporter.meters import sync_meters
from services.billing_reporter.reconcile import Due, read_aggregates, reconcile, reconcile_adjustments
from services.billing_reporter.stripe_gateway import StripeGateway
from services.plans.loader import ConfigError, load_config
from services.plans.model import PlansConfig


def add_parser(groups: Any) -> None:
    billing = groups.add_parser("billing", help="billing: Stripe meters, reconciliation").add_subparsers(
        dest="command", required=True
    )
    billing.add_parser("sync-meters", help="create the Stripe meter of every billed plg meter if missing")
    billing.add_parser(
        "sync-catalog",
        help="create the Stripe meters, products and prices of the whole price book if missing (idempotent)",
    )
    pre = billing.add_parser(
        "preview", help="a customer's invoice for a period on another plan or price version (real usage)"
    )
    pre.add_argument("customer")
    pre.add_argument("--plan", required=True)
    pre.add_argument("--version", help="a price version of the plan (default: the one in effect)")
    pre.add_argument("--period", help="the billing period starting in this month, YYYY-MM (default: current)")
    sim = billing.add_parser(
        "simulate", help="revenue per plan and customer under a proposed price book against the current one"
    )
    sim.add_argument("--price-book", required=True, type=Path, help="the proposed meters-and-plans file")
    sim.add_argument("--period", help="the billing period starting in this month, YYYY-MM (default: current)")
    rec = billing.add_parser(
        "reconcile", help="compare usage-aggregates, the ledger and Stripe; exit 1 when they differ"
    )
    rec.add_argument("--customer", help="only this customer")
    rec.add_argument("--period", help="the billing period starting in this month, YYYY-MM (default: current)")
    rec.add_argument("--no-stripe", action="store_true", help="compare aggregates and the ledger only")
    rec.add_argument("--all", action="store_true", help="print rows that agree too")


def gateway(settings: BillingSettings) -> StripeGateway:
    return StripeGateway(
        settings.stripe.api_base, settings.stripe.api_key, timeout=settings.stripe.timeout_seconds
    )


def create_stripe_customer(customer_id: str, name: str | None) -> str:
    """The Stripe customer of a new plg customer (idempotent per plg id: a retried create links the same)."""
    return gateway(BillingSettings()).create_customer(
        customer_id=customer_id, name=name, idempotency_key=f"plg_customer_{customer_id}"
    )


def _what_if(
    args: argparse.Namespace, conn: psycopg.Connection[Any], config: PlansConfig, ledger: str
) -> int:
    now_ms = int(time.time() * 1000)
    try:
        if args.command == "preview":
            who = previews.account(conn, args.customer)
            if who is None:
                print(f"error: no customer {args.customer!r}", file=sys.stderr)
                return 1
            invoice = previews.preview(
                conn, ledger, config, who, args.plan, args.version, args.period, now_ms
            )
            if args.json:
                sys.stdout.write(orjson.dumps(invoice.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
                return 0
            period = f"{invoice.period.start:%Y-%m-%d} to {invoice.period.end:%Y-%m-%d}"
            plan = f"{invoice.plan} ({invoice.price_version})"
            print(f"{invoice.customer_id} on {plan}, {period}, {invoice.currency}")
            for line in invoice.lines:
                usage = f"  usage {line.usage}" if line.kind == "usage" else ""
                print(f"  {line.description:40} {line.amount:>12}{usage}")
            print(f"  {'subtotal':40} {invoice.subtotal:>12}\n  {'tax':40} {invoice.tax.amount:>12}")
            print(f"  {'total':40} {invoice.total:>12}")
            return 0
        try:
            proposed = load_config(args.price_book)
        except (ConfigError, OSError) as exc:
            print(f"error: the proposed price book: {exc}", file=sys.stderr)
            return 1
        result = previews.simulate(conn, ledger, config, proposed, args.period, now_ms)
    except previews.PreviewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"{'PLAN':12} {'CUSTOMERS':>9} {'CURRENT':>14} {'PROPOSED':>14} {'CHANGE':>14}")
    for plan, r in sorted(result.plans.items()):
        print(f"{plan:12} {r.customers:>9} {r.current:>14} {r.proposed:>14} {r.change:>14}")
    total = result.to_dict()["total"]
    print(f"{'total':12} {'':>9} {total['current']:>14} {total['proposed']:>14}")
    for c in result.customers:
        if c["change"] not in ("0", "0.00"):
            print(f"  {c['customer_id']:24} {c['plan']:12} {c['current']:>12} -> {c['proposed']:>12}")
    if result.not_priced:
        print(f"not in the proposed book: {', '.join(result.not_priced)}", file=sys.stderr)
    return 0


def due_after(settings: BillingSettings) -> Due:
    """When the reporter sends what it counted: after the settle delay and its next planning pass."""
    level = settings.level_interval_seconds
    return Due(
        settle_ms=int((settings.settle_seconds + settings.plan_interval_seconds) * 1000),
        correction_ms=int(settings.correction_interval_seconds * 1000),
        level_ms=int((WINDOW_SECONDS[settings.report_granularity] if level is None else level) * 1000),
    )


def run(args: argparse.Namespace, conn: psycopg.Connection[Any]) -> int:
    settings = BillingSettings()
    config = load_config(settings.config_path)
    events = reportable_meters(config)
    try:
        if args.command in ("preview", "simulate"):
            return _what_if(args, conn, config, f"{settings.platform.topic_prefix}{settings.group_id}")
        if args.command == "sync-catalog":
            try:
                prices = sync_catalog(gateway(settings), conn, config, events, level_meters(config))
            except CatalogError as exc:
                print(f"error: the price book cannot be expressed at Stripe: {exc}", file=sys.stderr)
                return 1
            if args.json:
                sys.stdout.write(orjson.dumps(prices).decode() + "\n")
            for p in prices if not args.json else ():
                exact = "" if p.exact else "  (inexact: docs/billing.md)"
                print(f"{p.lookup_key:40} {p.stripe_price_id:32} {p.action}{exact}")
            return 0
        if args.command == "sync-meters":
            synced = sync_meters(gateway(settings), conn, events, level_meters(config))
            if args.json:
                sys.stdout.write(orjson.dumps(synced).decode() + "\n")
            for s in synced if not args.json else ():
                print(f"{s.meter:20} {s.event_name:20} {s.stripe_meter_id:32} {s.action}")
            return 0
        aggregates = read_aggregates(
            settings.kafka, settings.registry, settings.platform.topic_prefix, settings.report_granularity
        )
        lines = reconcile(
            conn,
            aggregates,
            ledger=f"{settings.platform.topic_prefix}{settings.group_id}",
            granularity=settings.report_granularity,
            meters=events,
            levels=level_meters(config),
            gateway=None if args.no_stripe else gateway(settings),
            customer=args.customer,
            month=args.period,
            due=due_after(settings),
            config=config,
            packages=package_meters(config),
        )
        adjustments = reconcile_adjustments(
            conn,
            ledger=f"{settings.platform.topic_prefix}{settings.group_id}",
            gateway=None if args.no_stripe else gateway(settings),
            customer=args.customer,
            month=args.period,
        )
    except stripe.StripeError as exc:
        print(f"error: Stripe: {exc.user_message or type(exc).__name__}", file=sys.stderr)
        return 1
    differing = [ln for ln in lines if not ln.agrees]
    shown = lines if args.all else differing
    # Adjustments (late usage after a closed invoice) are always shown: each is an event worth seeing.
    adjusting = [a for a in adjustments if not a.agrees]
    if args.json:
        rows_out = [ln.to_dict() for ln in shown] + [a.to_dict() for a in adjustments]
        sys.stdout.write(orjson.dumps(rows_out, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        cols = (
            "customer_id",
            "meter",
            "period_start",
            "aggregates",
            "ledger_usage",
            "delivered",
            "pending",
            "stripe",
            "open",
            "stripe_amount",
            "plg_amount",
            "unbilled",
            "superseded",
            "held",
        )
        rows = [[str(ln.to_dict()[c] if ln.to_dict()[c] is not None else "-") for c in cols] for ln in shown]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
        if rows:
            print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
            for r in rows:
                print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        if adjustments:
            print("ADJUSTMENTS (late usage after a closed invoice; billed on the next one)")
            for a in adjustments:
                d = a.to_dict()
                print(
                    f"  {d['customer_id']}  {d['meter']}  corrects {d['corrects_period_start'][:10]}"
                    f"  on {d['on_invoice_of'][:10]}  usage {d['usage_before']} -> {d['usage_after']}"
                    f"  plg {d['plg_amount']}  stripe {d['stripe_amount'] or '-'}"
                    f" ({d['stripe_kind'] or d['stripe_status']})  {'ok' if a.agrees else 'DIFFERS'}"
                )
        print(
            f"{len(lines)} customer/meter rows compared, {len(differing)} differ;"
            f" {len(adjustments)} adjustments, {len(adjusting)} differ",
            file=sys.stderr,
        )
    return 1 if differing or adjusting else 0
