"""The same ops endpoints mounted on a FastAPI app (in-process ASGI calls, no sockets)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.kernel import metrics
from services.kernel.ops import ops_routes


def test_ops_routes_serve_metrics_liveness_and_readiness_on_a_fastapi_app() -> None:
    registry = metrics.CollectorRegistry()
    metrics.gauge("plg_ops_routes_test_up", "Up.", (), registry).set(1)
    ready = {"kafka": False}
    app = FastAPI()
    ops_routes(app, {"kafka": lambda: ready["kafka"]}, registry=registry)
    client = TestClient(app)

    metrics_response = client.get("/metrics")
    assert metrics_response.status_code == 200
    assert metrics_response.headers["content-type"].startswith("text/plain; version=")
    assert "plg_ops_routes_test_up 1.0" in metrics_response.text
    assert client.get("/livez").status_code == 200
    not_ready = client.get("/readyz")
    assert (not_ready.status_code, not_ready.json()) == (503, {"status": "not ready", "failing": ["kafka"]})

    ready["kafka"] = True
    assert client.get("/readyz").json() == {"status": "ready"}
    assert "/metrics" not in app.openapi()["paths"]
