"""Who may send events, on the real ingest: a customer key of either kind (publishable keys live in
browsers), for the key's own customer only; never an operator, nobody without a key."""

from __future__ import annotations

import time
import uuid

import orjson

from services.kernel.topics import USAGE_EVENTS, topic
from tests.auth_support import Case, Tenants, check_cases
from tests.integration.ingest.conftest import IngestFactory, read_topic


def _event(customer: str | None = None) -> dict:
    event = {
        "event_id": str(uuid.uuid4()),
        "name": "api_call_made",
        "timestamp": int(time.time() * 1000),
        "properties": {},
    }
    return event if customer is None else {**event, "customer_id": customer}


def test_events_take_a_key_of_either_kind_and_land_under_its_customer(
    start_ingest: IngestFactory, database_settings, provisioned
) -> None:
    ingest = start_ingest()
    tenants = Tenants.make(database_settings)
    batch = {"batch": [_event()]}
    cases = [
        Case("none", "POST", "/v1/track", 401, _event()),
        Case("bogus", "POST", "/v1/track", 401, _event()),
        Case("admin", "POST", "/v1/track", 403, _event()),  # operators have no customer to send for
        Case("a.publishable", "POST", "/v1/track", 202, _event()),
        Case(
            "a.publishable",
            "POST",
            "/v1/identify",
            202,
            {**_event(), "name": "$identify", "anonymous_id": "anon-1", "user_id": "u-1"},
        ),
        Case("a.secret", "POST", "/v1/batch", 202, batch),
        Case("none", "POST", "/v1/batch", 401, batch),
    ]
    check_cases(ingest.url, tenants, cases)
    # A body naming another customer does not make it theirs: refused, nothing written for B.
    with ingest.client() as client:
        answer = client.post(
            "/v1/batch",
            content=orjson.dumps({"batch": [_event(tenants.b)]}),
            headers={"Authorization": f"Bearer {tenants.tokens['a.publishable']}"},
        )
    assert answer.status_code == 403, answer.text
    assert answer.json()["code"] == "forbidden_customer"
    s = ingest.settings
    records = read_topic(
        s.kafka.bootstrap_servers, s.registry.url, topic(USAGE_EVENTS, provisioned.prefix).name, 1, settle=1.0
    )
    owners = {r.value()["customer_id"] for r in records}
    assert tenants.a in owners
    assert tenants.b not in owners
