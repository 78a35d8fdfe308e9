"""The hand-written OpenAPI document describes exactly the routes the registry serves."""

from __future__ import annotations

from fastapi.routing import APIRoute
from pydantic import SecretStr

from services.kernel.auth import iter_routes
from services.kernel.settings import DatabaseSettings
from services.schema_registry.app import build_app
from services.schema_registry.config import RegistrySettings
from services.schema_registry.openapi import document

OPS_ROUTES = {"/healthz", "/openapi.json"}


def test_every_route_is_documented_and_every_documented_operation_is_served() -> None:
    app = build_app(RegistrySettings(database=DatabaseSettings(url=SecretStr("postgresql://unused/x"))))
    served = {
        (path.replace("{sid}", "{id}"), method.lower())
        for path, route, _ in iter_routes(app.routes)  # the routers' routes too (services/.../api.py)
        if isinstance(route, APIRoute) and path not in OPS_ROUTES
        for method in route.methods
    }
    doc = document("test")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented


def test_every_operation_documents_its_errors_and_the_request_id_header() -> None:
    for path, ops in document("test")["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            assert {"200", "400", "408", "500", "503"} <= set(responses), (path, method)
            assert all("X-Request-Id" in r["headers"] for r in responses.values()), (path, method)
