"""``plg_sdk.asgi.UsageMeter`` on a real FastAPI app, against the real stack: its requests arrive on
``usage-events`` as ``api_call_made`` (route template, status, latency) through the SDK's client and the
real ingest; a feature the customer's plan lacks is refused before the handler with the structured
refusal from the real entitlements service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from plg_sdk import Client
from plg_sdk.asgi import UsageMeter
from plg_sdk.entitlements import Entitlements

from services.kernel import apikeys
from tests.integration.ingest.conftest import IngestFactory, read_topic
from tests.integration.metering.conftest import metering  # noqa: F401 - the fixture
from tests.integration.metering.harness import Metering

pytestmark = pytest.mark.integration


def _app(handled: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        handled.append(f"item {item_id}")
        return {"item_id": item_id}

    @app.post("/v1/reports")
    async def report() -> dict[str, str]:
        handled.append("report")
        return {"ok": "yes"}

    return app


def test_a_fastapi_app_is_metered_and_refused_by_plan(
    metering: Metering,  # noqa: F811 - the fixture
    start_ingest: IngestFactory,
    stack: Any,
    provisioned: Any,
    tmp_path: Path,
) -> None:
    customer = metering.customer("free")  # free: api_access yes, sso no
    with psycopg.connect(metering.database.url.get_secret_value(), autocommit=True) as conn:
        _, key = apikeys.create_key(conn, customer, "usage meter test")
    ingest = start_ingest()
    entitlements_api = metering.start_entitlements()
    client = Client(key, host=ingest.url, queue_dir=tmp_path / "queue", flush_interval=0.1)
    handled: list[str] = []
    app = _app(handled)
    app.add_middleware(
        UsageMeter,
        client=client,
        # The entitlement API takes the customer's key like every tenant route (no key: 401, and the
        # SDK's fallback would allow everything).
        entitlements=Entitlements(entitlements_api.url, api_key=key),
        customer_id=customer,
        # Reports need SSO in this app (a plan feature the free plan lacks); items need api_access.
        feature=lambda scope: "sso" if scope["path"].startswith("/v1/reports") else "api_access",
        user_id=lambda scope: "user-1",
    )
    try:
        with TestClient(app) as http:
            assert http.get("/v1/items/1").status_code == 200
            assert http.get("/v1/items/2").status_code == 200
            assert http.get("/v1/items/abc").status_code == 422  # FastAPI's validation, still metered
            assert http.get("/nowhere").status_code == 404
            refused = http.post("/v1/reports")
        assert refused.status_code == 403
        body = refused.json()
        assert body["code"] == "feature_not_in_plan"
        assert body["suggested_plan"]
        assert customer in body["upgrade_url"]
        assert handled == ["item 1", "item 2"], "the refused request never reached its handler"
        assert client.flush(timeout=20)
    finally:
        client.close()

    records = read_topic(stack.kafka_bootstrap, stack.registry_url, provisioned.topic("usage-events"), 5)
    events = [m.value() for m in records]
    assert {e["customer_id"] for e in events} == {customer}
    assert {e["name"] for e in events} == {"api_call_made"}
    seen = sorted((e["properties"]["endpoint"], e["properties"]["status"]) for e in events)
    assert seen == [
        ("(unmatched)", 404),
        ("/v1/items/{item_id}", 200),
        ("/v1/items/{item_id}", 200),
        ("/v1/items/{item_id}", 422),
        ("/v1/reports", 403),
    ]
    for e in events:
        assert e["properties"]["latency_ms"] >= 0
        assert e["properties"]["schema_version"] == 2
        assert e["user_id"] == "user-1"
