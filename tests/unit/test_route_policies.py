"""Every route of every HTTP service declares exactly one policy, and docs/security.md shows them all."""

from __future__ import annotations

import pytest

from services.devstack import routes


@pytest.fixture(scope="module")
def rows() -> list[routes.RouteRow]:
    return routes.all_routes()


def test_every_route_of_every_service_declares_one_policy(rows: list[routes.RouteRow]) -> None:
    assert {r.service for r in rows} == {s for s, _, _ in routes.HTTP_SERVICES}
    undeclared = [f"{r.service} {r.method} {r.path}" for r in rows if len(r.policies) != 1]
    assert not undeclared, f"routes without exactly one policy: {undeclared}"


def test_only_ops_docs_sign_in_registry_reads_and_webhooks_are_open(rows: list[routes.RouteRow]) -> None:
    open_paths = {(r.service, r.path) for r in rows if r.kind in ("public", "stripe-signature")}
    for service, path in open_paths:
        assert (
            path in ("/metrics", "/livez", "/readyz", "/healthz", "/openapi.json", "/docs", "/redoc")
            or path.startswith("/docs/")
            or service == "schema-registry"
            or path == "/v1/stripe/webhooks"
            or (service, path) == ("billing-reporter", "/v1/plans")  # the public price list
            or path in ("/auth/login", "/auth/callback", "/auth/logout", "/auth/oidc/start", "/auth/token")
        ), (service, path)


def test_security_doc_is_current(rows: list[routes.RouteRow]) -> None:
    current = routes.DOC.read_text()
    assert routes.render(current, rows) == current, "run: python -m services.devstack.routes"


def test_every_credentialed_operation_documents_its_401_and_403(rows: list[routes.RouteRow]) -> None:
    """A client generated from the OpenAPI document (and schemathesis) learns every refusal the policy can
    answer; the kernel adds them from the declared policy (auth.document_refusals), so no route forgets."""
    kinds = {(r.service, r.method, r.path): r.kind for r in rows}
    missing = []
    for service, _, build in routes.HTTP_SERVICES:
        for path, operations in build().openapi()["paths"].items():
            for method, operation in operations.items():
                if kinds.get((service, method.upper(), path)) in (None, "public", "stripe-signature"):
                    continue
                missing += [
                    f"{service} {method.upper()} {path}: {code}"
                    for code in ("401", "403")
                    if code not in operation.get("responses", {})
                ]
    assert not missing, missing
