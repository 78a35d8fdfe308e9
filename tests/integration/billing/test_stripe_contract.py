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
