"""The ingest API's routes: ``POST /v1/batch``, ``/v1/track``, ``/v1/identify``, ``/v1/events`` (CloudEvents,
also ``/api/v1/events``) and ``/v1/import``, each with its policy. The running service
(:class:`~services.ingest.resources.Ingest`) comes in as a dependency (:func:`resources`); the caller from
the route's policy, after the Content-Type check (a wrong one is a 415 with or without a key).
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from services.ingest.importing import NDJSON, normalise_import
from services.ingest.model import (
    CE_BATCH_CONTENT_TYPE,
    CE_CONTENT_TYPE,
    Code,
    Normalised,
    RequestContext,
    RequestError,
    normalise_batch,
    normalise_cloudevents,
    normalise_single,
)
from services.ingest.openapi import REQUEST_BODIES, RESPONSES
from services.ingest.resources import Ingest
from services.kernel import auth
from services.kernel.auth import Caller


def _media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


async def _require_json(request: Request) -> None:
    media = _media_type(request)
    if media not in ("", "application/json"):
        message = wrong_json_media_message(request.url.path, media)
        raise RequestError(415, Code.UNSUPPORTED_MEDIA_TYPE, message)


async def _require_cloudevents(request: Request) -> None:
    media = _media_type(request)
    if media not in (CE_CONTENT_TYPE, CE_BATCH_CONTENT_TYPE):
        raise RequestError(
            415, Code.UNSUPPORTED_MEDIA_TYPE, wrong_cloudevents_media_message(request.url.path, media)
        )


# Route-level dependencies run before the parameters' (the policy's): a wrong Content-Type is a 415 with
# or without a key, and it names where such a body belongs.
JSON_BODY: Any = Depends(_require_json)
CLOUDEVENTS_BODY: Any = Depends(_require_cloudevents)


def wrong_json_media_message(path: str, media: str) -> str:
    """Why ``POST <path>`` (a plg JSON endpoint) refuses ``media``, and where such a body belongs."""
    if media in (CE_CONTENT_TYPE, CE_BATCH_CONTENT_TYPE):
        return (
            f"Content-Type {media!r} is for CloudEvents: send them to POST /v1/events; "
            f"POST {path} takes application/json"
        )
    return (
        f"Content-Type {media!r}: POST {path} takes application/json (CloudEvents go to POST /v1/events "
        f"as {CE_CONTENT_TYPE} or {CE_BATCH_CONTENT_TYPE})"
    )


def wrong_cloudevents_media_message(path: str, media: str) -> str:
    """Why ``POST <path>`` (the CloudEvents endpoint) refuses ``media``."""
    got = f"Content-Type {media!r}" if media else "no Content-Type"
    hint = (
        "; plg's own JSON events go to POST /v1/batch, /v1/track or /v1/identify"
        if media in ("", "application/json")
        else ""
    )
    return (
        f"{got}: POST {path} takes {CE_CONTENT_TYPE} (one event) or {CE_BATCH_CONTENT_TYPE} (an array){hint}"
    )


# Who may send events: a key of either kind (publishable keys live in browsers and send their own customer's
# events); the customer is the key's. Operators have no customer to send for.
SENDER: Any = Depends(auth.publishable_key(customer_param=None, operator_role=None))
# History is imported by the customer's backend: a secret key (a publishable key lives in browsers).
IMPORTER: Any = Depends(auth.secret_key(customer_param=None, operator_role=None))


async def resources(request: Request) -> Ingest:
    found: Ingest | None = getattr(request.app.state, "resources", None)
    if found is None:
        raise RequestError(503, Code.SERVICE_UNAVAILABLE, "ingest is starting or stopping")
    return found


Service = Annotated[Ingest, Depends(resources)]
Sender = Annotated[Caller, SENDER]

router = APIRouter(default_response_class=Response)


@router.post(
    "/v1/batch",
    status_code=202,
    dependencies=[JSON_BODY],
    summary="Send a batch of events",
    responses=RESPONSES,
    openapi_extra=REQUEST_BODIES["batch"],
)
async def post_batch(request: Request, caller: Sender, ingest: Service) -> Response:
    """Up to 500 events (500 KB). Each event is accepted or rejected on its own; see `results`."""
    return await ingest.handle(request, caller, partial(normalise_batch, limits=ingest.limits), single=False)


@router.post(
    "/v1/track",
    status_code=202,
    dependencies=[JSON_BODY],
    summary="Send one event",
    responses=RESPONSES,
    openapi_extra=REQUEST_BODIES["track"],
)
async def post_track(request: Request, caller: Sender, ingest: Service) -> Response:
    """One event (32 KB). An event that is refused answers 400 with its code."""
    track = partial(normalise_single, limits=ingest.limits, kind="track")
    return await ingest.handle(request, caller, track, single=True)


@router.post(
    "/v1/identify",
    status_code=202,
    dependencies=[JSON_BODY],
    summary="Link an anonymous id to a user id",
    responses=RESPONSES,
    openapi_extra=REQUEST_BODIES["identify"],
)
async def post_identify(request: Request, caller: Sender, ingest: Service) -> Response:
    """Writes an `identity-links` record (anonymous_id → user_id) and a `$identify` event."""
    identify = partial(normalise_single, limits=ingest.limits, kind="identify")
    return await ingest.handle(request, caller, identify, single=True)


async def post_cloudevents(request: Request, caller: Sender, ingest: Service) -> Response:
    """CloudEvents 1.0 in structured mode: `application/cloudevents+json` (one event) or
    `application/cloudevents-batch+json` (a JSON array). `id` → event_id, `type` → name, `time` →
    timestamp, `data` (JSON object) → properties; `subject` (OpenMeter's convention) or the `customerid`
    extension, when present, must be the API key's own customer."""
    many = _media_type(request) != CE_CONTENT_TYPE  # CLOUDEVENTS_BODY checked it
    cloudevents = partial(normalise_cloudevents, limits=ingest.limits, batch=many)
    return await ingest.handle(request, caller, cloudevents, single=False, source="cloudevents")


for path in ("/v1/events", "/api/v1/events"):
    router.add_api_route(
        path,
        post_cloudevents,
        methods=["POST"],
        status_code=202,
        dependencies=[CLOUDEVENTS_BODY],
        responses=RESPONSES,
        summary="Send CloudEvents",
        openapi_extra=REQUEST_BODIES["cloudevents"],
        include_in_schema=path == "/v1/events",
    )


@router.post(
    "/v1/import",
    status_code=202,
    summary="Import historical events (analytics only, never billed)",
    responses=RESPONSES,
    openapi_extra=REQUEST_BODIES["import"],
)
async def post_import(request: Request, caller: Annotated[Caller, IMPORTER], ingest: Service) -> Response:
    """Past events as JSON lines (`application/x-ndjson`) or JSON (an array or `{"batch": [...]}`),
    in plg's event shape or as PostHog and Segment export them, up to 500 events (500 KB) per request
    and timestamps up to ten years old. They are enriched and stored for analytics, marked historical;
    metering never reads them, so they are never billed nor counted against limits. Idempotent by
    `event_id`. Secret keys only."""
    media = _media_type(request) or "application/json"
    if media not in ("application/json", NDJSON):
        raise RequestError(
            415,
            Code.UNSUPPORTED_MEDIA_TYPE,
            f"POST /v1/import takes application/x-ndjson (JSON lines) or application/json, not {media!r}",
        )

    def importing(body: bytes, ctx: RequestContext) -> Normalised:
        return normalise_import(body, media, ctx, ingest.limits)

    return await ingest.handle(request, caller, importing, single=False, source="import", historical=True)
