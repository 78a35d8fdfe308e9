"""Tax per customer on plg's invoice: the customer's own exemption, its region against the book's exempt
regions, and its tax id shown; the parsing of `plg customers update --tax-...` values."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.customers.tax import CustomerTax, parse_region, parse_tax_id, planned
from services.kernel.apikeys import StoreError
from services.plans import load_config
from services.plans.invoice import calculate_invoice
from services.plans.periods import billing_period, datetime_to_ms

CONFIG = load_config()
PERIOD = billing_period(datetime_to_ms(datetime(2026, 3, 10, tzinfo=UTC)), 1)
PRICE = CONFIG.price_for("pro", PERIOD.start.date())
assert PRICE is not None
TAXED = PRICE.model_copy(update={"tax": PRICE.tax.model_copy(update={"default_rate": Decimal("0.19")})})


def _invoice(**tax):
    usage = {"api_requests": Decimal(51_501)}
    return calculate_invoice(customer_id="c", period=PERIOD, price=TAXED, usage=usage, **tax)


def test_a_customer_is_taxed_unless_it_or_its_region_is_exempt():
    taxed = _invoice(tax_region="DE", tax_id=("eu_vat", "DE123456789"))
    assert taxed.subtotal == Decimal("50.51")  # 49.00 + 1 501 requests at 0.001 (1.51)
    assert (taxed.tax.amount, taxed.total, taxed.tax.exempt) == (Decimal("9.60"), Decimal("60.11"), False)
    assert (
        taxed.to_dict()["tax"] | {"region": "DE", "tax_id": "DE123456789", "tax_id_type": "eu_vat"}
        == (taxed.to_dict()["tax"])
    )
    own = _invoice(tax_region="DE", tax_exempt=True)
    assert (own.tax.amount, own.total, own.tax.exempt_by) == (Decimal("0.00"), Decimal("50.51"), "customer")
    region = _invoice(tax_region="US-DE")  # the book exempts US-DE
    assert (region.tax.amount, region.tax.exempt_by) == (Decimal("0.00"), "region")
    assert _invoice().tax.exempt_by is None


def test_tax_values_are_parsed_strictly():
    assert parse_region(" us-de ") == "US-DE"
    with pytest.raises(StoreError, match="ISO 3166"):
        parse_region("Delaware")
    assert parse_tax_id("DE 123 456 789", "DE-BY") == ("eu_vat", "DE123456789")
    assert parse_tax_id("gb_vat:GB123456789", None) == ("gb_vat", "GB123456789")
    with pytest.raises(StoreError, match="tax region"):
        parse_tax_id("123", None)
    with pytest.raises(StoreError, match="not a tax id type"):
        parse_tax_id("zz_bogus:1", "DE")
    with pytest.raises(StoreError, match="printable"):
        parse_tax_id("x" * 65, "DE")


def test_an_update_keeps_what_it_does_not_name_and_removes_a_tax_id_on_empty():
    current = CustomerTax("c", "DE", True, "DE1234567", "eu_vat", "txi_1", "cus_1")
    moved = planned(current, region="FR")
    assert (moved.region, moved.exempt, moved.tax_id, moved.stripe_tax_id) == (
        "FR",
        True,
        "DE1234567",
        "txi_1",
    )
    cleared = planned(current, tax_id="", exempt=False)
    assert (cleared.tax_id, cleared.tax_id_type, cleared.exempt) == (None, None, False)
    assert current.stripe_tax_exempt == "exempt"
    assert cleared.stripe_tax_exempt == "none"
    with pytest.raises(StoreError, match="nothing to update"):
        planned(current)
