"""Every HTTP service has the one shape (docs/kernel.md "How to add an HTTP service"): its routes live in
routers outside ``app.py``, and the example the page shows is the code as it is."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from services.devstack import routes
from services.kernel.auth import iter_routes
from services.kernel.http import install_error_handlers, resources_dependency

ROOT = Path(__file__).resolve().parents[3]
HTTP_SERVICES = (
    "ingest",
    "schema_registry",
    "entitlements",
    "billing_reporter",
    "health_score",
    "growth",
    "analytics",
)


@pytest.mark.parametrize("service", HTTP_SERVICES)
def test_no_route_is_declared_in_the_composition_root(service: str) -> None:
    app_py = (ROOT / "services" / service / "app.py").read_text()
    declared = re.findall(r"^\s*@app\.(get|post|put|patch|delete)\(", app_py, flags=re.MULTILINE)
    assert not declared, f"services/{service}/app.py declares routes: move them into api.py routers"
    assert (ROOT / "services" / service / "api.py").exists()
    assert "include_router(" in app_py


# Routes built by a function at build time rather than declared on a module-level router, each with why.
BUILT_ROUTES = {
    # The price list is rendered once from the plans file build_app receives; it uses no running resource.
    ("billing-reporter", "/v1/plans"): "services.billing_reporter.pricelist",
}


def test_every_route_is_declared_on_a_router_not_registered_by_a_function_over_the_app() -> None:
    """A route registered inside a function (``onboarding_routes(app, growth)``) closes over a callable that
    fetches the resources; a route of the one shape is a module-level function of a router, and receives
    the resources as a dependency. The kernel's own routes (ops, sign-in pages) are built per app."""
    closures = []
    for service, _, build in routes.HTTP_SERVICES:
        for path, route, _ in iter_routes(build().routes):
            endpoint = getattr(route, "endpoint", None)
            module = getattr(endpoint, "__module__", "")
            if endpoint is None or module.startswith(("services.kernel.", "fastapi.")):
                continue
            if "<locals>" in endpoint.__qualname__ and BUILT_ROUTES.get((service, path)) != module:
                closures.append(f"{service} {path}: {module}.{endpoint.__qualname__}")
    assert not closures, f"routes registered by a function, not declared on an APIRouter: {closures}"


def test_the_http_service_example_in_the_docs_is_the_code() -> None:
    docs = (ROOT / "docs" / "kernel.md").read_text()
    shown = docs.split("<!-- http-example:start -->\n```python\n", 1)[1].split(
        "```\n<!-- http-example:end", 1
    )[0]
    source: Path | None = None
    checked = 0
    for line in shown.splitlines():
        text = line.strip()
        named = re.match(r"# (services/\S+\.py)", text)
        if named:
            source = ROOT / named.group(1)
            code = {c.strip() for c in source.read_text().splitlines()}
            continue
        if not text or text == "...":
            continue
        assert source is not None
        assert text in code, f"docs/kernel.md shows a line {source.relative_to(ROOT)} does not have: {text!r}"
        checked += 1
    assert checked > 30


@dataclass
class Running:
    greeting: str


running = resources_dependency(Running, "the greeter is starting or stopping")


def test_routes_get_the_running_resources_or_a_503_while_the_service_starts() -> None:
    app = FastAPI()

    @app.get("/hello")
    async def hello(res: Annotated[Running, Depends(running)]) -> dict[str, str]:
        return {"greeting": res.greeting}

    install_error_handlers(app, service="greeter")
    with TestClient(app) as client:
        starting = client.get("/hello")
        assert starting.status_code == 503
        assert starting.headers["Retry-After"] == "1"
        assert starting.json()["code"] == "service_unavailable"
        app.state.resources = Running("hi")
        assert client.get("/hello").json() == {"greeting": "hi"}


def _blocking_dependencies(dependant: Any, seen: set[int]) -> list[str]:
    """Names of the dependencies under ``dependant`` that FastAPI would run in its thread pool."""
    found = []
    for sub in dependant.dependencies:
        call = sub.call
        if id(call) in seen:
            continue
        seen.add(id(call))
        target = call.__call__ if not inspect.isroutine(call) and callable(call) else call
        if not inspect.iscoroutinefunction(target) and not inspect.isasyncgenfunction(target):
            found.append(getattr(call, "__qualname__", repr(call)))
        found += _blocking_dependencies(sub, seen)
    return found


def test_every_dependency_runs_on_the_event_loop() -> None:
    """A plain ``def`` dependency costs each request a hop through the thread pool and back (FastAPI runs it
    with ``run_in_threadpool``): two GIL hand-offs that showed in the entitlement check's p99 under load.
    Dependencies only look things up, so each is ``async def``; blocking work belongs in the route."""
    blocking = []
    for service, _, build in routes.HTTP_SERVICES:
        for _, route, _ in iter_routes(build().routes):
            dependant = getattr(route, "dependant", None)
            if dependant is not None:
                blocking += [
                    f"{service} {route.path}: {name}" for name in _blocking_dependencies(dependant, set())
                ]
    assert not blocking, f"make these dependencies async def: {sorted(set(blocking))}"
