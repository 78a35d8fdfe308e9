"""Contract: the Stripe double answers what stripe-mock (Stripe's own mock, from Stripe's OpenAPI spec)
answers — same status, same keys, same JSON types — for every request billing makes and their common
errors, so the double cannot drift from the real API's shape. Behaviour (dedup, windows, sums) is the
double's alone: stripe-mock keeps no state."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.billing_reporter.stripe_gateway import StripeGateway
from tests.stripe_double import StripeDouble

AUTH = {"Authorization": "Bearer sk_test_contract"}
NOW = int(time.time())
METER = {
    "display_name": "API requests",
    "event_name": "api_requests",
    "default_aggregation[formula]": "sum",
    "customer_mapping[event_payload_key]": "stripe_customer_id",
    "customer_mapping[type]": "by_id",
    "value_settings[event_payload_key]": "value",
}
EVENT = {
    "event_name": "api_requests",
    "payload[stripe_customer_id]": "cus_contract",
    "payload[value]": "42",
    "timestamp": str(NOW - 60),
    "identifier": "contract-1",
}


@pytest.fixture(scope="module")
def double() -> Iterator[StripeDouble]:
    d = StripeDouble().serve()
    yield d
    d.close()


def shape(value: Any) -> Any:
    """Keys and JSON types, recursively; a list is the shape of its first item."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def both(
    double: StripeDouble, stripe_mock_url: str, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, httpx.Response]:
    headers = kwargs.pop("headers", AUTH)
    real = httpx.request(method, f"{stripe_mock_url}{path}", headers=headers, timeout=10, **kwargs)
    ours = httpx.request(method, f"{double.url}{path}", headers=headers, timeout=10, **kwargs)
    return real, ours


def assert_same_shape(real: httpx.Response, ours: httpx.Response, *, error: bool = False) -> None:
    assert ours.status_code == real.status_code, (real.text, ours.text)
    if error:
        # stripe-mock's errors carry message and type; ours may add param/code as Stripe's do.
        assert set(real.json()["error"]) <= set(ours.json()["error"]) | {"param", "code"}
        assert real.json()["error"]["type"] == ours.json()["error"]["type"]
    else:
        assert shape(ours.json()) == shape(real.json())


def test_create_meter(double: StripeDouble, stripe_mock_url: str):
    assert_same_shape(*both(double, stripe_mock_url, "POST", "/v1/billing/meters", data=METER))


def test_list_and_retrieve_meters(double: StripeDouble, stripe_mock_url: str):
    assert_same_shape(*both(double, stripe_mock_url, "GET", "/v1/billing/meters", params={"limit": 10}))
    ours = httpx.get(f"{double.url}/v1/billing/meters", headers=AUTH).json()["data"][0]["id"]
    assert_same_shape(*both(double, stripe_mock_url, "GET", f"/v1/billing/meters/{ours}"))


def test_create_meter_event(double: StripeDouble, stripe_mock_url: str):
    real, ours = both(double, stripe_mock_url, "POST", "/v1/billing/meter_events", data=EVENT,
                      headers={**AUTH, "Idempotency-Key": "contract-key"})  # fmt: skip
    assert_same_shape(real, ours)
    # Both echo the key (stripe-mock only echoes it; the double also enforces it).
    assert real.headers.get("Idempotency-Key") == "contract-key"


def test_event_summaries(double: StripeDouble, stripe_mock_url: str):
    meter = httpx.get(f"{double.url}/v1/billing/meters", headers=AUTH).json()["data"][0]["id"]
    params = {"customer": "cus_contract", "start_time": NOW - 3600, "end_time": NOW + 3600}
    assert_same_shape(
        *both(double, stripe_mock_url, "GET", f"/v1/billing/meters/{meter}/event_summaries", params=params)
    )


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/v1/billing/meter_events", {"data": {k: v for k, v in EVENT.items() if k != "event_name"}}),
        ("POST", "/v1/billing/meters", {"data": {"display_name": "no event name"}}),
        ("GET", "/v1/billing/meters/mtr_x/event_summaries", {"params": {"start_time": 1, "end_time": 2}}),
        ("GET", "/v1/billing/not_a_thing", {}),
        ("GET", "/v1/billing/meters", {"headers": {"Authorization": "Bearer nope"}}),
    ],
    ids=[
        "event-without-event_name",
        "meter-without-event_name",
        "summaries-without-customer",
        "unknown-path",
        "bad-key",
    ],
)
def test_errors_have_the_same_status_and_shape(double, stripe_mock_url, method, path, kwargs):
    real, ours = both(double, stripe_mock_url, method, path, **kwargs)
    if path.startswith("/v1/billing/meters/mtr_x") and ours.status_code == 404:
        # The double knows there is no such meter (404) before looking at the query; ask it with a real one.
        meter = httpx.get(f"{double.url}/v1/billing/meters", headers=AUTH).json()["data"]
        if meter:
            ours = httpx.get(f"{double.url}/v1/billing/meters/{meter[0]['id']}/event_summaries", headers=AUTH,
                             params=kwargs["params"])  # fmt: skip
    assert_same_shape(real, ours, error=True)


