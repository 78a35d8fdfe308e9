"""The schema registry's routes: Confluent's REST surface (as confluent-kafka's ``SchemaRegistryClient`` and
Avro serdes use it) over the PostgreSQL store, each with its policy (``services/schema_registry/auth.py``).

Resources come in as a dependency (:func:`resources`, opened by the app's lifespan); every handler runs its
blocking work (SQL, Avro parsing and compatibility checks) on the thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Annotated, Any, TypeVar
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.kernel import auth
from services.kernel.http import resources_dependency
from services.kernel.metrics import CollectorRegistry, counter, histogram
from services.schema_registry import model, openapi
from services.schema_registry.auth import AppAccess
from services.schema_registry.model import ErrorCode, RegistryError
from services.schema_registry.registry import Registry
from services.schema_registry.store import Store

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
T = TypeVar("T")


class RegistryJSONResponse(JSONResponse):
    media_type = CONTENT_TYPE


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


@dataclass
class RegistryResources:
    """What the routes need, opened by the app's lifespan (``app.state.resources``)."""

    store: Store
    registry: Registry
    metrics: RegistryMetrics


resources = resources_dependency(RegistryResources, "the schema registry is starting or stopping")


Resources = Annotated[RegistryResources, Depends(resources)]

# -- helpers ----------------------------------------------------------------------------------------------


def _path_is_utf8(request: Request) -> bool:
    try:
        unquote_to_bytes(request.scope.get("raw_path") or b"").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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


read = [Depends(AppAccess(write=False)), Depends(checked_inputs)]
write = [Depends(AppAccess(write=True)), Depends(checked_inputs)]


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


@cache
def _openapi_document(version: str) -> dict[str, Any]:
    return openapi.document(version)


router = APIRouter(default_response_class=RegistryJSONResponse)


@router.get(
    "/openapi.json", include_in_schema=False, dependencies=[Depends(auth.public("the API description"))]
)
async def openapi_json(request: Request) -> Response:
    """The registry's OpenAPI document (services/schema_registry/openapi.py)."""
    return JSONResponse(_openapi_document(request.app.version))


@router.get(
    "/healthz", include_in_schema=False, dependencies=[Depends(auth.public("liveness for the launcher"))]
)
async def healthz() -> dict[str, str]:
    """Liveness under the name the local stack's launcher polls (same as /livez)."""
    return {"status": "ok"}


# -- Confluent API: root, schemas ---------------------------------------------------------------------


@router.get("/", dependencies=read)
async def root() -> dict[str, Any]:
    return {}


@router.get("/contexts", dependencies=read)
async def contexts(request: Request) -> list[str]:
    return paged(request, ["."])


@router.get("/schemas/types", dependencies=read)
async def schema_types() -> list[str]:
    return list(model.SUPPORTED_SCHEMA_TYPES)


@router.get("/schemas", dependencies=read)
async def list_schemas(request: Request, res: Resources) -> list[dict[str, Any]]:
    q = request.query_params
    items = await call(
        res.registry.list_schemas,
        q.get("subjectPrefix", ""),
        flag(request, "deleted"),
        flag(request, "latestOnly"),
    )
    return paged(request, items)


@router.get("/schemas/ids/{sid}", dependencies=read)
async def get_schema(request: Request, sid: str, res: Resources) -> dict[str, Any]:
    return await call(
        res.registry.schema_by_id,
        schema_id(sid),
        request.query_params.get("format"),
        flag(request, "fetchMaxId"),
    )


@router.get("/schemas/ids/{sid}/schema", dependencies=read)
async def get_schema_text(request: Request, sid: str, res: Resources) -> Response:
    text = await call(res.registry.schema_text_by_id, schema_id(sid))
    return Response(text, media_type=CONTENT_TYPE)


@router.get("/schemas/ids/{sid}/subjects", dependencies=read)
async def get_schema_subjects(request: Request, sid: str, res: Resources) -> list[str]:
    items = await call(
        res.registry.subjects_of_schema,
        schema_id(sid),
        request.query_params.get("subject"),
        flag(request, "deleted"),
    )
    return paged(request, items)


@router.get("/schemas/ids/{sid}/versions", dependencies=read)
async def get_schema_versions(request: Request, sid: str, res: Resources) -> list[dict[str, Any]]:
    items = await call(
        res.registry.versions_of_schema,
        schema_id(sid),
        request.query_params.get("subject"),
        flag(request, "deleted"),
    )
    return paged(request, items)


@router.get("/schemas/guids/{guid}", dependencies=read)
async def get_schema_by_guid(request: Request, guid: str, res: Resources) -> dict[str, Any]:
    return await call(res.registry.schema_by_guid, guid)


# -- subjects -----------------------------------------------------------------------------------------


@router.get("/subjects", dependencies=read)
async def list_subjects(request: Request, res: Resources) -> list[str]:
    items = await call(
        res.registry.subjects,
        request.query_params.get("subjectPrefix", ""),
        flag(request, "deleted"),
        flag(request, "deleted_only"),
    )
    return paged(request, items)


@router.get("/subjects/{subject}/versions", dependencies=read)
async def list_versions(request: Request, subject: str, res: Resources) -> list[int]:
    items = await call(
        res.registry.versions, subject, flag(request, "deleted"), flag(request, "deleted_only")
    )
    return paged(request, items)


