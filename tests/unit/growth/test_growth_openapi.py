"""The growth API's OpenAPI document is complete: every route, its bodies and its error answers."""

from __future__ import annotations

from services.growth.app import build_app
from services.growth.config import GrowthSettings


def test_openapi_lists_every_endpoint_with_its_answers() -> None:
    doc = build_app(GrowthSettings()).openapi()
    paths = doc["paths"]
    expected = {
        ("/v1/flags", "get"),
        ("/v1/flags/stream", "get"),
        ("/v1/flags/evaluate", "post"),
        ("/v1/admin/flags/{key}", "get"),
        ("/v1/admin/flags/{key}", "put"),
        ("/v1/admin/flags/{key}", "patch"),
        ("/v1/admin/flags/{key}", "delete"),
        ("/v1/admin/flags/{key}/history", "get"),
        ("/v1/onboarding/{customer_id}/{person_id}/next", "get"),
        ("/v1/onboarding/{customer_id}/{person_id}/progress", "get"),
        ("/v1/onboarding/{customer_id}/{person_id}/steps/{step_id}/complete", "post"),
        ("/v1/activation/{customer_id}/{person_id}", "get"),
        ("/v1/activation/{customer_id}/{person_id}/stream", "get"),
    }
    present = {(p, m) for p, ops in paths.items() for m in ops}
    assert expected <= present, expected - present
    for path, method in expected:
        op = paths[path][method]
        assert op.get("summary"), (path, method)
        assert "200" in op["responses"], (path, method)
        assert "422" in op["responses"] or "503" in op["responses"], (path, method)
    assert "EvaluateRequest" in doc["components"]["schemas"]
    assert "text/event-stream" in paths["/v1/flags/stream"]["get"]["responses"]["200"]["content"]
    assert "401" in paths["/v1/admin/flags/{key}"]["put"]["responses"]
