"""The admin token over HTTP: writes need it (Bearer or Basic password), reads are open unless
``REGISTRY_PROTECT_READS``; refusals are 401 with error_code 40101."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from fastapi.testclient import TestClient

from services.schema_registry.app import build_app
from tests.integration.schema_registry.support import ADMIN_TOKEN, CONTENT_TYPE, registry_settings_for

SCHEMA = json.dumps({"type": "record", "name": "Guarded", "fields": [{"name": "a", "type": "string"}]})
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(f"ci:{ADMIN_TOKEN}".encode()).decode()}
WRONG = {"Authorization": "Bearer not-the-token"}


def client_for(database_url: str, **settings: object) -> TestClient:
    app = build_app(registry_settings_for(database_url, admin_token=ADMIN_TOKEN, **settings))
    client = TestClient(app)
    client.headers["Content-Type"] = CONTENT_TYPE
    return client


@pytest.fixture(scope="module")
def guarded(registry_database):
    with client_for(registry_database) as client:
        yield client


@pytest.fixture(scope="module")
def sealed(registry_database):
    with client_for(registry_database, protect_reads=True) as client:
        yield client


def assert_unauthorized(response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error_code"] == 40101
    assert "Basic" in response.headers["WWW-Authenticate"]


def writes(subject: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("POST", f"/subjects/{subject}/versions", {"schema": SCHEMA}),
        ("DELETE", f"/subjects/{subject}", None),
        ("DELETE", f"/subjects/{subject}/versions/1", None),
        ("PUT", "/config", {"compatibility": "NONE"}),
        ("PUT", f"/config/{subject}", {"compatibility": "NONE"}),
        ("DELETE", f"/config/{subject}", None),
        ("PUT", "/mode", {"mode": "READONLY"}),
        ("PUT", f"/mode/{subject}", {"mode": "READONLY"}),
    ]


def test_every_write_without_the_token_is_refused_with_40101(guarded):
    subject = f"guarded-{uuid.uuid4().hex[:8]}"
    for method, path, body in writes(subject):
        for headers in ({}, WRONG):
            assert_unauthorized(guarded.request(method, path, json=body, headers=headers))
    # Nothing was changed by the refused requests.
    assert guarded.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
    assert guarded.get("/mode").json() == {"mode": "READWRITE"}
    assert guarded.get(f"/subjects/{subject}/versions").json()["error_code"] == 40401


@pytest.mark.parametrize("headers", [BEARER, BASIC], ids=["bearer", "basic-password"])
def test_the_admin_token_allows_writes(guarded, headers):
    subject = f"guarded-{uuid.uuid4().hex[:8]}"
    created = guarded.post(f"/subjects/{subject}/versions", json={"schema": SCHEMA}, headers=headers)
    assert created.status_code == 200, created.text
    assert guarded.delete(f"/subjects/{subject}", headers=headers).json() == [1]


def test_reads_and_lookups_stay_open(guarded):
    subject = f"guarded-{uuid.uuid4().hex[:8]}"
    schema_id = guarded.post(f"/subjects/{subject}/versions", json={"schema": SCHEMA}, headers=BEARER).json()[
        "id"
    ]
    assert guarded.get(f"/schemas/ids/{schema_id}").status_code == 200
    assert guarded.get(f"/subjects/{subject}/versions/latest").status_code == 200
    assert guarded.post(f"/subjects/{subject}", json={"schema": SCHEMA}).status_code == 200
    compat = guarded.post(f"/compatibility/subjects/{subject}/versions/latest", json={"schema": SCHEMA})
    assert compat.json() == {"is_compatible": True}


def test_protected_reads_need_the_token_but_health_and_metrics_do_not(sealed):
    assert_unauthorized(sealed.get("/subjects"))
    assert_unauthorized(sealed.get("/schemas/ids/1"))
    assert_unauthorized(sealed.post("/subjects/x", json={"schema": SCHEMA}))
    assert sealed.get("/subjects", headers=BASIC).status_code == 200
    assert sealed.get("/healthz").status_code == 200
    assert sealed.get("/readyz").status_code == 200
    assert sealed.get("/metrics").status_code == 200
