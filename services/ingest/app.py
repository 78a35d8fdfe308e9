"""Composition root of the ingest service: ``build_app(settings)`` wires the HTTP API (its routes in
``services/ingest/api.py``) to Postgres (API keys), the schema registry (encoders) and Kafka (the idempotent
producer), and owns them all: its lifespan opens the running :class:`~services.ingest.resources.Ingest`
off the event loop (:func:`open_ingest`) and closes it on shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from starlette.responses import Response

from services.customers import CustomerDirectory
from services.ingest import api
from services.ingest import metrics as m
from services.ingest.avro_usage import UsageEventEncoder, schema_matches
from services.ingest.config import IngestSettings
from services.ingest.model import (
    Code,
    RequestError,
)
from services.ingest.openapi import component_schemas
from services.ingest.resources import Ingest
from services.ingest.writer import EventWriter
from services.kernel import auth
from services.kernel.cors import CorsMiddleware, key_origin_check
from services.kernel.db import migrate, open_pool
from services.kernel.http import (
    BodyTooLarge,
    HttpError,
    RequestOutcome,
    install_error_handlers,
)
from services.kernel.kafka import Producer
from services.kernel.lifecycle import Lifecycle
from services.kernel.ops import ops_routes
from services.kernel.serde import SchemaRegistry, ValueEncoder, header, load_schema
from services.kernel.topics import IDENTITY_LINKS, USAGE_EVENTS, USAGE_EVENTS_IMPORT, topic

log = logging.getLogger(__name__)

SERVICE = "ingest"
VERSION = "0.1.0"


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
    import_writer = writer_to(
        topic(USAGE_EVENTS_IMPORT, settings.platform.topic_prefix).name
    )  # never metered
    customers = life.push(CustomerDirectory(pool, settings.customers_refresh_seconds).start(), "customers")
    return Ingest(settings, pool, writer, customers, import_writer)


def build_app(settings: IngestSettings | None = None, lifecycle: Lifecycle | None = None) -> FastAPI:
    """The ingest ASGI app. Resources open on ``lifecycle`` when the app starts (lifespan) and the
    lifecycle closes when it stops."""
    settings = settings or IngestSettings()
    life = lifecycle or Lifecycle(SERVICE)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            ingest = await asyncio.to_thread(open_ingest, settings, life)
            _app.state.resources = ingest
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
            _app.state.resources = None
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
    app.include_router(api.router)

    def opened() -> Ingest | None:
        return getattr(app.state, "resources", None)

    def readiness_db() -> bool:
        ingest = opened()
        return ingest is not None and ingest.database_ready()

    def database_reachable() -> bool:
        ingest = opened()
        return ingest is not None and ingest.database_reachable()

    def readiness_kafka() -> bool:
        ingest = opened()
        return ingest is not None and ingest.kafka_ready()

    # Ready while Kafka takes writes and keys can be checked (PostgreSQL, or the key cache through its
    # outage: then "degraded": ["database"] in the body, still 200). docs/operations.md.
    ops_routes(
        app,
        {"database": readiness_db, "kafka": readiness_kafka},
        registry=_metrics_registry(),
        degraded={"database": database_reachable},
    )

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
        origin_allowed=key_origin_check(lambda: auth.installed_keys(app)),
    )
    return app


def _body_too_large(exc: BodyTooLarge) -> HttpError:
    # The SDKs split a batch on batch_too_large: the kernel's cap speaks ingest's code.
    return HttpError(413, Code.BATCH_TOO_LARGE, exc.message, exc.headers)


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
