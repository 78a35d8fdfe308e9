"""A customer's tax settings passed to Stripe (seed 003: "store tax exemptions per customer entity"): the
customer's ``tax_exempt`` status and its tax id through Stripe's customer tax id API, so Stripe Tax treats
the customer as plg's invoice does. ``plg customers update C --tax-...`` calls :func:`push_tax` before it
stores the settings (``services/customers/tax.py``): a refusal from Stripe (an invalid VAT number) changes
nothing anywhere.

Every call is safe to repeat: the status is a plain update, the tax id is looked up before it is created
(the same type and value at Stripe is kept, not created twice), and only the tax id object plg created
before (``customers.stripe_tax_id``) is ever deleted — never one a person added in Stripe's dashboard.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from psycopg_pool import ConnectionPool

from services.billing_reporter.stripe_gateway import StripeGateway
from services.customers.tax import CustomerTax, get_tax, set_tax


def push_tax(gateway: StripeGateway, before: CustomerTax, after: CustomerTax) -> CustomerTax:
    """Make the Stripe customer of ``after`` carry its exempt status and tax id; returns ``after`` with
    the Stripe tax id object's id. A customer without a Stripe customer is returned as it is."""
    stripe_customer = after.stripe_customer_id
    if stripe_customer is None:
        return after
    # A fresh key per run: an update sets values, so repeating it is harmless, while a key derived from the
    # values would make Stripe replay an old answer after A -> B -> A within its 24 h key window.
    gateway.update_customer(
        stripe_customer,
        {"tax_exempt": after.stripe_tax_exempt, "metadata": {"plg_tax_region": after.region or ""}},
        idempotency_key=f"plg_tax_{uuid.uuid4().hex}",
    )
    existing = gateway.list_tax_ids(stripe_customer)
    kept: str | None = None
    if after.tax_id is not None and after.tax_id_type is not None:
        same = next(
            (t for t in existing if t.get("type") == after.tax_id_type and t.get("value") == after.tax_id),
            None,
        )
        if same is not None:
            kept = str(same["id"])
        else:
            created = gateway.create_tax_id(
                stripe_customer,
                kind=after.tax_id_type,
                value=after.tax_id,
                idempotency_key=f"plg_taxid_{uuid.uuid4().hex}",
            )
            kept = str(created["id"])
    old = before.stripe_tax_id
    if old is not None and old != kept and any(t.get("id") == old for t in existing):
        gateway.delete_tax_id(stripe_customer, old)
    return CustomerTax(
        customer_id=after.customer_id,
        region=after.region,
        exempt=after.exempt,
        tax_id=after.tax_id,
        tax_id_type=after.tax_id_type,
        stripe_tax_id=kept,
        stripe_customer_id=stripe_customer,
    )


def customer_for_checkout(
    pool: ConnectionPool, gateway: StripeGateway, customer_id: str, name: str | None
) -> str | None:
    """The Stripe customer a checkout should name for a customer plg has none for yet: when tax settings
    are stored, the Stripe customer is created (idempotent per plg id, as ``plg customers create
    --stripe``), given them and linked first, so Stripe taxes the very first invoice as plg's does;
    otherwise None (Checkout creates the customer, as before)."""
    with pool.connection() as conn:
        current = get_tax(conn, customer_id)
    if current is None or current.stripe_customer_id is not None or not current.configured:
        return current.stripe_customer_id if current is not None else None
    stripe_id = gateway.create_customer(
        customer_id=customer_id, name=name, idempotency_key=f"plg_customer_{customer_id}"
    )
    pushed = push_tax(gateway, current, replace(current, stripe_customer_id=stripe_id))
    with pool.connection() as conn:
        set_tax(conn, pushed)
    return stripe_id
