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


def test_operators_of_editor_role_may_write_others_are_refused(guarded, registry_database) -> None:
    """Operator tokens (`plg operators create`) work like the admin token for editors and above; a viewer
    or a customer key is a 403 (error_code 40301), an unknown token a 401."""
    from tests.auth_support import bearer, customer_key, new_customer, operator_token

    subject = f"ops-{uuid.uuid4().hex[:8]}-value"
    customer = new_customer(registry_database)
    register = f"/subjects/{subject}/versions"
    for who, status in [
        (operator_token(registry_database, "viewer"), 403),
        (customer_key(registry_database, customer, "secret"), 403),
        ("plgop_" + "a" * 16 + "_" + "b" * 43, 401),
        (operator_token(registry_database, "editor"), 200),
        (operator_token(registry_database, "admin"), 200),
    ]:
        response = guarded.post(register, json={"schema": SCHEMA}, headers=bearer(who))
        assert response.status_code == status, (who[:6], response.text)
        if status == 403:
            assert response.json()["error_code"] == 40301
    basic = base64.b64encode(f"ci:{operator_token(registry_database, 'editor')}".encode()).decode()
    assert (
        guarded.put(
            f"/config/{subject}", json={"compatibility": "NONE"}, headers={"Authorization": f"Basic {basic}"}
        ).status_code
        == 200
    )  # Confluent clients' basic.auth.user.info