# -- billing objects: the requests plg's catalog sync, checkout, plan changes, previews and top-ups make.
# stripe-mock answers fixtures that carry every field of the API version; the emulator answers the fields
# plg reads. So the contract here is: the same status for the same request, and every key the emulator
# answers exists at stripe-mock with the same JSON type (where neither is null).


def assert_subset_shape(real: httpx.Response, ours: httpx.Response) -> None:
    assert ours.status_code == real.status_code, (real.text, ours.text)
    _subset(shape(ours.json()), shape(real.json()), "")


# In the API (InvoiceLineItem.pricing.price_details: the line's price and product) but absent from
# stripe-mock's invoice fixture.
NOT_IN_FIXTURES = {
    ".lines.data[].pricing": {"price_details"},
    ".data[].lines.data[].pricing": {"price_details"},
    # In the API (a credit grant's scope names its prices when created with them), not in the fixture.
    ".applicability_config.scope": {"prices"},
}


def _subset(ours: Any, real: Any, where: str) -> None:
    if isinstance(ours, dict) and isinstance(real, dict):
        missing = set(ours) - set(real) - NOT_IN_FIXTURES.get(where, set())
        assert not missing, f"{where or 'top'}: keys stripe-mock does not have: {sorted(missing)}"
        for k, v in ours.items():
            if k != "metadata" and k in real:  # metadata is free-form
                _subset(v, real[k], f"{where}.{k}")
    elif isinstance(ours, list) and isinstance(real, list) and ours and real:
        _subset(ours[0], real[0], f"{where}[]")
    elif "NoneType" not in (ours, real) and not isinstance(ours, list | dict):
        assert ours == real or isinstance(real, dict | list), f"{where}: {ours} vs {real}"