@router.post("/subjects/{subject}/versions", dependencies=write)
async def register(request: Request, subject: str, res: Resources) -> dict[str, Any]:
    body = await json_body(request)
    try:
        result = await call(res.registry.register, subject, body, flag(request, "normalize"))
    except RegistryError as exc:
        res.metrics.registrations.labels(f"refused_{int(exc.code)}").inc()
        raise
    res.metrics.registrations.labels("ok").inc()
    return result


@router.get("/subjects/{subject}/versions/{version}", dependencies=read)
async def get_version(request: Request, subject: str, version: str, res: Resources) -> dict[str, Any]:
    return await call(res.registry.version, subject, model.parse_version(version), flag(request, "deleted"))


@router.get("/subjects/{subject}/versions/{version}/schema", dependencies=read)
async def get_version_schema(request: Request, subject: str, version: str, res: Resources) -> Response:
    found = await call(res.registry.version, subject, model.parse_version(version), flag(request, "deleted"))
    return Response(found["schema"], media_type=CONTENT_TYPE)


@router.get("/subjects/{subject}/versions/{version}/referencedby", dependencies=read)
async def get_referenced_by(request: Request, subject: str, version: str, res: Resources) -> list[int]:
    items = await call(res.registry.referenced_by, subject, model.parse_version(version))
    return paged(request, items)


@router.get("/subjects/{subject}/metadata", dependencies=read)
async def get_latest_with_metadata(request: Request, subject: str, res: Resources) -> dict[str, Any]:
    keys = request.query_params.getlist("key")
    values = request.query_params.getlist("value")
    if len(keys) != len(values):
        raise RegistryError(ErrorCode.BAD_REQUEST, "Query parameters 'key' and 'value' must come in pairs")
    return await call(
        res.registry.latest_with_metadata,
        subject,
        dict(zip(keys, values, strict=True)),
        flag(request, "deleted"),
    )


@router.post("/subjects/{subject}", dependencies=read)
async def lookup(request: Request, subject: str, res: Resources) -> dict[str, Any]:
    body = await json_body(request)
    return await call(res.registry.lookup, subject, body, flag(request, "deleted"))


@router.delete("/subjects/{subject}", dependencies=write)
async def delete_subject(request: Request, subject: str, res: Resources) -> list[int]:
    return await call(res.registry.delete_subject, subject, flag(request, "permanent"))


@router.delete("/subjects/{subject}/versions/{version}", dependencies=write)
async def delete_version(request: Request, subject: str, version: str, res: Resources) -> int:
    return await call(
        res.registry.delete_version,
        subject,
        model.parse_version(version),
        flag(request, "permanent"),
    )


# -- compatibility ------------------------------------------------------------------------------------


@router.post("/compatibility/subjects/{subject}/versions/{version}", dependencies=read)
async def test_compatibility(request: Request, subject: str, version: str, res: Resources) -> dict[str, Any]:
    spec = model.parse_version(version)
    body = await json_body(request)
    return await call(res.registry.test_compatibility, subject, spec, body, flag(request, "verbose"))


@router.post("/compatibility/subjects/{subject}/versions", dependencies=read)
async def test_compatibility_all(request: Request, subject: str, res: Resources) -> dict[str, Any]:
    body = await json_body(request)
    return await call(res.registry.test_compatibility, subject, None, body, flag(request, "verbose"))


# -- config -------------------------------------------------------------------------------------------


@router.get("/config", dependencies=read)
async def get_global_config(request: Request, res: Resources) -> dict[str, Any]:
    return await call(res.registry.get_config, None, True)


@router.put("/config", dependencies=write)
async def put_global_config(request: Request, res: Resources) -> dict[str, Any]:
    body = await json_body(request)
    return await call(res.registry.set_config, None, body)


@router.delete("/config", dependencies=write)
async def delete_global_config(request: Request, res: Resources) -> dict[str, Any]:
    return await call(res.registry.delete_config, None)


@router.get("/config/{subject}", dependencies=read)
async def get_subject_config(request: Request, subject: str, res: Resources) -> dict[str, Any]:
    return await call(res.registry.get_config, subject, flag(request, "defaultToGlobal"))


@router.put("/config/{subject}", dependencies=write)
async def put_subject_config(request: Request, subject: str, res: Resources) -> dict[str, Any]:
    body = await json_body(request)
    return await call(res.registry.set_config, subject, body)


@router.delete("/config/{subject}", dependencies=write)
async def delete_subject_config(request: Request, subject: str, res: Resources) -> dict[str, Any]:
    return await call(res.registry.delete_config, subject)


# -- mode ---------------------------------------------------------------------------------------------


@router.get("/mode", dependencies=read)
async def get_global_mode(request: Request, res: Resources) -> dict[str, Any]:
    return await call(res.registry.get_mode, None, True)


@router.put("/mode", dependencies=write)
async def put_global_mode(request: Request, res: Resources) -> dict[str, Any]:
    body = await json_body(request)
    return await call(res.registry.set_mode, None, body, flag(request, "force"))


@router.get("/mode/{subject}", dependencies=read)
async def get_subject_mode(request: Request, subject: str, res: Resources) -> dict[str, Any]:
    return await call(res.registry.get_mode, subject, flag(request, "defaultToGlobal"))


@router.put("/mode/{subject}", dependencies=write)
async def put_subject_mode(request: Request, subject: str, res: Resources) -> dict[str, Any]:
    body = await json_body(request)
    return await call(res.registry.set_mode, subject, body, flag(request, "force"))


@router.delete("/mode/{subject}", dependencies=write)
async def delete_subject_mode(request: Request, subject: str, res: Resources) -> dict[str, Any]:
    return await call(res.registry.delete_mode, subject)
