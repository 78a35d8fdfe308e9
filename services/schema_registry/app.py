"""Composition root of the schema registry: ``build_app(settings)`` wires the HTTP API (Confluent's REST
surface, as confluent-kafka's ``SchemaRegistryClient`` and Avro serdes use it) to the PostgreSQL store.

The lifespan applies the migrations, opens the connection pool and closes it on shutdown; every request
handler runs its blocking work (SQL, Avro parsing and compatibility checks) on the thread pool.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

import psycopg
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.kernel import auth, db
from services.kernel import http as kernel_http
from services.kernel.http import HttpError, RequestOutcome, install_error_handlers
from services.kernel.lifecycle import Lifecycle
from services.kernel.metrics import CollectorRegistry, counter, histogram
from services.kernel.ops import ops_routes
from services.schema_registry import model, openapi
from services.schema_registry.auth import WWW_AUTHENTICATE, RegistryAccess
from services.schema_registry.config import RegistrySettings
from services.schema_registry.model import ErrorCode, RegistryError
from services.schema_registry.registry import Registry
from services.schema_registry.store import Store

log = logging.getLogger(__name__)

SERVICE = "schema-registry"
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
T = TypeVar("T")


class RegistryJSONResponse(JSONResponse):
    media_type = CONTENT_TYPE


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


def _path_is_utf8(request: Request) -> bool:
    try:
        unquote_to_bytes(request.scope.get("raw_path") or b"").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def error_response(error: RegistryError) -> JSONResponse:
    headers = {"WWW-Authenticate": WWW_AUTHENTICATE} if error.code is ErrorCode.UNAUTHORIZED else None
    return RegistryJSONResponse(error.body(), status_code=error.http_status, headers=headers)


class RegistryMetrics:
    """Request counts and latencies, on a registry of their own so several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = counter(
            "plg_schema_registry_requests",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
            self.registry,
        )
        self.latency = histogram(
            "plg_schema_registry_request_duration_seconds",
            "HTTP request latency, by method and route template.",
            ("method", "route"),
            self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.registrations = counter(
            "plg_schema_registry_registrations",
            "Schema registrations: ok, or refused_<error_code>.",
            ("outcome",),
            self.registry,
        )


def build_app(settings: RegistrySettings, lifecycle: Lifecycle | None = None) -> FastAPI:
    """The registry's ASGI app; its lifespan opens the store on ``lifecycle`` and closes the lifecycle."""
    metrics = RegistryMetrics()
    read_access = RegistryAccess(settings.admin_token, settings.protect_reads, write=False)
    write_access = RegistryAccess(settings.admin_token, settings.protect_reads, write=True)
    life = lifecycle or Lifecycle(SERVICE)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            url = settings.database.url.get_secret_value()
            if settings.migrate:
                applied = await run_in_threadpool(db.migrate, url)
                if applied:
                    log.info("applied migrations %s", applied)
            pool = life.push(
                await run_in_threadpool(db.open_pool, settings.database, SERVICE), "database pool"
            )
            app.state.store = Store(pool, settings.db_timeout_seconds)
            auth.install(app, auth.open_authenticator(pool, settings.auth))
            app.state.registry = Registry(
                app.state.store, settings.default_compatibility, settings.cache_size
            )
            log.info(
                "schema registry ready on %s:%s (writes %s)",
                settings.host,
                settings.port,
                "need an operator or the admin token" if write_access.enabled else "open",
            )
            yield
        finally:
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
    app.state.settings = settings
    app.state.metrics = metrics

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

    # -- helpers ------------------------------------------------------------------------------------------

    def clean_inputs(request: Request) -> None:
        # PostgreSQL cannot store U+0000 and subjects may not hold control characters: refuse such input
        # precisely here instead of failing deep in the driver.
        if "subject" in request.path_params:
            subject = request.path_params["subject"]
            if "\ufffd" in subject and not _path_is_utf8(request):
                # The server decoded invalid UTF-8 (%ED%A0%80...) into U+FFFD: storing that would silently
                # register another subject than the one asked for.
                raise RegistryError(ErrorCode.INVALID_SUBJECT, "The specified subject is not valid UTF-8.")
            model.validate_subject(subject)
        for name, value in [*request.path_params.items(), *request.query_params.multi_items()]:
            if "\x00" in str(value):
                raise RegistryError(ErrorCode.BAD_REQUEST, f"Parameter {name!r} contains a NUL character")

    # The policy first (services/schema_registry/auth.py), then the inputs; async: both are cheap, so they
    # run on the event loop rather than costing a thread-pool hop.
    async def checked_inputs(request: Request) -> None:
        clean_inputs(request)

    read = [Depends(read_access), Depends(checked_inputs)]
    write = [Depends(write_access), Depends(checked_inputs)]

    def registry_of(request: Request) -> Registry:
        registry: Registry = request.app.state.registry
        return registry

    async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(partial(fn, *args, **kwargs))

    async def json_body(request: Request) -> Any:
        # At most REGISTRY_MAX_REQUEST_BYTES: the kernel's body cap stops a larger one while it streams in.
        return model.parse_json_body(await request.body())

    def flag(request: Request, name: str, default: bool = False) -> bool:
        return model.parse_bool(request.query_params.get(name), name, default)

    def schema_id(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise RegistryError(
                ErrorCode.SCHEMA_NOT_FOUND, f"Schema {raw!r} not found: ids are integers"
            ) from None
        if not 0 < value < 2**31:
            raise RegistryError(ErrorCode.SCHEMA_NOT_FOUND, f"Schema {value} not found")
        return value

    def paged(request: Request, items: list[Any]) -> list[Any]:
        offset = model.parse_int(request.query_params.get("offset"), "offset", 0)
        limit = model.parse_int(request.query_params.get("limit"), "limit", -1)
        return model.paginate(items, offset, limit)

    # -- operations ---------------------------------------------------------------------------------------

    def database_ready() -> bool:
        store: Store | None = getattr(app.state, "store", None)
        if store is None:
            return False
        store.ping()
        return True

    # /metrics, /livez and /readyz (database reachable) as every plg service has them.
    ops_routes(app, {"database": database_ready}, registry=metrics.registry)

    openapi_document = openapi.document(app.version)

    @app.get(
        "/openapi.json", include_in_schema=False, dependencies=[Depends(auth.public("the API description"))]
    )
    async def openapi_json() -> Response:
        """The registry's OpenAPI document (services/schema_registry/openapi.py)."""
        return JSONResponse(openapi_document)

    @app.get(
        "/healthz", include_in_schema=False, dependencies=[Depends(auth.public("liveness for the launcher"))]
    )
    async def healthz() -> dict[str, str]:
        """Liveness under the name the local stack's launcher polls (same as /livez)."""
        return {"status": "ok"}

    # -- Confluent API: root, schemas ---------------------------------------------------------------------

    @app.get("/", dependencies=read)
    async def root() -> dict[str, Any]:
        return {}

    @app.get("/contexts", dependencies=read)
    async def contexts(request: Request) -> list[str]:
        return paged(request, ["."])

    @app.get("/schemas/types", dependencies=read)
    async def schema_types() -> list[str]:
        return list(model.SUPPORTED_SCHEMA_TYPES)

    @app.get("/schemas", dependencies=read)
    async def list_schemas(request: Request) -> list[dict[str, Any]]:
        q = request.query_params
        items = await call(
            registry_of(request).list_schemas,
            q.get("subjectPrefix", ""),
            flag(request, "deleted"),
            flag(request, "latestOnly"),
        )
        return paged(request, items)

    @app.get("/schemas/ids/{sid}", dependencies=read)
    async def get_schema(request: Request, sid: str) -> dict[str, Any]:
        return await call(
            registry_of(request).schema_by_id,
            schema_id(sid),
            request.query_params.get("format"),
            flag(request, "fetchMaxId"),
        )

    @app.get("/schemas/ids/{sid}/schema", dependencies=read)
    async def get_schema_text(request: Request, sid: str) -> Response:
        text = await call(registry_of(request).schema_text_by_id, schema_id(sid))
        return Response(text, media_type=CONTENT_TYPE)

    @app.get("/schemas/ids/{sid}/subjects", dependencies=read)
    async def get_schema_subjects(request: Request, sid: str) -> list[str]:
        items = await call(
            registry_of(request).subjects_of_schema,
            schema_id(sid),
            request.query_params.get("subject"),
            flag(request, "deleted"),
        )
        return paged(request, items)

    @app.get("/schemas/ids/{sid}/versions", dependencies=read)
    async def get_schema_versions(request: Request, sid: str) -> list[dict[str, Any]]:
        items = await call(
            registry_of(request).versions_of_schema,
            schema_id(sid),
            request.query_params.get("subject"),
            flag(request, "deleted"),
        )
        return paged(request, items)

    @app.get("/schemas/guids/{guid}", dependencies=read)
    async def get_schema_by_guid(request: Request, guid: str) -> dict[str, Any]:
        return await call(registry_of(request).schema_by_guid, guid)

    # -- subjects -----------------------------------------------------------------------------------------

    @app.get("/subjects", dependencies=read)
    async def list_subjects(request: Request) -> list[str]:
        items = await call(
            registry_of(request).subjects,
            request.query_params.get("subjectPrefix", ""),
            flag(request, "deleted"),
            flag(request, "deleted_only"),
        )
        return paged(request, items)

    @app.get("/subjects/{subject}/versions", dependencies=read)
    async def list_versions(request: Request, subject: str) -> list[int]:
        items = await call(
            registry_of(request).versions, subject, flag(request, "deleted"), flag(request, "deleted_only")
        )
        return paged(request, items)

    @app.post("/subjects/{subject}/versions", dependencies=write)
    async def register(request: Request, subject: str) -> dict[str, Any]:
        body = await json_body(request)
        try:
            result = await call(registry_of(request).register, subject, body, flag(request, "normalize"))
        except RegistryError as exc:
            metrics.registrations.labels(f"refused_{int(exc.code)}").inc()
            raise
        metrics.registrations.labels("ok").inc()
        return result

    @app.get("/subjects/{subject}/versions/{version}", dependencies=read)
    async def get_version(request: Request, subject: str, version: str) -> dict[str, Any]:
        return await call(
            registry_of(request).version, subject, model.parse_version(version), flag(request, "deleted")
        )

    @app.get("/subjects/{subject}/versions/{version}/schema", dependencies=read)
    async def get_version_schema(request: Request, subject: str, version: str) -> Response:
        found = await call(
            registry_of(request).version, subject, model.parse_version(version), flag(request, "deleted")
        )
        return Response(found["schema"], media_type=CONTENT_TYPE)

    @app.get("/subjects/{subject}/versions/{version}/referencedby", dependencies=read)
    async def get_referenced_by(request: Request, subject: str, version: str) -> list[int]:
        items = await call(registry_of(request).referenced_by, subject, model.parse_version(version))
        return paged(request, items)

    @app.get("/subjects/{subject}/metadata", dependencies=read)
    async def get_latest_with_metadata(request: Request, subject: str) -> dict[str, Any]:
        keys = request.query_params.getlist("key")
        values = request.query_params.getlist("value")
        if len(keys) != len(values):
            raise RegistryError(
                ErrorCode.BAD_REQUEST, "Query parameters 'key' and 'value' must come in pairs"
            )
        return await call(
            registry_of(request).latest_with_metadata,
            subject,
            dict(zip(keys, values, strict=True)),
            flag(request, "deleted"),
        )

    @app.post("/subjects/{subject}", dependencies=read)
    async def lookup(request: Request, subject: str) -> dict[str, Any]:
        body = await json_body(request)
        return await call(registry_of(request).lookup, subject, body, flag(request, "deleted"))

    @app.delete("/subjects/{subject}", dependencies=write)
    async def delete_subject(request: Request, subject: str) -> list[int]:
        return await call(registry_of(request).delete_subject, subject, flag(request, "permanent"))

    @app.delete("/subjects/{subject}/versions/{version}", dependencies=write)
    async def delete_version(request: Request, subject: str, version: str) -> int:
        return await call(
            registry_of(request).delete_version,
            subject,
            model.parse_version(version),
            flag(request, "permanent"),
        )

    # -- compatibility ------------------------------------------------------------------------------------

    @app.post("/compatibility/subjects/{subject}/versions/{version}", dependencies=read)
    async def test_compatibility(request: Request, subject: str, version: str) -> dict[str, Any]:
        spec = model.parse_version(version)
        body = await json_body(request)
        return await call(
            registry_of(request).test_compatibility, subject, spec, body, flag(request, "verbose")
        )

    @app.post("/compatibility/subjects/{subject}/versions", dependencies=read)
    async def test_compatibility_all(request: Request, subject: str) -> dict[str, Any]:
        body = await json_body(request)
        return await call(
            registry_of(request).test_compatibility, subject, None, body, flag(request, "verbose")
        )

    # -- config -------------------------------------------------------------------------------------------

    @app.get("/config", dependencies=read)
    async def get_global_config(request: Request) -> dict[str, Any]:
        return await call(registry_of(request).get_config, None, True)

    @app.put("/config", dependencies=write)
    async def put_global_config(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        return await call(registry_of(request).set_config, None, body)

    @app.delete("/config", dependencies=write)
    async def delete_global_config(request: Request) -> dict[str, Any]:
        return await call(registry_of(request).delete_config, None)

    @app.get("/config/{subject}", dependencies=read)
    async def get_subject_config(request: Request, subject: str) -> dict[str, Any]:
        return await call(registry_of(request).get_config, subject, flag(request, "defaultToGlobal"))

    @app.put("/config/{subject}", dependencies=write)
    async def put_subject_config(request: Request, subject: str) -> dict[str, Any]:
        body = await json_body(request)
        return await call(registry_of(request).set_config, subject, body)

    @app.delete("/config/{subject}", dependencies=write)
    async def delete_subject_config(request: Request, subject: str) -> dict[str, Any]:
        return await call(registry_of(request).delete_config, subject)

    # -- mode ---------------------------------------------------------------------------------------------

    @app.get("/mode", dependencies=read)
    async def get_global_mode(request: Request) -> dict[str, Any]:
        return await call(registry_of(request).get_mode, None, True)

    @app.put("/mode", dependencies=write)
    async def put_global_mode(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        return await call(registry_of(request).set_mode, None, body, flag(request, "force"))

    @app.get("/mode/{subject}", dependencies=read)
    async def get_subject_mode(request: Request, subject: str) -> dict[str, Any]:
        return await call(registry_of(request).get_mode, subject, flag(request, "defaultToGlobal"))

    @app.put("/mode/{subject}", dependencies=write)
    async def put_subject_mode(request: Request, subject: str) -> dict[str, Any]:
        body = await json_body(request)
        return await call(registry_of(request).set_mode, subject, body, flag(request, "force"))

    @app.delete("/mode/{subject}", dependencies=write)
    async def delete_subject_mode(request: Request, subject: str) -> dict[str, Any]:
        return await call(registry_of(request).delete_mode, subject)

    return app
