"""Composition root of the schema registry: ``build_app(settings)`` wires the HTTP API (Confluent's REST
surface, its routes in ``services/schema_registry/api.py``) to the PostgreSQL store.

The lifespan applies the migrations, opens the connection pool and the registry off the event loop
(:func:`open_resources`, the routes' :class:`~services.schema_registry.api.RegistryResources`) and closes
them on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.kernel import auth, db
from services.kernel import http as kernel_http
from services.kernel.http import HttpError, RequestOutcome, install_error_handlers
from services.kernel.lifecycle import Lifecycle
from services.kernel.ops import ops_routes
from services.schema_registry import api
from services.schema_registry.api import (
    CONTENT_TYPE,
    RegistryJSONResponse,
    RegistryMetrics,
    RegistryResources,
)
from services.schema_registry.auth import WWW_AUTHENTICATE, AccessPolicies
from services.schema_registry.config import RegistrySettings
from services.schema_registry.model import ErrorCode, RegistryError
from services.schema_registry.registry import Registry
from services.schema_registry.store import Store

log = logging.getLogger(__name__)

SERVICE = "schema-registry"

# Confluent error codes for the kernel's answers (see services.kernel.http); the rest use the HTTP status.
_CONFLUENT_CODES = {
    kernel_http.DATABASE_UNAVAILABLE: int(ErrorCode.STORE_ERROR),
    kernel_http.INTERNAL_ERROR: 500,
    "too_large": int(ErrorCode.SCHEMA_TOO_LARGE),
}


def confluent_error_body(status: int, code: str, message: str, request_id: str) -> dict[str, Any]:
    """The kernel's error answers in Confluent's ``{"error_code", "message"}``, plus the request id (which
    Confluent's clients ignore and the logs carry)."""
    if code in (kernel_http.NOT_FOUND, kernel_http.METHOD_NOT_ALLOWED):
        message = f"HTTP {status} {message}"
    elif code == kernel_http.DATABASE_UNAVAILABLE:
        message = f"Error in the backend data store: unavailable; {message}"
    return {"error_code": _CONFLUENT_CODES.get(code, status), "message": message, "request_id": request_id}


def _too_big_for_the_store(exc: Exception) -> HttpError:
    # PostgreSQL's index on subjects/fingerprints refuses keys over ~2.7 KB (SQLSTATE 54000): the input is
    # too large, not the database down (psycopg classes it as an OperationalError).
    return HttpError(
        422, "too_large", f"Input too large for the schema store: {str(exc).splitlines()[0][:200]}"
    )


def error_response(error: RegistryError) -> JSONResponse:
    headers = {"WWW-Authenticate": WWW_AUTHENTICATE} if error.code is ErrorCode.UNAUTHORIZED else None
    return RegistryJSONResponse(error.body(), status_code=error.http_status, headers=headers)


def open_resources(
    settings: RegistrySettings, life: Lifecycle, app: FastAPI, metrics: RegistryMetrics
) -> RegistryResources:
    """Migrations, the pool, the store and the registry — on a worker thread, never the event loop; each
    piece registered on ``life`` as it opens (a failure closes the rest)."""
    url = settings.database.url.get_secret_value()
    if settings.migrate:
        applied = db.migrate(url)
        if applied:
            log.info("applied migrations %s", applied)
    pool = life.push(db.open_pool(settings.database, SERVICE), "database pool")
    store = Store(pool, settings.db_timeout_seconds)
    auth.install(app, auth.open_authenticator(pool, settings.auth))
    registry = Registry(store, settings.default_compatibility, settings.cache_size)
    return RegistryResources(store, registry, metrics)


def build_app(settings: RegistrySettings, lifecycle: Lifecycle | None = None) -> FastAPI:
    """The registry's ASGI app; its lifespan opens the store on ``lifecycle`` and closes the lifecycle."""
    metrics = RegistryMetrics()
    access = AccessPolicies(settings.admin_token, settings.protect_reads)
    life = lifecycle or Lifecycle(SERVICE)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            app.state.resources = await run_in_threadpool(open_resources, settings, life, app, metrics)
            log.info(
                "schema registry ready on %s:%s (writes %s)",
                settings.host,
                settings.port,
                "need an operator or the admin token" if access.write.enabled else "open",
            )
            yield
        finally:
            app.state.resources = None
            auth.install(app, None)
            await run_in_threadpool(life.close)
            log.info("schema registry stopped")

    app = FastAPI(
        title="plg schema registry",
        description="Confluent-compatible schema registry backed by PostgreSQL",
        lifespan=lifespan,
        default_response_class=RegistryJSONResponse,
        openapi_url=None,  # hand-written in openapi.py: the handlers read raw requests
        docs_url=None,
        redoc_url=None,
    )
    app.state.access = access  # the routes' policies (services/schema_registry/auth.py)

    # -- errors: always Confluent's {"error_code", "message"} ------------------------------------------

    @app.exception_handler(RegistryError)
    async def _registry_error(request: Request, exc: RegistryError) -> Response:
        return error_response(exc)

    @app.exception_handler(psycopg.DataError)
    async def _data_error(request: Request, exc: psycopg.DataError) -> Response:
        # Input PostgreSQL refuses to store or compare (bad encoding, U+0000, malformed uuid): the
        # client's fault, so a 400 naming the reason rather than a 500.
        return RegistryJSONResponse(
            {"error_code": int(ErrorCode.BAD_REQUEST), "message": f"Invalid input: {exc}".strip()},
            status_code=400,
        )

    # Everything else — unknown routes and methods, a database that is down (503, retried by
    # confluent-kafka's client; /readyz fails meanwhile), a body that never arrives (408), our own bugs
    # (500, logged with the request id) — is the kernel's HTTP error discipline, in Confluent's shape.
    # Every answer, 500s included, is counted by ``observe``.
    def observe(outcome: RequestOutcome) -> None:
        route = outcome.route or "unmatched"
        metrics.requests.labels(outcome.method, route, str(outcome.status)).inc()
        metrics.latency.labels(outcome.method, route).observe(outcome.seconds)

    install_error_handlers(
        app,
        service=SERVICE,
        error_body=confluent_error_body,
        media_type=CONTENT_TYPE,
        errors={
            psycopg.errors.ProgramLimitExceeded: _too_big_for_the_store,
            # Confluent's answer to an oversized schema (422, 42209), for the kernel's cap too.
            kernel_http.BodyTooLarge: lambda _exc: HttpError(
                422,
                "too_large",
                f"Request body larger than {settings.max_request_bytes} bytes (REGISTRY_MAX_REQUEST_BYTES)",
            ),
        },
        observe=observe,
        body_timeout_seconds=settings.body_read_timeout_seconds,
        max_body_bytes=settings.max_request_bytes,  # enforced while the body streams in
    )

    def database_ready() -> bool:
        res: RegistryResources | None = getattr(app.state, "resources", None)
        if res is None:
            return False
        res.store.ping()
        return True

    # /metrics, /livez and /readyz (database reachable) as every plg service has them.
    ops_routes(app, {"database": database_ready}, registry=metrics.registry)
    app.include_router(api.router)
    return app
