"""``plg customers update C --tax-region R [--tax-exempt yes|no] [--tax-id ID]``: a customer's tax
settings (seed 003: "store tax exemptions per customer entity"), stored through ``services/customers/tax.py``
and, for a customer with a Stripe customer, passed to Stripe first (``services/billing_reporter/taxes.py``):
when Stripe refuses (an invalid VAT number) or cannot be reached, nothing is stored and the command fails,
so plg and Stripe never disagree; running it again is safe."""

from __future__ import annotations

import argparse
from typing import Any

import psycopg
import stripe

from services.billing_reporter.config import BillingSettings
from services.billing_reporter.taxes import push_tax
from services.cli import billing
from services.customers import tax
from services.kernel.apikeys import StoreError

COLUMNS = ("customer_id", "region", "exempt", "tax_id_type", "tax_id", "stripe_tax_id")


def add_arguments(update: argparse.ArgumentParser) -> None:
    update.add_argument("--tax-region", help="ISO 3166 country or subdivision (DE, US-DE): plg's tax rules")
    update.add_argument(
        "--tax-exempt", choices=("yes", "no"), help="the customer is exempt from tax (Stripe: tax_exempt)"
    )
    update.add_argument(
        "--tax-id",
        help="VAT number, EIN, ... (its type from the region's country, or TYPE:VALUE with Stripe's type); "
        "'' removes it",
    )


def given(args: argparse.Namespace) -> bool:
    return args.tax_region is not None or args.tax_exempt is not None or args.tax_id is not None


def run(args: argparse.Namespace, conn: psycopg.Connection[Any]) -> tax.CustomerTax:
    current = tax.get_tax(conn, args.customer_id)
    if current is None:
        raise StoreError(f"no customer {args.customer_id!r}")
    exempt = None if args.tax_exempt is None else args.tax_exempt == "yes"
    after = tax.planned(current, region=args.tax_region, exempt=exempt, tax_id=args.tax_id)
    if after.stripe_customer_id is not None:
        try:
            after = push_tax(billing.gateway(BillingSettings()), current, after)
        except stripe.InvalidRequestError as exc:
            raise StoreError(
                f"Stripe refused the tax settings, nothing changed: {exc.user_message}"
            ) from None
        except stripe.StripeError as exc:
            raise StoreError(
                f"Stripe could not be reached, nothing changed (run it again): {type(exc).__name__}"
            ) from None
    return tax.set_tax(conn, after)
