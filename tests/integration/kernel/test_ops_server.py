"""The ops HTTP server of non-HTTP services: /metrics, /livez, /readyz on a real loopback socket."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from services.kernel import metrics
from services.kernel.ops import OpsServer


@pytest.fixture
def registry() -> metrics.CollectorRegistry:
    registry = metrics.CollectorRegistry()
    metrics.counter("plg_ops_test_events", "Events seen.", ("kind",), registry).labels("a").inc(3)
    return registry


@pytest.fixture
def ready() -> dict[str, bool]:
    return {"kafka": True, "db": True}


@pytest.fixture
def server(registry: metrics.CollectorRegistry, ready: dict[str, bool]) -> Iterator[OpsServer]:
    checks = {name: (lambda name=name: ready[name]) for name in ready}
    with OpsServer("127.0.0.1", 0, checks, registry=registry) as ops:
        yield ops


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_metrics_are_served_in_prometheus_text_format(server: OpsServer) -> None:
    status, content_type, body = get(f"{server.url}/metrics")

    assert status == 200
    assert content_type.startswith("text/plain; version=")
    assert 'plg_ops_test_events_total{kind="a"} 3.0' in body


def test_liveness_is_always_ok(server: OpsServer, ready: dict[str, bool]) -> None:
    ready["kafka"] = False

    assert get(f"{server.url}/livez")[0] == 200


def test_readiness_reports_the_failing_checks_and_recovers(server: OpsServer, ready: dict[str, bool]) -> None:
    assert get(f"{server.url}/readyz")[:2] == (200, "application/json")

    ready["db"] = False
    status, _, body = get(f"{server.url}/readyz")
    assert status == 503
    assert json.loads(body) == {"status": "not ready", "failing": ["db"]}

    ready["db"] = True
    assert get(f"{server.url}/readyz")[0] == 200


def test_unknown_paths_are_404(server: OpsServer) -> None:
    assert get(f"{server.url}/nope")[0] == 404


def test_closing_frees_the_port() -> None:
    ops = OpsServer("127.0.0.1", 0).start()
    port = ops.port
    ops.close()

    with OpsServer("127.0.0.1", port) as again:
        assert get(f"{again.url}/livez")[0] == 200
