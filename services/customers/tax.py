"""Tax per customer (seed 003: "store tax exemptions per customer entity"): the region plg's invoice
judges the price book's ``exempt_regions`` by, whether the customer itself is exempt, and its tax id.
The only writer of those ``customers`` columns (migrations 0040, 0135); ``plg customers update C
--tax-region R [--tax-exempt yes|no] [--tax-id ID]`` calls it, and billing passes the same values to
Stripe (``services/billing_reporter/taxes.py``).

A tax id is stored with its Stripe type (``eu_vat``, ``us_ein``, ...): given as ``TYPE:VALUE`` or, more
often, as the bare number, whose type follows from the region's country (a German VAT number is an
``eu_vat``).
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Any

import psycopg
from stripe.params._customer_tax_id_create_params import CustomerTaxIdCreateParams

from services.kernel.apikeys import StoreError

REGION_PATTERN = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")
TAX_ID_TYPE_PATTERN = re.compile(r"^[a-z]{2}_[a-z_]{2,12}$")


def _stripe_tax_id_types() -> frozenset[str]:
    # Stripe's own list of customer tax id types, from the pinned SDK's typed parameters (its Literal).
    hint = typing.get_type_hints(CustomerTaxIdCreateParams)["type"]
    return frozenset(
        value for arg in typing.get_args(hint) for value in typing.get_args(arg) if isinstance(value, str)
    )


#: Every tax id type Stripe's API takes (``eu_vat``, ``us_ein``, ...).
STRIPE_TAX_ID_TYPES = _stripe_tax_id_types()
MAX_TAX_ID = 64

_EU = [
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT", "LT",
    "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
]  # fmt: skip
# The tax id a business of each country usually gives, by Stripe's type names (Stripe's customer tax id
# API, `type`); a country missing here needs the TYPE:VALUE form.
TAX_ID_TYPES: dict[str, str] = {
    **dict.fromkeys(_EU, "eu_vat"),
    "GB": "gb_vat", "CH": "ch_vat", "NO": "no_vat", "IS": "is_vat", "US": "us_ein", "CA": "ca_bn",
    "AU": "au_abn", "NZ": "nz_gst", "IN": "in_gst", "JP": "jp_cn", "SG": "sg_uen", "HK": "hk_br",
    "KR": "kr_brn", "BR": "br_cnpj", "MX": "mx_rfc", "ZA": "za_vat", "AE": "ae_trn",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class CustomerTax:
    """A customer's tax settings as stored; ``stripe_tax_id`` is the Stripe tax id object plg created."""

    customer_id: str
    region: str | None = None
    exempt: bool = False
    tax_id: str | None = None
    tax_id_type: str | None = None
    stripe_tax_id: str | None = None
    stripe_customer_id: str | None = None

    @property
    def configured(self) -> bool:
        """Anything set that Stripe should know before it taxes an invoice."""
        return self.region is not None or self.exempt or self.tax_id is not None

    @property
    def stripe_tax_exempt(self) -> str:
        """Stripe's customer ``tax_exempt``: ``exempt`` or ``none``. (``reverse`` — reverse charge — is not
        a setting of the customer's status here: Stripe Tax applies it itself to a cross-border EU business
        whose VAT number it holds, which is what ``--tax-id`` gives it.)"""
        return "exempt" if self.exempt else "none"


_COLUMNS = "customer_id, tax_region, tax_exempt, tax_id, tax_id_type, stripe_tax_id, stripe_customer_id"


def get_tax(conn: psycopg.Connection[Any], customer_id: str) -> CustomerTax | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM customers WHERE customer_id = %s", (customer_id,)).fetchone()
    return None if row is None else CustomerTax(*row)


def parse_region(region: str) -> str:
    value = region.strip().upper()
    if not REGION_PATTERN.match(value):
        raise StoreError(
            f"tax region {region!r} is not an ISO 3166 code: a country (DE) or a subdivision (US-DE)"
        )
    return value


def parse_tax_id(tax_id: str, region: str | None) -> tuple[str, str]:
    """``(type, value)`` of ``TYPE:VALUE`` or of a bare number in ``region``'s country."""
    text = tax_id.strip()
    kind, sep, value = text.partition(":")
    if sep and TAX_ID_TYPE_PATTERN.match(kind):
        if kind not in STRIPE_TAX_ID_TYPES:
            raise StoreError(f"{kind!r} is not a tax id type Stripe knows (e.g. eu_vat, gb_vat, us_ein)")
        number = value.strip()
    else:
        country = region.split("-", 1)[0] if region else None
        if country is None:
            raise StoreError("a tax id needs the customer's tax region (--tax-region) or the TYPE:VALUE form")
        if country not in TAX_ID_TYPES:
            raise StoreError(
                f"no default tax id type for {country}: give it as TYPE:VALUE with Stripe's type "
                "(e.g. th_vat:1234567891234)"
            )
        kind, number = TAX_ID_TYPES[country], text
    number = number.replace(" ", "")
    if not number or len(number) > MAX_TAX_ID or not number.isprintable():
        raise StoreError(f"tax id {tax_id!r}: 1-{MAX_TAX_ID} printable characters")
    return kind, number


def planned(
    current: CustomerTax, *, region: str | None = None, exempt: bool | None = None, tax_id: str | None = None
) -> CustomerTax:
    """The settings after an update (``None``: unchanged; ``tax_id=""`` removes the tax id), validated,
    not written: billing passes them to Stripe first, then :func:`set_tax` stores what Stripe took."""
    if region is None and exempt is None and tax_id is None:
        raise StoreError("nothing to update: give --tax-region, --tax-exempt or --tax-id")
    new_region = current.region if region is None else parse_region(region)
    kind, number = current.tax_id_type, current.tax_id
    if tax_id is not None:
        kind, number = (None, None) if tax_id.strip() == "" else parse_tax_id(tax_id, new_region)
    return CustomerTax(
        customer_id=current.customer_id,
        region=new_region,
        exempt=current.exempt if exempt is None else exempt,
        tax_id=number,
        tax_id_type=kind,
        stripe_tax_id=current.stripe_tax_id,
        stripe_customer_id=current.stripe_customer_id,
    )


def set_tax(conn: psycopg.Connection[Any], tax: CustomerTax) -> CustomerTax:
    """Store ``tax`` (one UPDATE, so one ``plg_customer_changed`` notification); :class:`StoreError` for an
    unknown customer or a value the table refuses. A Stripe customer the settings were just given to is
    linked when the customer had none (never replaced)."""
    try:
        updated = conn.execute(
            "UPDATE customers SET tax_region = %s, tax_exempt = %s, tax_id = %s, tax_id_type = %s,"
            " stripe_tax_id = %s, stripe_customer_id = COALESCE(stripe_customer_id, %s), updated_at = now()"
            " WHERE customer_id = %s",
            (tax.region, tax.exempt, tax.tax_id, tax.tax_id_type, tax.stripe_tax_id, tax.stripe_customer_id,
             tax.customer_id),
        ).rowcount  # fmt: skip
    except psycopg.errors.CheckViolation as exc:
        raise StoreError(f"invalid tax settings ({exc.diag.constraint_name})") from None
    if not updated:
        raise StoreError(f"no customer {tax.customer_id!r}")
    return tax
