"""Hostile input and schemathesis against the real entitlement API (on a real aggregator's output):
precise 4xx in the ``{"code", "message"}`` shape, never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.auth_support import bearer, customer_key
from tests.http_support import AnswerLog, assert_error, fuzz_as, guarded_client
from tests.integration.metering.harness import Metering


@pytest.fixture
def answers() -> Iterator[AnswerLog]:
    log = AnswerLog()
    yield log
    log.assert_no_server_error()


def test_odd_ids_unknown_routes_and_methods_get_precise_4xx(metering: Metering, answers: AnswerLog) -> None:
    c = metering.customer("free")
    api = metering.start_entitlements()
    assert api.token is not None
    with guarded_client(api.url, answers, headers=bearer(api.token)) as client:
        for customer in ("ünïcødé", "😀" * 300, "x" * 10_000, "%00", "%ED%A0%80", "a%2Fb", " ", "%FF"):
            response = client.get(f"/v1/entitlements/{customer}/api_requests")
            assert response.status_code == 404, (customer, response.text)
            assert response.json()["code"] in ("customer_not_found", "not_found"), response.text
        for feature in ("%00", "x" * 10_000, "😀", "%FF"):
            response = client.get(f"/v1/entitlements/{c}/{feature}")
            assert response.status_code in (404, 503), (feature, response.text)
        assert_error(client.post(f"/v1/entitlements/{c}/api_requests"), 405, "method_not_allowed")
        assert_error(client.get("/v1/entitlements"), 404, "not_found")
        assert_error(client.get("/v1/entitlements/a/b/c"), 404, "not_found")


def test_entitlements_answer_every_generated_request_as_their_openapi_document_says(
    metering: Metering,
) -> None:
    c = metering.customer("free")
    metering.start()
    api = metering.start_entitlements()
    # Generated ids (unknown customers) as an operator, then a real customer with generated features
    # (unknown ones, the plan's meters and features once the view is ready; 503 before that is documented
    # and allowed) with that customer's own secret key.
    assert api.token is not None
    runs = [({}, api.token), ({"customer_id": c}, customer_key(metering.database, c))]
    fuzz_as("entitlements", api.url, runs, max_examples=25, min_requests=25, allowed=frozenset({503}))
