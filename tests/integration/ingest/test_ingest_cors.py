"""CORS on ingest for browsers (the JS SDK): a publishable key works from any origin unless it lists its own,
a secret key never from a browser, a preflight is answered for anyone and does nothing."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest

from services.ingest import store
from services.kernel import apikeys
from services.kernel.settings import DatabaseSettings
from tests.integration.ingest.conftest import RunningIngest, read_topic

pytestmark = pytest.mark.integration

PAGE = "http://127.0.0.1:28080"


def _customer_with_keys(database: DatabaseSettings, **key: Any) -> tuple[str, str]:
    customer = f"cors-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database.url.get_secret_value(), autocommit=True) as conn:
        store.create_customer(conn, customer, "free")
        _, token = apikeys.create_key(conn, customer, "cors test", **key)
    return customer, token


def _event(name: str = "page_viewed") -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "name": name, "timestamp": int(time.time() * 1000)}


def test_preflight_is_answered_for_any_origin_and_writes_nothing(ingest: RunningIngest) -> None:
    with ingest.client() as http:
        r = http.options(
            "/v1/batch",
            headers={
                "Origin": "https://anyone.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://anyone.example"
    assert "authorization" in r.headers["access-control-allow-headers"]
    assert "POST" in r.headers["access-control-allow-methods"]
    assert int(r.headers["access-control-max-age"]) > 0


def test_publishable_key_without_origins_is_answered_with_cors_from_any_origin(
    ingest: RunningIngest, database_settings: DatabaseSettings, provisioned: Any, stack: Any
) -> None:
    _, token = _customer_with_keys(database_settings, kind="publishable")
    event = _event()
    with ingest.client() as http:
        r = http.post(
            "/v1/batch",
            json={"batch": [event]},
            headers={"Authorization": f"Bearer {token}", "Origin": "https://app.example"},
        )
    assert r.status_code == 202, r.text
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "retry-after" in r.headers["access-control-expose-headers"]
    records = read_topic(
        stack.kafka_bootstrap, stack.registry_url, provisioned.topic("usage-events"), 1, settle=0.5
    )
    assert [m.value()["event_id"] for m in records] == [event["event_id"]]


def test_a_key_limited_to_origins_refuses_other_pages_before_writing(
    ingest: RunningIngest, database_settings: DatabaseSettings, provisioned: Any, stack: Any
) -> None:
    _, token = _customer_with_keys(database_settings, kind="publishable", allowed_origins=[PAGE + "/"])
    allowed, refused = _event(), _event()
    with ingest.client() as http:
        ok = http.post(
            "/v1/batch",
            json={"batch": [allowed]},
            headers={"Authorization": f"Bearer {token}", "Origin": PAGE},
        )
        no = http.post(
            "/v1/batch",
            json={"batch": [refused]},
            headers={"Authorization": f"Bearer {token}", "Origin": "https://evil.example"},
        )
    assert ok.status_code == 202
    assert ok.headers["access-control-allow-origin"] == PAGE
    assert no.status_code == 403
    assert no.json()["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in no.headers, "the refused page cannot even read why"
    records = read_topic(
        stack.kafka_bootstrap, stack.registry_url, provisioned.topic("usage-events"), 1, settle=1.0
    )
    assert [m.value()["event_id"] for m in records] == [allowed["event_id"]]


def test_a_secret_key_is_refused_from_a_browser_but_works_from_a_server(
    ingest: RunningIngest, database_settings: DatabaseSettings
) -> None:
    _, token = _customer_with_keys(database_settings)
    with ingest.client() as http:
        browser = http.post(
            "/v1/batch",
            json={"batch": [_event()]},
            headers={"Authorization": f"Bearer {token}", "Origin": PAGE},
        )
        server = http.post(
            "/v1/batch", json={"batch": [_event()]}, headers={"Authorization": f"Bearer {token}"}
        )
    assert browser.status_code == 403
    assert "secret key" in browser.json()["message"]
    assert server.status_code == 202
    assert "access-control-allow-origin" not in server.headers


def test_a_missing_key_is_a_401_the_page_can_read(ingest: RunningIngest) -> None:
    with ingest.client() as http:
        r = http.post("/v1/batch", json={"batch": [_event()]}, headers={"Origin": PAGE})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == PAGE
