"""Composition root of the growth service: ``build_app(settings, lifecycle)`` returns the FastAPI app whose
lifespan opens PostgreSQL (flags, audit, onboarding progress), the producer of its telemetry and the
activation loop, all on the lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Body, Depends, FastAPI, Header, Path
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from services.customers import CustomerDirectory
from services.growth.activation_view import ActivationView
from services.growth.api_activation import activation_routes, crossing_message
from services.growth.api_models import (
    AdminFlag,
    ErrorBody,
    EvaluateRequest,
    EvaluationDetails,
    EvaluationList,
    FlagDefinition,
    FlagHistory,
    FlagsDocument,
    FlagWritten,
)
from services.growth.api_onboarding import onboarding_routes
from services.growth.config import GrowthSettings
from services.growth.files import ACTIVATION_FILE, FLAGS_FILE, ONBOARDING_FILE
from services.growth.flags import Broadcaster, Evaluator, ExposureLog, FlagsRuntime, StickyAssignments
from services.growth.flagstore import (
    CHANNEL,
    FlagConflict,
    FlagNotFound,
    FlagStore,
    InvalidFlag,
)
from services.growth.loop import ActivationLoop
from services.growth.onboarding import OnboardingConfig
from services.growth.progress import ProgressStore
from services.growth.telemetry import TelemetryWriter
from services.kernel import auth
from services.kernel.cors import CorsMiddleware
from services.kernel.db import migrate, open_pool
from services.kernel.http import HttpError, install_error_handlers, request_id_of
from services.kernel.kafka import Producer
from services.kernel.lifecycle import Lifecycle
from services.kernel.listen import Listener
from services.kernel.ops import ops_routes
from services.kernel.privacy import APPLIED, Erasure, ErasureFollower, follow_erasures
from services.kernel.serde import SchemaRegistry
from services.kernel.service import LoadedFiles
from services.kernel.sse import StreamLimits, event_stream
from services.kernel.topics import GROWTH_CHANGELOG, USAGE_EVENTS, topic
from services.kernel.workers import Workers

log = logging.getLogger(__name__)

SERVICE = "growth"
VERSION = "0.1.0"
_JSON = "application/json"

FlagKey = Annotated[
    str, Path(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$", description="The flag key (as in flags.yaml).")
]
IfMatch = Annotated[
    str | None, Header(pattern=r'^"?[0-9]{1,9}"?$', description='The version the change is based on: "3".')
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed request."},
    422: {"model": ErrorBody, "description": "Invalid parameters or body."},
    503: {"model": ErrorBody, "description": "A dependency (PostgreSQL, Kafka) is unavailable; retry."},
}
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    **auth.responses(),
    401: {"model": ErrorBody, "description": "No operator credential (token or browser session)."},
    404: {"model": ErrorBody, "description": "No such flag."},
    409: {"model": ErrorBody, "description": "If-Match names another version than the current one."},
}


# Flag definitions are the product's, the same for every customer: any key (a browser's publishable one
# too) or an operator reads them; evaluation files exposures under the key's customer.
FLAG_READER: Any = Depends(auth.publishable_key(customer_param=None))
# The flag admin API: operators only; changes are audited under the operator's name from the credential.
ADMIN_VIEWER: Any = Depends(auth.operator(auth.Role.viewer))
ADMIN_EDITOR: Any = Depends(auth.operator(auth.Role.editor))


async def _bind_customer(g: Growth, caller: auth.Caller, context: dict[str, Any]) -> None:
    """The evaluation's customer is the key's: a context naming another one is refused (403), an absent one
    is filled in. An operator names the customer in the context; an unknown one is refused (404), so no
    exposure, sticky assignment or score is ever made for a customer that does not exist."""
    named = context.get("customer_id")
    if caller.customer_id is not None:
        if named is not None and named != caller.customer_id:
            raise auth.forbidden("context.customer_id must be the API key's own customer")
        context["customer_id"] = caller.customer_id
    elif named is not None and await run_in_threadpool(g.customers.lookup, named) is None:
        raise HttpError(404, "customer_not_found", f"no customer {named!r}")


@dataclass
class Growth:
    """The resources the lifespan opened."""

    settings: GrowthSettings
    store: FlagStore
    runtime: FlagsRuntime
    evaluator: Evaluator
    listener: Listener
    telemetry: TelemetryWriter
    onboarding: OnboardingConfig
    progress: ProgressStore
    activation: ActivationView
    loop: ActivationLoop | None
    erasures: ErasureFollower
    authenticator: auth.Authenticator
    # Customers exist before growth writes anything for them (an operator may name any customer).
    customers: CustomerDirectory


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON, headers=headers)


def open_growth(
    settings: GrowthSettings,
    life: Lifecycle,
    flags_broadcaster: Broadcaster,
    activation_broadcaster: Broadcaster,
    files: LoadedFiles | None = None,
) -> Growth:
    """Open everything (blocking; from the lifespan's worker thread), each resource on ``life``."""
    document = FLAGS_FILE.of(settings, files)  # as run_service loaded them, not read again
    onboarding: OnboardingConfig = ONBOARDING_FILE.of(settings, files)
    activation_config = ACTIVATION_FILE.of(settings, files).with_events(
        onboarding.person_events | onboarding.customer_events
    )
    dsn = settings.database.url.get_secret_value()
    migrate(dsn)
    pool = life.push(open_pool(settings.database, name=SERVICE), "database pool")
    store = FlagStore(pool, document.get("segments"))
    seeded = store.seed(document)
    if seeded:
        log.info("flags seeded from the file", extra={"flags": seeded})
    runtime = FlagsRuntime(store, flags_broadcaster)
    registry = life.push(SchemaRegistry(settings.registry), "schema registry")
    events = topic(USAGE_EVENTS, settings.platform.topic_prefix)
    assert events.schema_path is not None
    encoder = registry.encoder(
        events.value_subject, events.schema_path, auto_register=settings.auto_register_schemas
    )
    # Never block a request on a full local queue: an exposure is dropped (and counted) instead.
    producer = Producer(settings.kafka, client_id="plg-growth", max_block=0.0, linger_ms=5)
    life.callback(lambda: producer.close(timeout=10.0), "producer")
    telemetry = TelemetryWriter(producer, events.name, encoder)
    sticky = StickyAssignments(
        pool, settings.sticky_cache_size, retention_days=settings.sticky_retention_days
    )
    pruning = life.push(Workers(), "sticky pruning")
    pruning.start(
        "sticky-prune", lambda stop: sticky.run_pruning(stop, settings.sticky_prune_interval_seconds)
    )
    exposures = ExposureLog(settings.exposure_memory)
    evaluator = Evaluator(runtime, telemetry, exposures, sticky)

    def forget(erasure: Erasure, new: bool) -> None:
        # The CLI deleted the rows before announcing; older requests concern rows already gone at start.
        if new:
            sticky.forget(erasure.matches)
            exposures.forget(erasure.matches)
            APPLIED.labels(SERVICE, "memory").inc()

    erasures = follow_erasures(life, settings, registry, SERVICE, forget)
    # Every committed flag change NOTIFYs: one reload per burst; every flags_poll_seconds anyway.
    listener = Listener(
        dsn,
        CHANNEL,
        name="growth-flag-listener",
        on_notify=lambda _revisions: runtime.reload(),
        on_resync=runtime.reload,
        resync_seconds=settings.flags_poll_seconds,
    )
    life.push(listener.start(), "flag change listener")
    prefix = settings.platform.topic_prefix
    view = ActivationView(
        activation_config, lambda record: activation_broadcaster.publish(crossing_message(record))
    )
    life.push(view.start(settings.kafka, topic(GROWTH_CHANGELOG, prefix).name), "activation view")
    loop = None
    if settings.activation_enabled:
        loop = life.push(
            ActivationLoop.build(settings, activation_config, registry, life, erasures), "activation loop"
        )
    # The admin token of before operators existed stays usable as an admin operator; audit rows name it.
    static = (
        {
            settings.admin_token.get_secret_value(): auth.Operator(
                "GROWTH_ADMIN_TOKEN", auth.Role.admin, "token"
            )
        }
        if settings.admin_token is not None and settings.admin_token.get_secret_value()
        else None
    )
    return Growth(
        settings,
        store,
        runtime,
        evaluator,
        listener,
        telemetry,
        onboarding,
        ProgressStore(pool),
        view,
        loop,
        erasures,
        auth.open_authenticator(pool, settings.auth, static_operators=static),
        CustomerDirectory(pool, listen=False),
    )


def build_app(
    settings: GrowthSettings, lifecycle: Lifecycle | None = None, files: LoadedFiles | None = None
) -> FastAPI:
    life = lifecycle or Lifecycle(SERVICE)
    flags_broadcaster = Broadcaster("flags")
    activation_broadcaster = Broadcaster("activation", queue_size=256)
    state: dict[str, Growth] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            flags_broadcaster.bind(asyncio.get_running_loop())
            activation_broadcaster.bind(asyncio.get_running_loop())
            state["growth"] = await asyncio.to_thread(
                open_growth, settings, life, flags_broadcaster, activation_broadcaster, files
            )
            auth.install(_app, state["growth"].authenticator)
            log.info("growth ready", extra={"host": settings.host, "port": settings.port})
            yield
        finally:
            state.pop("growth", None)
            auth.install(_app, None)
            await asyncio.to_thread(life.close)

    app = FastAPI(
        title="plg growth",
        version=VERSION,
        description=(
            "Feature flags (definitions for local evaluation, SSE changes, server-side evaluation in "
            "OpenFeature's shape, a token-protected admin API with versions and audit), activation "
            "thresholds and the onboarding engine. docs/growth.md."
        ),
        lifespan=lifespan,
    )
    app.state.sse_limits = StreamLimits(
        SERVICE,
        per_key=settings.platform.sse_max_streams_per_key,
        total=settings.platform.sse_max_streams,
    )

    def growth() -> Growth:
        g = state.get("growth")
        if g is None:
            raise HttpError(
                503, "starting", "the growth service is starting or stopping", {"Retry-After": "1"}
            )
        return g

    # -- flags -----------------------------------------------------------------------------------------------

    @app.get(
        "/v1/flags",
        response_model=FlagsDocument,
        summary="Every flag definition, for local evaluation",
        responses={
            304: {"description": "Not modified since the ETag given in If-None-Match."},
            **_ERRORS,
            **auth.responses(forbidden_too=False),
        },
        dependencies=[FLAG_READER],
    )
    async def get_flags(request: Request) -> Response:
        """The flags document the SDKs compile and evaluate locally. Send the last `ETag` back in
        `If-None-Match`: an unchanged document answers 304 with no body (poll as often as you like)."""
        snapshot = growth().runtime.snapshot
        headers = {"ETag": snapshot.etag, "Cache-Control": "no-cache"}
        if _etag_matches(request.headers.get("if-none-match"), snapshot.etag):
            return Response(status_code=304, headers=headers)
        return Response(snapshot.body, media_type=_JSON, headers=headers)

    @app.get(
        "/v1/flags/stream",
        summary="Flag changes as server-sent events",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "`text/event-stream`: an `event: flags` with the whole document (as GET "
                "/v1/flags) at once and after every change, `id:` its revision; a comment every "
                "GROWTH_SSE_HEARTBEAT_SECONDS.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_ERRORS,
            **auth.responses(forbidden_too=False),
        },
        dependencies=[FLAG_READER],
    )
    async def stream_flags(request: Request) -> StreamingResponse:
        runtime = growth().runtime
        return sse_response(
            request, flags_broadcaster, runtime.message(runtime.snapshot), settings.sse_heartbeat_seconds
        )

    @app.post(
        "/v1/flags/evaluate",
        summary="Evaluate flags server-side (OpenFeature evaluation details)",
        responses={
            200: {"model": EvaluationDetails | EvaluationList},
            **_ERRORS,
            **auth.responses(),
            404: {"model": ErrorBody, "description": "(Operators) the context names no existing customer."},
        },
    )
    async def evaluate(body: EvaluateRequest, caller: Annotated[auth.Caller, FLAG_READER]) -> Response:
        """One flag (`flag_key`) answers its evaluation details; `flag_keys` or neither answers
        `{revision, flags: [details...]}`. An unknown flag or a wrong `type` is not an HTTP error: its
        details say reason `ERROR` with the error code and `default_value` as the value, as OpenFeature
        providers do. Security-critical flags should be evaluated here, not in clients."""
        g = growth()
        context = body.context.model_dump(exclude_none=True)
        await _bind_customer(g, caller, context)
        if "user_id" not in context and "targetingKey" in context:
            context["user_id"] = context["targetingKey"]
        keys = [body.flag_key] if body.flag_key is not None else body.flag_keys
        if g.evaluator.needs_database(keys, context):
            results = await run_in_threadpool(
                g.evaluator.evaluate, keys, context, body.default_value, body.type
            )
        else:
            results = g.evaluator.evaluate(keys, context, body.default_value, body.type)
        if body.flag_key is not None:
            return _json(results[0].as_dict())
        return _json({"revision": g.runtime.snapshot.revision, "flags": [r.as_dict() for r in results]})

    # -- admin -----------------------------------------------------------------------------------------------

    def expected_version(if_match: str | None) -> int | None:
        if if_match is None:
            return None
        text = if_match.strip().strip('"')
        if not text.isdigit():
            raise HttpError(400, "invalid_if_match", 'If-Match is the flag version, e.g. If-Match: "3"')
        return int(text)

    @app.get(
        "/v1/admin/flags/{key}",
        response_model=AdminFlag,
        summary="One flag as stored, with its version (ETag)",
        responses=_ADMIN_ERRORS,
    )
    async def admin_get(key: FlagKey, _who: Annotated[auth.Operator, ADMIN_VIEWER]) -> Response:
        found = await run_in_threadpool(growth().store.get, key)
        if found is None:
            raise HttpError(404, "flag_not_found", f"no flag {key!r}")
        version, definition, source, updated_by = found
        body = {
            "key": key,
            "version": version,
            "source": source,
            "updated_by": updated_by,
            "definition": definition,
        }
        return _json(body, headers={"ETag": f'"{version}"'})

    @app.put(
        "/v1/admin/flags/{key}",
        response_model=FlagWritten,
        summary="Create or replace a flag",
        responses={**_ADMIN_ERRORS, 201: {"model": FlagWritten, "description": "Created."}},
    )
    async def admin_put(
        key: FlagKey,
        request: Request,
        definition: Annotated[FlagDefinition, Body()],
        who: Annotated[auth.Operator, ADMIN_EDITOR],
        if_match: IfMatch = None,
    ) -> Response:
        """The whole definition (as in flags.yaml, without `key`); validated against every other flag
        (422 lists every problem). Versioned and audited under the operator's name (from the credential,
        never a header); every SSE subscriber gets the new document within a second.
        `If-Match: "<version>"` refuses (409) if the flag moved meanwhile."""
        actor = who.name
        return await _write(
            key, definition.model_dump(exclude_none=True), actor, expected_version(if_match), request
        )

    @app.patch(
        "/v1/admin/flags/{key}",
        response_model=FlagWritten,
        summary='Change some fields of a flag (e.g. the kill switch: {"enabled": false})',
        responses=_ADMIN_ERRORS,
    )
    async def admin_patch(
        key: FlagKey,
        request: Request,
        changes: Annotated[FlagDefinition, Body()],
        who: Annotated[auth.Operator, ADMIN_EDITOR],
        if_match: IfMatch = None,
    ) -> Response:
        """Top-level fields given replace the stored ones; the rest stays."""
        actor = who.name
        g = growth()
        found = await run_in_threadpool(g.store.get, key)
        if found is None:
            raise HttpError(404, "flag_not_found", f"no flag {key!r}")
        version, current, _, _ = found
        merged = {**current, **changes.model_dump(exclude_none=True)}
        wanted = expected_version(if_match)
        return await _write(key, merged, actor, version if wanted is None else wanted, request)

    async def _write(
        key: str, definition: dict[str, Any], actor: str, version: int | None, request: Request
    ) -> Response:
        g = growth()
        try:
            new_version, created = await run_in_threadpool(
                lambda: g.store.put(
                    key, definition, actor, expected_version=version, request_id=request_id_of(request)
                )
            )
        except InvalidFlag as exc:
            raise HttpError(422, "invalid_flag", "; ".join(exc.errors)[:4000]) from None
        except FlagConflict as exc:
            raise HttpError(409, "version_conflict", str(exc)) from None
        # This replica answers with the new revision at once (the NOTIFY reaches the others).
        await run_in_threadpool(g.runtime.reload)
        body = {
            "key": key,
            "version": new_version,
            "created": created,
            "revision": g.runtime.snapshot.revision,
        }
        return _json(body, 201 if created else 200, {"ETag": f'"{new_version}"'})

    @app.delete(
        "/v1/admin/flags/{key}",
        response_model=FlagWritten,
        summary="Delete a flag (audited; refused while another flag has it as a prerequisite)",
        responses=_ADMIN_ERRORS,
    )
    async def admin_delete(
        key: FlagKey,
        request: Request,
        who: Annotated[auth.Operator, Depends(auth.operator(auth.Role.admin))],
        if_match: IfMatch = None,
    ) -> Response:
        actor = who.name
        g = growth()
        try:
            version = await run_in_threadpool(
                lambda: g.store.delete(
                    key, actor, expected_version=expected_version(if_match), request_id=request_id_of(request)
                )
            )
        except FlagNotFound:
            raise HttpError(404, "flag_not_found", f"no flag {key!r}") from None
        except FlagConflict as exc:
            raise HttpError(409, "version_conflict", str(exc)) from None
        except InvalidFlag as exc:
            raise HttpError(409, "flag_in_use", "; ".join(exc.errors)) from None
        await run_in_threadpool(g.runtime.reload)
        return _json(
            {"key": key, "version": version, "created": False, "revision": g.runtime.snapshot.revision}
        )

    @app.get(
        "/v1/admin/flags/{key}/history",
        response_model=FlagHistory,
        summary="Who changed the flag, when, and what (newest first)",
        responses=_ADMIN_ERRORS,
    )
    async def admin_history(key: FlagKey, _who: Annotated[auth.Operator, ADMIN_VIEWER]) -> Response:
        changes = await run_in_threadpool(growth().store.history, key)
        if not changes:
            raise HttpError(404, "flag_not_found", f"no flag {key!r} was ever written")
        return _json({"flag_key": key, "changes": [c.__dict__ for c in changes]})

    onboarding_routes(app, growth, _ERRORS)
    activation_routes(app, growth, activation_broadcaster, _ERRORS)

    # -- ops -------------------------------------------------------------------------------------------------

    def database_ready() -> bool:
        g = state.get("growth")
        return g is not None and g.listener.listening.is_set()

    def activation_ready() -> bool:
        g = state.get("growth")
        return (
            g is not None
            and g.activation.healthy()
            and g.erasures.healthy()
            and (g.loop is None or g.loop.ready())
        )

    ops_routes(
        app, {"database": database_ready, "flags": lambda: "growth" in state, "activation": activation_ready}
    )
    install_error_handlers(app, service=SERVICE)
    # The browser SDK reads flags and onboarding from the page (sdk/js): CORS on those routes, not admin;
    # outermost so error answers carry it too.
    app.add_middleware(
        CorsMiddleware, prefixes=("/v1/flags", "/v1/onboarding/", "/v1/activation/"), methods=("GET", "POST")
    )
    return app


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    return header.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in header.split(",")]


def sse_response(
    request: Request,
    broadcaster: Broadcaster,
    first: bytes,
    heartbeat: float,
    select: Callable[[Any], bytes | None] | None = None,
) -> StreamingResponse:
    """A ``text/event-stream`` of what ``broadcaster`` publishes (``select`` picks and renders this
    stream's share of it), ``first`` at once; the kernel's stream (keep-alive, ``retry:``, disconnect)
    within the app's stream limits (503 beyond them)."""
    slot = request.app.state.sse_limits.acquire(request)
    queue = broadcaster.subscribe()
    return event_stream(
        request,
        queue,
        slot=slot,
        close=lambda: broadcaster.unsubscribe(queue),
        first=first,
        render=select,
        heartbeat=heartbeat,
    )
