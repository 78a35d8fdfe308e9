"""``plg billing sync-catalog``, ``sync-meters`` and ``reconcile``; ``plg customers create --stripe`` links a
new customer to a Stripe customer it creates. Stripe is reached with ``STRIPE_API_BASE`` /
``STRIPE_API_KEY`` (docs/billing.md), only through the billing reporter's gateway."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson
import psycopg
import stripe

from services.billing_reporter.app import WINDOW_SECONDS, level_meters, reportable_meters
from services.billing_reporter.catalog import CatalogError, sync_catalog
from services.billing_reporter.config import BillingSettings
from services.billing_reporter.meters import sync_meters
from services.billing_reporter.reconcile import Due, read_aggregates, reconcile
from services.billing_reporter.stripe_gateway import StripeGateway
from services.plans.loader import load_config


def add_parser(groups: Any) -> None:
    billing = groups.add_parser("billing", help="billing: Stripe meters, reconciliation").add_subparsers(
        dest="command", required=True
    )
    billing.add_parser("sync-meters", help="create the Stripe meter of every billed plg meter if missing")
    billing.add_parser(
        "sync-catalog",
        help="create the Stripe meters, products and prices of the whole price book if missing (idempotent)",
    )
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
        )
    except stripe.StripeError as exc:
        print(f"error: Stripe: {exc.user_message or type(exc).__name__}", file=sys.stderr)
        return 1
    differing = [ln for ln in lines if not ln.agrees]
    shown = lines if args.all else differing
    if args.json:
        sys.stdout.write(
            orjson.dumps([ln.to_dict() for ln in shown], option=orjson.OPT_INDENT_2).decode() + "\n"
        )
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
        )
        rows = [[str(ln.to_dict()[c] if ln.to_dict()[c] is not None else "-") for c in cols] for ln in shown]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
        if rows:
            print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
            for r in rows:
                print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        print(f"{len(lines)} customer/meter rows compared, {len(differing)} differ", file=sys.stderr)
    return 1 if differing else 0