def _form(double: StripeDouble, path: str, data: dict[str, str]) -> dict[str, Any]:
    response = httpx.post(f"{double.url}{path}", data=data, headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def catalog(double: StripeDouble) -> dict[str, str]:
    meter = _form(double, "/v1/billing/meters", {**METER, "event_name": "catalog_requests"})["id"]
    product = _form(double, "/v1/products", {"name": "pro"})["id"]
    customer = _form(double, "/v1/customers", {"name": "acme", "metadata[plg_customer_id]": "acme"})["id"]
    base = _form(double, "/v1/prices", BASE_PRICE | {"product": product})["id"]
    metered = _form(double, "/v1/prices", METERED_PRICE | {"product": product, "recurring[meter]": meter})[
        "id"
    ]
    return {"meter": meter, "product": product, "customer": customer, "base": base, "metered": metered}


BASE_PRICE = {
    "currency": "usd", "unit_amount_decimal": "4900", "recurring[interval]": "month",
    "recurring[usage_type]": "licensed", "lookup_key": "contract-base", "metadata[plg_plan]": "pro",
}  # fmt: skip
METERED_PRICE = {
    "currency": "usd", "billing_scheme": "tiered", "tiers_mode": "graduated",
    "tiers[0][up_to]": "50000", "tiers[0][unit_amount_decimal]": "0",
    "tiers[1][up_to]": "inf", "tiers[1][unit_amount_decimal]": "0.1",
    "recurring[interval]": "month", "recurring[usage_type]": "metered",
}  # fmt: skip


def test_billing_objects_answer_a_subset_of_stripes_shapes(
    double: StripeDouble, stripe_mock_url: str, catalog
):
    def post(path: str, data: dict[str, str]) -> None:
        assert_subset_shape(*both(double, stripe_mock_url, "POST", path, data=data))

    post("/v1/customers", {"name": "beta", "metadata[plg_customer_id]": "beta"})
    post("/v1/products", {"name": "growth", "metadata[plg_plan]": "growth"})
    post("/v1/prices", BASE_PRICE | {"product": catalog["product"], "lookup_key": "contract-base-2"})
    post("/v1/prices", METERED_PRICE | {"product": catalog["product"], "recurring[meter]": catalog["meter"]})
    post("/v1/prices", {
        "currency": "usd", "product": catalog["product"], "unit_amount_decimal": "50",
        "transform_quantity[divide_by]": "3600", "transform_quantity[round]": "up",
        "recurring[interval]": "month", "recurring[usage_type]": "metered",
        "recurring[meter]": catalog["meter"],
    })  # fmt: skip
    post("/v1/checkout/sessions", {
        "mode": "subscription", "customer": catalog["customer"], "client_reference_id": "acme",
        "line_items[0][price]": catalog["base"], "line_items[0][quantity]": "1",
        "line_items[1][price]": catalog["metered"], "success_url": "http://127.0.0.1/ok",
        "metadata[plg_plan]": "pro", "subscription_data[metadata][plg_plan]": "pro",
    })  # fmt: skip
    post("/v1/invoiceitems", {
        "customer": catalog["customer"], "amount": "-125", "currency": "usd", "description": "adjustment",
        "metadata[plg_adjustment]": "x",
    })  # fmt: skip
    sub = _form(double, "/v1/subscriptions", {
        "customer": catalog["customer"], "items[0][price]": catalog["base"],
        "items[1][price]": catalog["metered"],
    })  # fmt: skip
    post("/v1/subscriptions", {"customer": catalog["customer"], "items[0][price]": catalog["base"]})
    post(f"/v1/subscriptions/{sub['id']}", {
        "items[0][id]": sub["items"]["data"][0]["id"], "items[0][deleted]": "true",
        "items[1][price]": catalog["base"], "proration_behavior": "none",
    })  # fmt: skip
    post("/v1/invoices/create_preview", {"customer": catalog["customer"], "subscription": sub["id"]})
    # An annual base with monthly usage (issue 20): items on two intervals, billing_mode flexible, from
    # checkout and from the API, and that subscription's preview.
    annual = _form(double, "/v1/prices", BASE_PRICE | {
        "product": catalog["product"], "recurring[interval]": "year", "lookup_key": "contract-annual",
    })["id"]  # fmt: skip
    flexible = {
        "customer": catalog["customer"], "items[0][price]": annual, "items[1][price]": catalog["metered"],
        "billing_mode[type]": "flexible",
    }  # fmt: skip
    post("/v1/subscriptions", flexible)
    post("/v1/checkout/sessions", {
        "mode": "subscription", "customer": catalog["customer"], "client_reference_id": "acme",
        "line_items[0][price]": annual, "line_items[0][quantity]": "1",
        "line_items[1][price]": catalog["metered"], "success_url": "http://127.0.0.1/ok",
        "subscription_data[billing_mode][type]": "flexible",
    })  # fmt: skip
    # A monthly plan's (classic) subscription moved to flexible billing mode before a plan change to it.
    post(f"/v1/subscriptions/{sub['id']}/migrate", {"billing_mode[type]": "flexible"})
    mixed = _form(double, "/v1/subscriptions", flexible)
    assert mixed["billing_mode"]["type"] == "flexible"
    post("/v1/invoices/create_preview", {"customer": catalog["customer"], "subscription": mixed["id"]})
    # Adjustments of a closed period: a credit note on its (paid) invoice, to the customer's balance.
    paid = next(
        i["id"] for i in double.billing.invoices.values()
        if i["parent"]["subscription_details"]["subscription"] == sub["id"]
    )  # fmt: skip
    note = {
        "invoice": paid, "credit_amount": "50", "memo": "correction", "metadata[plg_adjustment]": "x",
        "lines[0][type]": "custom_line_item", "lines[0][description]": "correction",
        "lines[0][quantity]": "1", "lines[0][unit_amount]": "50",
    }  # fmt: skip
    post("/v1/credit_notes", note)
    made = _form(double, "/v1/credit_notes", note)
    assert_subset_shape(*both(double, stripe_mock_url, "GET", f"/v1/credit_notes/{made['id']}"))
    # What the invoice has left to credit: its credit notes, listed by invoice (a bigger credit is an item).
    real, ours = both(
        double, stripe_mock_url, "GET", "/v1/credit_notes", params={"invoice": paid, "limit": 100}
    )
    assert_subset_shape(real, ours)
    assert made["id"] in [n["id"] for n in ours.json()["data"]]
    assert {n["invoice"] for n in ours.json()["data"]} == {paid}
    # Top-ups: a billing credit grant scoped to a metered price.
    post("/v1/billing/credit_grants", {
        "customer": catalog["customer"], "name": "plg top-up", "category": "paid",
        "amount[type]": "monetary", "amount[monetary][currency]": "usd", "amount[monetary][value]": "1000",
        "applicability_config[scope][prices][0][id]": catalog["metered"], "effective_at": str(NOW),
        "expires_at": str(NOW + 86_400), "metadata[plg_grant_id]": "cs_x",
    })  # fmt: skip
    item = _form(
        double, "/v1/invoiceitems", {"customer": catalog["customer"], "amount": "100", "currency": "usd"}
    )
    assert_subset_shape(*both(double, stripe_mock_url, "GET", f"/v1/invoiceitems/{item['id']}"))
    assert_subset_shape(
        *both(double, stripe_mock_url, "GET", "/v1/prices", params={"lookup_keys[0]": "contract-base"})
    )
    assert_subset_shape(*both(double, stripe_mock_url, "GET", f"/v1/subscriptions/{sub['id']}"))
    assert_subset_shape(
        *both(double, stripe_mock_url, "GET", "/v1/invoices", params={"customer": catalog["customer"]})
    )


def test_customer_tax_requests_answer_a_subset_of_stripes_shapes(
    double: StripeDouble, stripe_mock_url: str, catalog
):
    """What `plg customers update --tax-...` sends (services/billing_reporter/taxes.py): the customer's
    tax_exempt, a tax id created, listed and deleted; an unknown type refused by both."""
    customer = catalog["customer"]
    for exempt in ("exempt", "none"):
        assert_subset_shape(
            *both(double, stripe_mock_url, "POST", f"/v1/customers/{customer}",
                  data={"tax_exempt": exempt, "metadata[plg_tax_region]": "DE"})
        )  # fmt: skip
    path = f"/v1/customers/{customer}/tax_ids"
    real, ours = both(double, stripe_mock_url, "POST", path, data={"type": "eu_vat", "value": "DE123456789"})
    assert_subset_shape(real, ours)
    assert_subset_shape(*both(double, stripe_mock_url, "GET", path, params={"limit": "100"}))
    tax_id = ours.json()["id"]
    # stripe-mock keeps no state: it answers any id; the emulator the one it created.
    assert_subset_shape(*both(double, stripe_mock_url, "DELETE", f"{path}/{tax_id}"))
    real, ours = both(double, stripe_mock_url, "POST", path, data={"type": "xx_nope", "value": "1"})
    assert_same_shape(real, ours, error=True)


def test_the_account_answers_a_subset_of_stripes_shape_and_the_gateway_keys_ids_by_it(
    double: StripeDouble, stripe_mock_url: str
):
    """``GET /v1/account`` (what StripeGateway.account() asks once, to key plg's caches of Stripe ids by
    account): the emulator answers a subset of Stripe's shape, the same account every time; each emulator is
    an account of its own; the test key's mode is part of the key plg uses."""
    real, ours = both(double, stripe_mock_url, "GET", "/v1/account")
    assert_subset_shape(real, ours)
    again = httpx.get(f"{double.url}/v1/account", headers=AUTH, timeout=10).json()
    assert again["id"] == ours.json()["id"]
    assert again["id"].startswith("acct_")
    other = StripeDouble().serve()
    try:
        assert StripeGateway(other.url, SecretStr("sk_test_other")).account() != (
            StripeGateway(double.url, SecretStr("sk_test_contract")).account()
        )
    finally:
        other.close()
    at_mock = StripeGateway(stripe_mock_url, SecretStr("sk_test_contract")).account()
    assert at_mock.startswith("acct_")
    assert at_mock.endswith(":test")
