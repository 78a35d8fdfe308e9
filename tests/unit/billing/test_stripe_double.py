"""The stateful Stripe double behaves as Stripe documents the meter-events subset (over real HTTP)."""

from __future__ import annotations

import httpx
import pytest
import stripe

from tests.stripe_double import StripeDouble
from tests.unit.billing.conftest import KEY, Clock, client

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def double(emulator: StripeDouble) -> StripeDouble:
    return emulator


def event(identifier: str, value: str = "3", ts: int | None = None, customer: str = "cus_1") -> dict:
    params: dict = {
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": customer, "value": value},
        "identifier": identifier,
    }
    if ts is not None:
        params["timestamp"] = ts
    return params


def post_event(double: StripeDouble, form: dict[str, str], key: str | None = None) -> httpx.Response:
    headers = dict(AUTH, **({"Idempotency-Key": key} if key else {}))
    return httpx.post(f"{double.url}/v1/billing/meter_events", data=form, headers=headers, timeout=10)


def test_an_identifier_is_accepted_once_within_24_hours(double: StripeDouble, clock: Clock):
    sdk = client(double)
    sdk.v1.billing.meter_events.create(event("id-1"))  # type: ignore[arg-type]
    with pytest.raises(stripe.InvalidRequestError, match="already exists with identifier id-1") as info:
        sdk.v1.billing.meter_events.create(event("id-1"))  # type: ignore[arg-type]
    assert info.value.http_status == 400
    assert info.value.headers["stripe-should-retry"] == "false"  # type: ignore[index]
    clock.now += 23 * 3600
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.billing.meter_events.create(event("id-1", ts=int(clock.now)))  # type: ignore[arg-type]
    clock.now += 2 * 3600  # a rolling window of at least 24 h, then the identifier is free again
    sdk.v1.billing.meter_events.create(event("id-1", ts=int(clock.now)))  # type: ignore[arg-type]
    assert double.accepted_identifiers == ["id-1", "id-1"]
    assert double.stats.duplicate_identifiers_refused == 2


def test_timestamps_must_be_within_35_days_back_and_5_minutes_ahead(double: StripeDouble, clock: Clock):
    sdk = client(double)
    now = int(clock.now)
    sdk.v1.billing.meter_events.create(event("old-ok", ts=now - 34 * 86400))  # type: ignore[arg-type]
    sdk.v1.billing.meter_events.create(event("soon-ok", ts=now + 4 * 60))  # type: ignore[arg-type]
    with pytest.raises(stripe.InvalidRequestError, match="35 calendar days"):
        sdk.v1.billing.meter_events.create(event("too-old", ts=now - 36 * 86400))  # type: ignore[arg-type]
    with pytest.raises(stripe.InvalidRequestError, match="5 minutes in the future"):
        sdk.v1.billing.meter_events.create(event("too-new", ts=now + 6 * 60))  # type: ignore[arg-type]
    assert len(double.events) == 2


@pytest.mark.parametrize("value", ["1.5", "abc", "-1", ""])
def test_values_must_be_whole_numbers(double: StripeDouble, value: str):
    with pytest.raises(stripe.InvalidRequestError, match="whole number"):
        client(double).v1.billing.meter_events.create(event("v", value=value))  # type: ignore[arg-type]
    assert double.events == []


