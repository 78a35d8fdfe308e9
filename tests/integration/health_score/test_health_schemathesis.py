"""schemathesis, authenticated, against the real health-score service: every operation of its OpenAPI
document answered as the document says, never a 5xx — as an operator (generated customer ids, the list
with generated filters) and with a scored customer's own secret key."""

from __future__ import annotations

import pytest

from tests.auth_support import customer_key, new_customer, operator_token
from tests.http_support import fuzz_as
from tests.integration.health_score.harness import Health, enriched, wait_for

pytestmark = pytest.mark.integration


def test_health_answers_every_generated_request_as_its_openapi_document_says(health: Health) -> None:
    api = health.start()
    customer = new_customer(health.database, prefix=f"{health.prefix}cus-fuzz")
    health.send(*(enriched(customer, "core_action_completed", person=f"p{i}") for i in range(3)))
    viewer = operator_token(health.database, "viewer")
    with api.client() as client:
        wait_for(lambda: client.get(f"/v1/health/{customer}").status_code == 200, what="the score")
    runs = [({}, viewer), ({"customer_id": customer}, customer_key(health.database, customer))]
    # The live stream never ends (test_health_auth reads it).
    fuzz_as("health-score", api.url, runs, max_examples=15, min_requests=15, exclude_path_regex=r"/stream$")
