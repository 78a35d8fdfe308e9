"""Composition root of the ingest service: ``build_app(settings)`` wires the HTTP API to Postgres (API
keys), the schema registry (encoders) and Kafka (the idempotent producer), and owns them all.

The request path, in order: authenticate (401) → read the body within the size limit, gunzip (413/400) →
check and normalise every event (400/403/413, per-event codes) → rate limit per key (429) → encode and
produce, then wait for every broker acknowledgement (503 when Kafka cannot take it) → 202 with one result
per event.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from psycopg_pool import ConnectionPool
from starlette.requests import Request
from starlette.responses import Response

from services.customers import CustomerDirectory
from services.customers.suspension import suspension_notice
from services.ingest import metrics as m
from services.ingest.avro_usage import UsageEventEncoder, schema_matches
from services.ingest.config import IngestSettings
from services.ingest.handlers import KafkaBreaker, accepted_body, error_body, rejection_counts
from services.ingest.importing import NDJSON, normalise_import
from services.ingest.model import (
    CE_BATCH_CONTENT_TYPE,
    CE_CONTENT_TYPE,
    Code,
    Limits,
    Normalised,
    Rejection,
    RequestContext,
    RequestError,
    identity_link_key,
    normalise_batch,
    normalise_cloudevents,
    normalise_single,
)
from services.ingest.openapi import REQUEST_BODIES, RESPONSES, component_schemas
from services.ingest.ratelimit import RateLimiter
from services.ingest.writer import EventWriter
from services.kernel import auth
from services.kernel.auth import Authenticator, Caller, CustomerKey
from services.kernel.cors import CorsMiddleware, key_origin_check
from services.kernel.db import migrate, open_pool
from services.kernel.errors import KafkaUnavailableError, SerializationError
from services.kernel.http import (
    BodyTooLarge,
    HttpError,
    RequestOutcome,
    install_error_handlers,
    request_id_of,
)
from services.kernel.kafka import Producer, check_reachable
from services.kernel.lifecycle import Lifecycle
from services.kernel.ops import ops_routes
from services.kernel.serde import SchemaRegistry, ValueEncoder, header, load_schema
from services.kernel.settings import AuthSettings
from services.kernel.topics import IDENTITY_LINKS, USAGE_EVENTS, USAGE_EVENTS_IMPORT, topic

log = logging.getLogger(__name__)

SERVICE = "ingest"
VERSION = "0.1.0"

Normaliser = Callable[[bytes, RequestContext], Normalised]


class Ingest:
    """The running service: the resources ``build_app`` opened and the request handling over them."""

    def __init__(
        self,
        settings: IngestSettings,
        pool: ConnectionPool,
        writer: EventWriter,
        customers: CustomerDirectory | None = None,
        import_writer: EventWriter | None = None,
    ) -> None:
        self.settings = settings
        # Only for the abuse guard's notice (a suspended customer's accepted batches say so); reloaded
        # within a second of a suspension by the customers trigger's notification.
        self.customers = customers
        self.limits: Limits = settings.limits()
        self.pool = pool
        self.writer = writer
        # POST /v1/import writes to usage-events-import (never metered) with the same producer.
        self.import_writer = import_writer or writer
        # Ingest keeps its own cache TTLs (INGEST_KEY_CACHE_TTL_SECONDS, ...): it is the hot path.
        self.auth: Authenticator = auth.open_authenticator(
            pool,
            AuthSettings(
                key_cache_ttl_seconds=settings.key_cache_ttl_seconds,
                key_negative_cache_ttl_seconds=settings.key_negative_cache_ttl_seconds,
                key_stale_ttl_seconds=settings.auth.key_stale_ttl_seconds,
                failed_attempts_limit=settings.auth.failed_attempts_limit,
                failed_attempts_window_seconds=settings.auth.failed_attempts_window_seconds,
            ),
        )
        self.limiter = RateLimiter(
            settings.rate_limit_events_per_second, settings.rate_limit_burst, settings.max_batch_events
        )
        self.breaker = KafkaBreaker(settings.breaker_probe_interval_seconds)
        self._kafka_checked_at = 0.0
        self._kafka_reachable = False

    # -- adapters -------------------------------------------------------------------------------------

    def database_ready(self) -> bool:
        with self.pool.connection(timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def kafka_ready(self) -> bool:
        """Not while the breaker is open; otherwise a metadata round trip, at most every 5 s."""
        if self.breaker.is_open:
            return False
        now = time.monotonic()
        if now - self._kafka_checked_at > 5.0:
            try:
                check_reachable(self.settings.kafka, timeout=2.0)
                self._kafka_reachable = True
            except KafkaUnavailableError:
                self._kafka_reachable = False
            self._kafka_checked_at = now
        return self._kafka_reachable

    # -- the request path -----------------------------------------------------------------------------

    async def handle(
        self,
        request: Request,
        caller: Caller,
        normalise: Normaliser,
        *,
        single: bool,
        source: str = "http",
        historical: bool = False,
    ) -> Response:
        """One API request by ``caller`` (the route's policy authenticated it). A :class:`RequestError`
        raised on the way is answered by the kernel's error mapping (installed in ``build_app``), which also
        counts every answer in the request metrics."""
        request_id = request_id_of(request)
        principal = caller.principal
        assert isinstance(principal, CustomerKey)  # INGEST_POLICY admits customer keys only
        if single:
            body = await _read_body(request, self.limits.max_event_bytes, Code.EVENT_TOO_LARGE)
        else:
            body = await _read_body(request, self.limits.max_batch_bytes, Code.BATCH_TOO_LARGE)
        user_agent = request.headers.get("user-agent")
        if source == "http" and user_agent and user_agent.startswith("plg-sdk"):
            source = "sdk"
        ctx = RequestContext(
            customer_id=principal.customer_id,
            api_key_id=principal.key_id,
            request_id=request_id,
            received_at_ms=time.time_ns() // 1_000_000,
            source=source,
            library=user_agent[:128] if user_agent else None,
            registry_version=self.writer.registry_version,
        )
        outcome = normalise(body, ctx)
        m.BATCH_EVENTS.observe(outcome.total)

        retry_after = self.limiter.retry_after(principal.key_id, outcome.total, time.monotonic())
        if retry_after:
            return _json(
                429,
                error_body(
                    Code.RATE_LIMITED,
                    f"API key {principal.key_id} is over its rate of "
                    f"{self.settings.rate_limit_events_per_second:g} events/s; retry after "
                    f"{retry_after} s",
                    request_id,
                ),
                {"Retry-After": str(retry_after)},
            )

        values = self._encode(outcome)
        writer = self.import_writer if historical else self.writer
        if values:
            if not self.breaker.allow():
                return self._unavailable(request_id, outcome, "Kafka is unavailable")
            links = [
                (identity_link_key(link), self.writer.links.encode(link)) for link in outcome.identity_links
            ]
            produce_started = time.perf_counter()
            try:
                await writer.write(principal.customer_id, values, links)
            except KafkaUnavailableError as exc:
                self.breaker.failed()
                m.KAFKA_BREAKER_OPEN.set(1)
                log.warning(
                    "kafka could not take a write", extra={"error": str(exc), "request_id": request_id}
                )
                return self._unavailable(request_id, outcome, str(exc))
            m.PRODUCE_SECONDS.observe(time.perf_counter() - produce_started)
            if self.breaker.is_open:
                self.breaker.succeeded()
                m.KAFKA_BREAKER_OPEN.set(0)
                log.info("kafka writes succeed again")
            m.ACCEPTED.inc(len(values))
        for code, n in rejection_counts(outcome).items():
            m.EVENTS.labels("rejected", code).inc(n)

        if single and outcome.rejections:
            r = outcome.rejections[0]
            return _json(400, {**error_body(r.code, r.message, request_id), "results": outcome.results()})
        answer = accepted_body(request_id, outcome)
        customer = self.customers.get(principal.customer_id) if self.customers is not None else None
        if (
            customer is not None
            and customer.suspended_at is not None
            and customer.suspended(datetime.now(UTC))
        ):
            # Still accepted (the events are the evidence and are metered), but the app should know.
            answer["suspended"] = suspension_notice(customer)
        return _json(202, answer)

    def _encode(self, outcome: Normalised) -> list[bytes]:
        """Avro-encode the valid records. One that the schema still refuses (a case the checks missed) is
        rejected on its own rather than failing the request."""
        encode = self.writer.events.encode
        try:
            fast = self.writer.fast
            if fast is not None and outcome.records:
                first = outcome.records[0][1]
                customer, meta = first["customer_id"], first["ingest"]
                fast_encode = fast.for_request(customer, meta)
                return [
                    fast_encode(r) if r["ingest"] is meta and r["customer_id"] is customer else encode(r)
                    for _, r in outcome.records
                ]
            return [encode(record) for _, record in outcome.records]
        except (SerializationError, TypeError, ValueError, KeyError, OverflowError):
            pass  # find the culprit below with the generic encoder, which names the field
        values: list[bytes] = []
        kept: list[tuple[int, dict[str, Any]]] = []
        for index, record in outcome.records:
            try:
                values.append(encode(record))
                kept.append((index, record))
            except SerializationError as exc:
                log.error("a checked event did not encode", extra={"error": str(exc)})
                outcome.rejections.append(Rejection(index, record["event_id"], Code.INVALID_EVENT, str(exc)))
        ids = {r["event_id"] for _, r in kept}
        outcome.records = kept
        outcome.identity_links = [link for link in outcome.identity_links if link["event_id"] in ids]
        return values

    def _unavailable(self, request_id: str, outcome: Normalised, reason: str) -> Response:
        m.EVENTS.labels("failed", "kafka_unavailable").inc(len(outcome.records))
        retry = self.settings.unavailable_retry_after_seconds
        return _json(
            503,
            error_body(
                Code.KAFKA_UNAVAILABLE,
                f"events cannot be written now ({reason}); nothing of this request was "
                f"accepted: retry the same events (same event_id) after {retry} s",
                request_id,
            ),
            {"Retry-After": str(retry)},
        )


# ---------------------------------------------------------------------------------------------------------


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _body_too_large(exc: BodyTooLarge) -> HttpError:
    # The SDKs split a batch on batch_too_large: the kernel's cap speaks ingest's code.
    return HttpError(413, Code.BATCH_TOO_LARGE, exc.message, exc.headers)


async def _read_body(request: Request, limit: int, too_large: Code) -> bytes:
    """The body, decompressed when gzip'd, refusing (413) anything over ``limit`` without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, too_large, f"the body is {declared} bytes; at most {limit} are allowed")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, too_large, f"the body is over {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding != "gzip":
        raise RequestError(
            415, Code.UNSUPPORTED_MEDIA_TYPE, f"Content-Encoding {encoding!r}: only gzip is supported"
        )
    return gunzip(body, limit, too_large)


def gunzip(body: bytes, limit: int, too_large: Code) -> bytes:
    """Every member of a gzip body (RFC 1952: concatenated members are one stream, as ``gzip -d`` reads
    them), at most ``limit`` bytes of output; anything after the last member but another member is
    refused rather than silently dropped."""
    if not body:
        raise RequestError(400, Code.INVALID_BODY, "the body is empty but Content-Encoding says gzip")
    parts: list[bytes] = []
    room = limit
    rest = body
    member = 0
    while rest:
        member += 1
        if member > 1 and rest[:2] != b"\x1f\x8b":
            raise RequestError(
                400,
                Code.INVALID_BODY,
                f"{len(rest)} bytes follow the gzip data and are not a gzip member; send only gzip data",
            )
        inflater = zlib.decompressobj(wbits=31)
        try:
            # max_length bounds the memory a small "zip bomb" could make us allocate.
            out = inflater.decompress(rest, room + 1)
        except zlib.error as exc:
            where = "the body" if member == 1 else f"gzip member {member}"
            raise RequestError(400, Code.INVALID_BODY, f"{where} is not valid gzip: {exc}") from None
        if len(out) > room or inflater.unconsumed_tail:
            raise RequestError(413, too_large, f"the decompressed body is over {limit} bytes")
        if not inflater.eof:
            raise RequestError(400, Code.INVALID_BODY, "the gzip body is truncated")
        parts.append(out)
        room -= len(out)
        rest = inflater.unused_data
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


def _require_json(request: Request) -> None:
    media = _media_type(request)
    if media not in ("", "application/json"):
        message = wrong_json_media_message(request.url.path, media)
        raise RequestError(415, Code.UNSUPPORTED_MEDIA_TYPE, message)


def _require_cloudevents(request: Request) -> None:
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


@dataclass
class _Resources:
    ingest: Ingest | None = None


def open_ingest(settings: IngestSettings, life: Lifecycle) -> Ingest:
    """Open everything the service needs, each resource registered on ``life`` (closed in reverse order)."""
    migrate(settings.database.url.get_secret_value())
    pool = life.push(open_pool(settings.database, name=SERVICE), "database pool")
    registry = life.push(SchemaRegistry(settings.registry), "schema registry")
    prefix = settings.platform.topic_prefix
    events_spec, links_spec = topic(USAGE_EVENTS, prefix), topic(IDENTITY_LINKS, prefix)
    encoders: list[ValueEncoder] = []
    for spec in (events_spec, links_spec):
        assert spec.schema_path is not None
        encoders.append(
            registry.encoder(
                spec.value_subject, spec.schema_path, auto_register=settings.auto_register_schemas
            )
        )
    producer = Producer(
        settings.kafka,
        client_id="plg-ingest",
        # Never block the event loop waiting for room in librdkafka's queue: full means 503 now.
        max_block=0.0,
        message_timeout_ms=settings.produce_timeout_ms,
        linger_ms=settings.producer_linger_ms,
    )
    life.callback(lambda: producer.close(timeout=10.0), "producer")
    # The subject version the events are validated against, recorded on each (the wire header only has
    # the global id, which says nothing about where in the subject's history the contract stands).
    registry_version = registry.lookup(events_spec.value_subject, encoders[0].schema_str).version
    fast = None
    if events_spec.schema_path and schema_matches(load_schema(events_spec.schema_path)[1]):
        fast = UsageEventEncoder(header(encoders[0].schema_id))
    else:
        log.warning("usage-events schema changed since the fast encoder was written; using the generic one")

    def writer_to(events_topic: str) -> EventWriter:
        """A writer of usage events to ``events_topic`` (same schema, producer and identity links)."""
        return EventWriter(
            producer,
            events_topic=events_topic,
            links_topic=links_spec.name,
            events=encoders[0],
            fast=fast,
            links=encoders[1],
            timeout=settings.produce_timeout_ms / 1000,
            registry_version=registry_version,
        )

    writer = writer_to(events_spec.name)
    import_writer = writer_to(topic(USAGE_EVENTS_IMPORT, prefix).name)  # /v1/import: never metered
    customers = life.push(CustomerDirectory(pool, settings.customers_refresh_seconds).start(), "customers")
    return Ingest(settings, pool, writer, customers, import_writer)


def build_app(settings: IngestSettings | None = None, lifecycle: Lifecycle | None = None) -> FastAPI:
    """The ingest ASGI app. Resources open on ``lifecycle`` when the app starts (lifespan) and the
    lifecycle closes when it stops."""
    settings = settings or IngestSettings()
    life = lifecycle or Lifecycle(SERVICE)
    state = _Resources()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            ingest = await asyncio.to_thread(open_ingest, settings, life)
            state.ingest = ingest
            auth.install(_app, ingest.auth)
            # Everything allocated so far lives as long as the process: move it out of the collector's
            # sight, so full collections (tens of ms on a big heap, felt as p99 latency) only walk request
            # garbage.
            gc.collect()
            gc.freeze()
            log.info(
                "ingest ready",
                extra={"host": settings.host, "port": settings.port, "topic": ingest.writer.events_topic},
            )
            yield
        finally:
            state.ingest = None
            auth.install(_app, None)
            await asyncio.to_thread(life.close)

    app = FastAPI(
        title="plg ingest",
        version=VERSION,
        description=(
            "The front door of plg: product and usage events in, durably. An event is reported accepted only "
            "after Kafka acknowledged it. Authenticate with `Authorization: Bearer plg_<key-id>_<secret>`."
        ),
        lifespan=lifespan,
        default_response_class=Response,
    )

    def service() -> Ingest:
        if state.ingest is None:
            raise RequestError(503, Code.SERVICE_UNAVAILABLE, "ingest is starting or stopping")
        return state.ingest

    limits = settings.limits()

    def batch(body: bytes, ctx: RequestContext) -> Normalised:
        return normalise_batch(body, ctx, limits)

    def track(body: bytes, ctx: RequestContext) -> Normalised:
        return normalise_single(body, ctx, limits, kind="track")

    def identify(body: bytes, ctx: RequestContext) -> Normalised:
        return normalise_single(body, ctx, limits, kind="identify")

    def ce_one(body: bytes, ctx: RequestContext) -> Normalised:
        return normalise_cloudevents(body, ctx, limits, batch=False)

    def ce_many(body: bytes, ctx: RequestContext) -> Normalised:
        return normalise_cloudevents(body, ctx, limits, batch=True)

    async def run(request: Request, fn: Callable[[Ingest], Any]) -> Response:
        return await fn(service())  # type: ignore[no-any-return]

    @app.post(
        "/v1/batch",
        status_code=202,
        dependencies=[JSON_BODY],
        summary="Send a batch of events",
        responses=RESPONSES,
        openapi_extra=REQUEST_BODIES["batch"],
    )
    async def post_batch(request: Request, caller: Caller = SENDER) -> Response:
        """Up to 500 events (500 KB). Each event is accepted or rejected on its own; see `results`."""
        return await run(request, lambda s: s.handle(request, caller, batch, single=False))

    @app.post(
        "/v1/track",
        status_code=202,
        dependencies=[JSON_BODY],
        summary="Send one event",
        responses=RESPONSES,
        openapi_extra=REQUEST_BODIES["track"],
    )
    async def post_track(request: Request, caller: Caller = SENDER) -> Response:
        """One event (32 KB). An event that is refused answers 400 with its code."""
        return await run(request, lambda s: s.handle(request, caller, track, single=True))

    @app.post(
        "/v1/identify",
        status_code=202,
        dependencies=[JSON_BODY],
        summary="Link an anonymous id to a user id",
        responses=RESPONSES,
        openapi_extra=REQUEST_BODIES["identify"],
    )
    async def post_identify(request: Request, caller: Caller = SENDER) -> Response:
        """Writes an `identity-links` record (anonymous_id → user_id) and a `$identify` event."""
        return await run(request, lambda s: s.handle(request, caller, identify, single=True))

    async def post_cloudevents(request: Request, caller: Caller = SENDER) -> Response:
        """CloudEvents 1.0 in structured mode: `application/cloudevents+json` (one event) or
        `application/cloudevents-batch+json` (a JSON array). `id` → event_id, `type` → name, `time` →
        timestamp, `data` (JSON object) → properties; `subject` (OpenMeter's convention) or the `customerid`
        extension, when present, must be the API key's own customer."""
        fn = ce_one if _media_type(request) == CE_CONTENT_TYPE else ce_many  # CLOUDEVENTS_BODY checked it
        return await run(request, lambda s: s.handle(request, caller, fn, single=False, source="cloudevents"))

    for path in ("/v1/events", "/api/v1/events"):
        app.add_api_route(
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

    @app.post(
        "/v1/import",
        status_code=202,
        summary="Import historical events (analytics only, never billed)",
        responses=RESPONSES,
        openapi_extra=REQUEST_BODIES["import"],
    )
    async def post_import(request: Request, caller: Caller = IMPORTER) -> Response:
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
            return normalise_import(body, media, ctx, limits)

        return await run(
            request,
            lambda s: s.handle(request, caller, importing, single=False, source="import", historical=True),
        )

    def readiness_db() -> bool:
        return state.ingest is not None and state.ingest.database_ready()

    def readiness_kafka() -> bool:
        return state.ingest is not None and state.ingest.kafka_ready()

    ops_routes(app, {"database": readiness_db, "kafka": readiness_kafka}, registry=_metrics_registry())

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(component_schemas())
            schema["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_error_handlers(
        app,
        service=SERVICE,
        errors={RequestError: _request_error, BodyTooLarge: _body_too_large},
        observe=_observe,
        body_timeout_seconds=settings.body_read_timeout_seconds,
        # A backstop: the routes' own limits (event_too_large, batch_too_large, also after gunzip) come first.
        max_body_bytes=2 * settings.max_batch_bytes,
    )
    # Browsers send events with publishable keys (sdk/js): CORS on the event routes, from any origin unless
    # the key lists its own (services/kernel/cors.py). Added last, so it is outermost: the error
    # discipline's answers (a 401, a 415) carry CORS headers too, readable by the page.
    app.add_middleware(
        CorsMiddleware,
        prefixes=("/v1/", "/api/v1/"),
        methods=("POST",),
        origin_allowed=key_origin_check(lambda: state.ingest.auth.keys if state.ingest else None),
    )
    return app


# Who may send events: a key of either kind (publishable keys live in browsers and send their own customer's
# events); the customer is the key's. Operators have no customer to send for.
SENDER: Any = Depends(auth.publishable_key(customer_param=None, operator_role=None))
# History is imported by the customer's backend: a secret key (a publishable key lives in browsers).
IMPORTER: Any = Depends(auth.secret_key(customer_param=None, operator_role=None))


def _request_error(exc: RequestError) -> HttpError:
    return HttpError(exc.status, exc.code.value, exc.message)


# Route template -> the ``endpoint`` label of the request metrics.
_ENDPOINTS = {
    "/v1/batch": "batch",
    "/v1/track": "track",
    "/v1/identify": "identify",
    "/v1/events": "events",
    "/api/v1/events": "events",
}


def _observe(outcome: RequestOutcome) -> None:
    """Every answer of the API endpoints, 415s and 500s included, in ``plg_ingest_requests_total``;
    requests for no route at all as ``endpoint="unmatched"``; the ops endpoints are left out."""
    endpoint = _ENDPOINTS.get(outcome.route or outcome.path)
    if endpoint is None:
        if outcome.route is not None or outcome.status != 404:
            return
        endpoint = "unmatched"
    m.REQUESTS.labels(endpoint, str(outcome.status)).inc()
    m.REQUEST_SECONDS.labels(endpoint).observe(outcome.seconds)


def _metrics_registry() -> CollectorRegistry:
    """The default registry, or with several workers (``PROMETHEUS_MULTIPROC_DIR`` set by ``__main__``) one
    that collects every worker's values."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def create_app() -> FastAPI:
    """Factory for ``uvicorn --factory`` (several workers): settings from the environment, and a lifecycle
    of the worker process's own."""
    return build_app(IngestSettings(), Lifecycle(SERVICE))