def test_event_summaries_add_up_per_hour_and_over_the_range(double: StripeDouble, clock: Clock):
    sdk = client(double)
    meter = sdk.v1.billing.meters.create(
        {
            "display_name": "API requests",
            "event_name": "api_requests",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )
    hour = int(clock.now) // 3600 * 3600 - 5 * 3600
    for i, (offset, value) in enumerate([(10, "3"), (20, "4"), (3600 + 5, "10"), (7200, "1")]):
        sdk.v1.billing.meter_events.create(event(f"e{i}", value=value, ts=hour + offset))  # type: ignore[arg-type]
    sdk.v1.billing.meter_events.create(event("other", value="100", ts=hour, customer="cus_2"))  # type: ignore[arg-type]
    params = {"customer": "cus_1", "start_time": hour, "end_time": hour + 3 * 3600}
    total = sdk.v1.billing.meters.event_summaries.list(meter.id, params)  # type: ignore[arg-type]
    assert [s.aggregated_value for s in total.data] == [18]
    hourly = sdk.v1.billing.meters.event_summaries.list(
        meter.id,
        {**params, "value_grouping_window": "hour"},  # type: ignore[typeddict-item]
    )
    assert [s.aggregated_value for s in hourly.data] == [7, 10, 1]
    assert double.totals() == {("cus_1", "api_requests"): 18, ("cus_2", "api_requests"): 100}


def test_an_idempotency_key_replays_the_first_response_for_the_same_parameters(double: StripeDouble):
    form = {
        "event_name": "api_requests",
        "payload[stripe_customer_id]": "cus_1",
        "payload[value]": "2",
        "identifier": "i1",
    }
    first = post_event(double, form, key="k-1")
    again = post_event(double, form, key="k-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(double.events) == 1  # replayed, not executed again (no duplicate-identifier error either)
    other = post_event(double, {**form, "payload[value]": "3"}, key="k-1")
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"


def test_a_refused_duplicate_is_replayed_too_but_a_validation_error_saves_nothing(double: StripeDouble):
    form = {
        "event_name": "api_requests",
        "payload[stripe_customer_id]": "cus_1",
        "payload[value]": "2",
        "identifier": "d",
    }
    assert post_event(double, form).status_code == 200
    dup = post_event(double, form, key="k-dup")
    assert dup.status_code == 400
    assert post_event(double, form, key="k-dup").headers.get("Idempotent-Replayed") == "true"
    bad = {**form, "identifier": "e", "payload[value]": "x"}
    assert post_event(double, bad, key="k-bad").status_code == 400
    fixed = post_event(double, {**bad, "payload[value]": "5"}, key="k-bad")  # nothing was saved under k-bad
    assert fixed.status_code == 200


def test_injected_429_and_5xx_record_nothing(double: StripeDouble):
    double.faults(1.0, kinds=("429",), retry_after_s=2)
    form = {
        "event_name": "api_requests",
        "payload[stripe_customer_id]": "cus_1",
        "payload[value]": "2",
        "identifier": "f",
    }
    limited = post_event(double, form, key="k-f")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    with pytest.raises(stripe.RateLimitError):
        client(double).v1.billing.meter_events.create(event("f"))  # type: ignore[arg-type]
    double.faults(1.0, kinds=("500", "503"))
    with pytest.raises(stripe.APIError):
        client(double).v1.billing.meter_events.create(event("f"))  # type: ignore[arg-type]
    assert double.events == []
    double.faults(0.0)
    assert post_event(double, form, key="k-f").status_code == 200  # the key saved nothing before


def test_a_timeout_fault_records_the_event_before_the_answer_is_lost(double: StripeDouble):
    double.faults(1.0, kinds=("timeout",), timeout_s=1.0)
    with pytest.raises(stripe.APIConnectionError):
        client(double, timeout=0.3).v1.billing.meter_events.create(  # type: ignore[arg-type]
            event("t"), {"idempotency_key": "k-t"}
        )
    assert double.accepted_identifiers == ["t"]
    double.faults(0.0)
    # The same key: the saved answer. A new key: the identifier refuses a second copy.
    replay = client(double).v1.billing.meter_events.create(event("t"), {"idempotency_key": "k-t"})  # type: ignore[arg-type]
    assert replay.identifier == "t"
    with pytest.raises(stripe.InvalidRequestError, match="already exists"):
        client(double).v1.billing.meter_events.create(event("t"), {"idempotency_key": "k-t2"})  # type: ignore[arg-type]
    assert len(double.events) == 1


def test_a_bad_api_key_is_a_401(double: StripeDouble):
    response = httpx.get(f"{double.url}/v1/billing/meters", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
