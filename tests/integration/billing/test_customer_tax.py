"""Tax per customer (seed 003: "store tax exemptions per customer entity"): `plg customers update C
--tax-region R [--tax-exempt yes|no] [--tax-id ID]` stores the settings, plg's invoice applies them (the
region against the book's exempt regions, the customer's own exemption, its tax id on the invoice), and
Stripe's customer gets the same (tax_exempt, the tax id through the customer tax id API) — against the
Stripe emulator; Stripe refusing a number changes nothing anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from services.cli.__main__ import main as plg
from services.kernel.settings import DatabaseSettings
from services.plans.loader import config_path
from tests.stripe_double import StripeDouble

AUTH = {"Authorization": "Bearer sk_test_tax"}


@pytest.fixture
def cli(database_settings: DatabaseSettings, double: StripeDouble, monkeypatch, tmp_path: Path, capsys):
    # The seeds' book with a 19 % default rate, so exempt or not shows in money.
    book = yaml.safe_load(config_path().read_text())
    book["tax"]["default_rate"] = "0.19"
    path = tmp_path / "metering.yaml"
    path.write_text(yaml.safe_dump(book))
    for name, value in {
        "DATABASE_URL": database_settings.url.get_secret_value(),
        "STRIPE_API_BASE": double.url,
        "STRIPE_API_KEY": "sk_test_tax",
        "PLG_METERING_CONFIG": str(path),
    }.items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> Any:
        capsys.readouterr()
        code = plg(["--json", *argv])
        out, err = capsys.readouterr()
        return json.loads(out) if code == 0 else (code, err)

    return run


def _stripe(double: StripeDouble, path: str) -> Any:
    response = httpx.get(f"{double.url}{path}", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _tax_ids(double: StripeDouble, stripe_customer: str) -> list[tuple[str, str]]:
    listed = _stripe(double, f"/v1/customers/{stripe_customer}/tax_ids")["data"]
    return sorted((t["type"], t["value"]) for t in listed)


def test_tax_settings_reach_the_invoice_and_stripe(cli, double: StripeDouble, database_settings):
    customer = f"tax-{id(cli)}"
    created = cli("customers", "create", customer, "--plan", "pro", "--stripe")
    stripe_customer = created[0]["stripe_customer_id"]
    assert _stripe(double, f"/v1/customers/{stripe_customer}")["tax_exempt"] == "none"

    # A German business with its VAT number: taxed at the book's rate, the number on both invoices.
    [row] = cli("customers", "update", customer, "--tax-region", "DE", "--tax-id", "DE 123 456 789")
    assert (row["region"], row["exempt"], row["tax_id_type"], row["tax_id"]) == (
        "DE",
        False,
        "eu_vat",
        "DE123456789",
    )
    assert _tax_ids(double, stripe_customer) == [("eu_vat", "DE123456789")]
    first_id = row["stripe_tax_id"]
    invoice = cli("billing", "preview", customer, "--plan", "pro")
    assert (invoice["tax"]["rate"], invoice["tax"]["amount"], invoice["total"]) == ("0.19", "9.31", "58.31")
    assert (invoice["tax"]["region"], invoice["tax"]["tax_id"], invoice["tax"]["exempt"]) == (
        "DE",
        "DE123456789",
        False,
    )

    # Exempt: no tax on plg's invoice, `exempt` at Stripe; the tax id is the same object (not re-created).
    [row] = cli("customers", "update", customer, "--tax-exempt", "yes")
    assert row["exempt"] is True
    assert row["stripe_tax_id"] == first_id
    assert _stripe(double, f"/v1/customers/{stripe_customer}")["tax_exempt"] == "exempt"
    invoice = cli("billing", "preview", customer, "--plan", "pro")
    assert (invoice["tax"]["amount"], invoice["tax"]["exempt_by"], invoice["total"]) == (
        "0.00",
        "customer",
        "49.00",
    )

    # A tax id a person added in Stripe's dashboard survives plg replacing its own.
    added = httpx.post(f"{double.url}/v1/customers/{stripe_customer}/tax_ids", headers=AUTH, timeout=10,
                       data={"type": "eu_vat", "value": "FR12345678901"})  # fmt: skip
    assert added.status_code == 200, added.text
    [row] = cli("customers", "update", customer, "--tax-id", "DE999999999")
    assert _tax_ids(double, stripe_customer) == [("eu_vat", "DE999999999"), ("eu_vat", "FR12345678901")]
    assert row["stripe_tax_id"] != first_id

    # Stripe refuses the number: the command fails and nothing changed, here or there.
    code, err = cli("customers", "update", customer, "--tax-id", "12", "--tax-exempt", "no")
    assert code == 1
    assert "Stripe refused" in err
    with psycopg.connect(database_settings.url.get_secret_value()) as conn:
        stored = conn.execute(
            "SELECT tax_id, tax_exempt FROM customers WHERE customer_id = %s", (customer,)
        ).fetchone()
    assert stored == ("DE999999999", True)
    assert _tax_ids(double, stripe_customer) == [("eu_vat", "DE999999999"), ("eu_vat", "FR12345678901")]

    # Removing the number removes plg's tax id object only; running it twice is the same.
    for _ in range(2):
        [row] = cli("customers", "update", customer, "--tax-id", "", "--tax-exempt", "no")
        assert (row["tax_id"], row["stripe_tax_id"], row["exempt"]) == (None, None, False)
    assert _tax_ids(double, stripe_customer) == [("eu_vat", "FR12345678901")]
    assert _stripe(double, f"/v1/customers/{stripe_customer}")["tax_exempt"] == "none"


def test_a_region_the_book_exempts_and_precise_refusals(cli):
    customer = f"tax-us-{id(cli)}"
    cli("customers", "create", customer, "--plan", "pro")  # no Stripe customer: plg's side only
    [row] = cli("customers", "update", customer, "--tax-region", "us-de", "--tax-id", "12-3456789")
    assert (row["region"], row["tax_id_type"], row["tax_id"]) == ("US-DE", "us_ein", "12-3456789")
    invoice = cli("billing", "preview", customer, "--plan", "pro")
    assert (invoice["tax"]["exempt_by"], invoice["tax"]["amount"]) == ("region", "0.00")  # US-DE is exempt

    for argv, message in (
        (("--tax-region", "delaware"), "ISO 3166"),
        (("--tax-region", "TH", "--tax-id", "1234567891234"), "TYPE:VALUE"),
        (("--tax-id", "xx_nope:1"), "not a tax id type"),
        ((), "nothing to update"),
    ):
        code, err = cli("customers", "update", customer, *argv)
        assert code == 1, argv
        assert message in err, (argv, err)
    [row] = cli("customers", "update", customer, "--tax-region", "TH", "--tax-id", "th_vat:1234567891234")
    assert (row["tax_id_type"], row["tax_id"]) == ("th_vat", "1234567891234")
    code, err = cli("customers", "update", "no-such-customer", "--tax-region", "DE")
    assert code == 1
    assert "no customer" in err
