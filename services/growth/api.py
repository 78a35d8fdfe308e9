"""The growth API's flag routes: definitions for local evaluation (``GET /v1/flags``), their changes as
server-sent events, server-side evaluation, and the operators' admin API (versions, audit). Each route names
its policy; the running service comes in as a dependency (``services/growth/resources.py``). Onboarding
and activation routes live in ``api_onboarding.py`` and ``api_activation.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Header, Path
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

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
from services.growth.flags import Broadcaster
from services.growth.flagstore import (
    FlagConflict,
    FlagNotFound,
    InvalidFlag,
)
from services.growth.overrides import apply as apply_overrides
from services.growth.resources import Growth, Resources
from services.kernel import auth
from services.kernel.http import HttpError, request_id_of
from services.kernel.sse import event_stream

_JSON = "application/json"

FlagKey = Annotated[
    str, Path(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$", description="The flag key (as in flags.yaml).")
]
IfMatch = Annotated[
    str | None, Header(pattern=r'^"?[0-9]{1,9}"?$', description='The version the change is based on: "3".')
]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed request."},
    422: {"model": ErrorBody, "description": "Invalid parameters or body."},
    503: {"model": ErrorBody, "description": "A dependency (PostgreSQL, Kafka) is unavailable; retry."},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
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


router = APIRouter()


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON, headers=headers)


# -- flags -----------------------------------------------------------------------------------------------


@router.get(
    "/v1/flags",
    response_model=FlagsDocument,
    summary="Every flag definition, for local evaluation",
    responses={
        304: {"description": "Not modified since the ETag given in If-None-Match."},
        **ERRORS,
        **auth.responses(forbidden_too=False),
    },
    dependencies=[FLAG_READER],
)
async def get_flags(request: Request, g: Resources) -> Response:
    """The flags document the SDKs compile and evaluate locally. Send the last `ETag` back in
    `If-None-Match`: an unchanged document answers 304 with no body (poll as often as you like)."""
    snapshot = g.runtime.snapshot
    headers = {"ETag": snapshot.etag, "Cache-Control": "no-cache"}
    if _etag_matches(request.headers.get("if-none-match"), snapshot.etag):
        return Response(status_code=304, headers=headers)
    return Response(snapshot.body, media_type=_JSON, headers=headers)


@router.get(
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
        **ERRORS,
        **auth.responses(forbidden_too=False),
    },
    dependencies=[FLAG_READER],
)
async def stream_flags(request: Request, g: Resources) -> StreamingResponse:
    runtime = g.runtime
    return sse_response(
        request, runtime.broadcaster, runtime.message(runtime.snapshot), g.settings.sse_heartbeat_seconds
    )


@router.post(
    "/v1/flags/evaluate",
    summary="Evaluate flags server-side (OpenFeature evaluation details)",
    responses={
        200: {"model": EvaluationDetails | EvaluationList},
        **ERRORS,
        **auth.responses(),
        404: {"model": ErrorBody, "description": "(Operators) the context names no existing customer."},
    },
)
async def evaluate(
    body: EvaluateRequest, caller: Annotated[auth.Caller, FLAG_READER], g: Resources
) -> Response:
    """One flag (`flag_key`) answers its evaluation details; `flag_keys` or neither answers
    `{revision, flags: [details...]}`. An unknown flag or a wrong `type` is not an HTTP error: its
    details say reason `ERROR` with the error code and `default_value` as the value, as OpenFeature
    providers do. Security-critical flags should be evaluated here, not in clients."""
    context = body.context.model_dump(exclude_none=True)
    await _bind_customer(g, caller, context)
    if "user_id" not in context and "targetingKey" in context:
        context["user_id"] = context["targetingKey"]
    keys = [body.flag_key] if body.flag_key is not None else body.flag_keys
    if g.evaluator.needs_database(keys, context):
        results = await run_in_threadpool(g.evaluator.evaluate, keys, context, body.default_value, body.type)
    else:
        results = g.evaluator.evaluate(keys, context, body.default_value, body.type)
    customer, person = context.get("customer_id"), context.get("user_id")
    if isinstance(customer, str) and isinstance(person, str):
        # Values set for this person or customer by onboarding completion actions (set_flag).
        overrides = g.overrides.cached(customer, person)
        if overrides is None:
            overrides = await run_in_threadpool(g.overrides.get, customer, person)
        results = apply_overrides(results, overrides, g.runtime.snapshot.engine)
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


@router.get(
    "/v1/admin/flags/{key}",
    response_model=AdminFlag,
    summary="One flag as stored, with its version (ETag)",
    responses=ADMIN_ERRORS,
)
async def admin_get(key: FlagKey, _who: Annotated[auth.Operator, ADMIN_VIEWER], g: Resources) -> Response:
    found = await run_in_threadpool(g.store.get, key)
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


@router.put(
    "/v1/admin/flags/{key}",
    response_model=FlagWritten,
    summary="Create or replace a flag",
    responses={**ADMIN_ERRORS, 201: {"model": FlagWritten, "description": "Created."}},
)
async def admin_put(
    key: FlagKey,
    request: Request,
    definition: Annotated[FlagDefinition, Body()],
    who: Annotated[auth.Operator, ADMIN_EDITOR],
    g: Resources,
    if_match: IfMatch = None,
) -> Response:
    """The whole definition (as in flags.yaml, without `key`); validated against every other flag
    (422 lists every problem). Versioned and audited under the operator's name (from the credential,
    never a header); every SSE subscriber gets the new document within a second.
    `If-Match: "<version>"` refuses (409) if the flag moved meanwhile."""
    actor = who.name
    return await _write(
        g, key, definition.model_dump(exclude_none=True), actor, expected_version(if_match), request
    )


@router.patch(
    "/v1/admin/flags/{key}",
    response_model=FlagWritten,
    summary='Change some fields of a flag (e.g. the kill switch: {"enabled": false})',
    responses=ADMIN_ERRORS,
)
async def admin_patch(
    key: FlagKey,
    request: Request,
    changes: Annotated[FlagDefinition, Body()],
    who: Annotated[auth.Operator, ADMIN_EDITOR],
    g: Resources,
    if_match: IfMatch = None,
) -> Response:
    """Top-level fields given replace the stored ones; the rest stays."""
    actor = who.name
    found = await run_in_threadpool(g.store.get, key)
    if found is None:
        raise HttpError(404, "flag_not_found", f"no flag {key!r}")
    version, current, _, _ = found
    merged = {**current, **changes.model_dump(exclude_none=True)}
    wanted = expected_version(if_match)
    return await _write(g, key, merged, actor, version if wanted is None else wanted, request)


async def _write(
    g: Growth, key: str, definition: dict[str, Any], actor: str, version: int | None, request: Request
) -> Response:
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


@router.delete(
    "/v1/admin/flags/{key}",
    response_model=FlagWritten,
    summary="Delete a flag (audited; refused while another flag has it as a prerequisite)",
    responses=ADMIN_ERRORS,
)
async def admin_delete(
    key: FlagKey,
    request: Request,
    who: Annotated[auth.Operator, Depends(auth.operator(auth.Role.admin))],
    g: Resources,
    if_match: IfMatch = None,
) -> Response:
    actor = who.name
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
    return _json({"key": key, "version": version, "created": False, "revision": g.runtime.snapshot.revision})


@router.get(
    "/v1/admin/flags/{key}/history",
    response_model=FlagHistory,
    summary="Who changed the flag, when, and what (newest first)",
    responses=ADMIN_ERRORS,
)
async def admin_history(key: FlagKey, _who: Annotated[auth.Operator, ADMIN_VIEWER], g: Resources) -> Response:
    changes = await run_in_threadpool(g.store.history, key)
    if not changes:
        raise HttpError(404, "flag_not_found", f"no flag {key!r} was ever written")
    return _json({"flag_key": key, "changes": [c.__dict__ for c in changes]})


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
