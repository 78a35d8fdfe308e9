"""The entitlement API's OpenAPI document lists every answer it gives, with its body's schema."""

from __future__ import annotations

from services.entitlements.app import build_app
from services.entitlements.config import EntitlementsSettings


def test_the_check_documents_its_200_404_409_and_503_answers_with_their_bodies() -> None:
    doc = build_app(EntitlementsSettings()).openapi()

    responses = doc["paths"]["/v1/entitlements/{customer_id}/{feature}"]["get"]["responses"]
    schemas = doc["components"]["schemas"]

    def body(status: str) -> dict:
        ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
        return schemas[ref.rsplit("/", 1)[-1]]

    assert {"200", "404", "409", "503"} <= set(responses)
    for status in ("404", "409", "503"):
        assert set(body(status)["required"]) == {"code", "message"}
    assert body("404")["properties"]["code"]["enum"] == ["customer_not_found", "unknown_feature"]
    assert body("503")["properties"]["code"]["enum"] == ["usage_view_not_ready", "database_unavailable"]
    assert set(body("500")["required"]) == {"code", "message", "request_id"}
    assert "Retry-After" in responses["503"]["headers"]
    ok = body("200")
    assert {"allowed", "usage", "limit", "remaining", "upgrade", "period_start"} <= set(ok["properties"])
