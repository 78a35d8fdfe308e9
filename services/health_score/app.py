"""Composition root of the health-score service: ``build_app(settings)`` returns the FastAPI app (HTTP
:8084) whose lifespan runs

* the **scorer**: the kernel's at-least-once loop over ``usage-events-enriched`` and ``entitlement-events``
  into :class:`~services.health_score.processor.HealthSink` (facts and offsets in PostgreSQL, scores on
  ``customer-health``, alerts into the outbox; its tick is the scheduled batch path);
* the **alert sender** (outbox → ``customer-alerts`` and webhooks);
* the **serving views**: ``customer-health`` and ``customer-alerts`` read whole into memory.

``HEALTH_ROLE`` splits them: ``scorer`` runs the loop and the sender without views, ``api`` only the views
and the routes (any number of API processes, none sharing a GIL with the scorer); ``all`` (the default)
runs everything in one process.

Routes: ``GET /v1/health/{customer}``, ``GET /v1/health``, ``GET /v1/health/stream`` (SSE), the dashboard
at ``/`` and ``/customers/{customer}``, and the ops endpoints.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import orjson
from fastapi import Depends, FastAPI, Query
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from services.customers import suspension
from services.health_score import dashboard
from services.health_score.config import HealthSettings
from services.health_score.model import day_of
from services.health_score.processor import FactsBuilder, HealthSink
from services.health_score.registry import HealthConfig, load_config, summary
from services.health_score.sender import AlertSender
from services.health_score.serving import Hub, ServingCache, detail
from services.health_score.store import HealthStore
from services.kernel import auth, db, login
from services.kernel.http import HttpError, install_error_handlers
from services.kernel.kafka import Producer
from services.kernel.lifecycle import Lifecycle
from services.kernel.login import BrowserLogin, PageCaller
from services.kernel.oidc import OidcClient
from services.kernel.ops import ops_routes
from services.kernel.privacy import APPLIED, Erasure, ErasureFollower, follow_erasures
from services.kernel.processing import AtLeastOnceLoop, at_least_once
from services.kernel.processing.view import MaterializedView
from services.kernel.serde import SchemaRegistry
from services.kernel.service import ConfigFile
from services.kernel.sessions import SessionStore
from services.kernel.sse import StreamLimits, event_stream
from services.kernel.sse import event as sse_event
from services.kernel.topics import (
    CUSTOMER_ALERTS,
    CUSTOMER_HEALTH,
    ENTITLEMENT_EVENTS,
    USAGE_EVENTS_ENRICHED,
    topic,
)
from services.kernel.workers import Workers
from services.plans.loader import load_config as load_plans

log = logging.getLogger(__name__)

SERVICE = "health-score"
_JSON = "application/json"


def registry_file() -> ConfigFile[Any]:
    """health.yaml as a config file of the service: validated before it builds (exit 2 with every error)."""
    return ConfigFile("health metric registry", lambda s: load_config(s.config_path), summary)


def seats_limits(plans_path: Any) -> dict[str, int]:
    """Seats each plan allows (the ``seats`` meter's limit), the default of "active users vs seats"."""
    out = {}
    for plan in load_plans(plans_path).plans:
        meter = plan.meters.get("seats")
        if meter is not None and meter.limit is not None:
            out[plan.slug] = int(meter.limit)
    return out


class FactorOut(BaseModel):
    name: str
    component: str
    value: float
    points: float
    max_points: float
    change: float
    detail: str


class HistoryPoint(BaseModel):
    day: str
    score: int
    band: str | None


class HealthOut(BaseModel):
    """A customer's health: score 0-100, band, components, trend against the previous period,
    explanation (contributions in points, every factor, the top ones) and daily history."""

    customer_id: str
    score: int
    band: str | None
    segment: str | None
    plan: str | None
    components: dict[str, float]
    churn_risk: float | None
    trend: dict[str, Any]
    explanation: dict[str, Any]
    history: list[HistoryPoint]
    active_users: int | None
    seats: int | None
    computed_at: int
    path: str | None
    config_version: int | None


class SummaryOut(BaseModel):
    customer_id: str
    score: int
    band: str | None
    segment: str | None
    plan: str | None
    trend: int
    trend_direction: str | None
    churn_risk: float | None
    computed_at: int
    sparkline: list[int]


class ListOut(BaseModel):
    customers: list[SummaryOut]
    total: int


class ErrorOut(BaseModel):
    code: str
    message: str
    request_id: str


# The CS dashboard, its list API and its live stream show every customer: operators only (a token, or the
# browser session of a signed-in operator). Pages send a browser without a session to the login page.
CS_VIEWER: Any = Depends(auth.operator(auth.Role.viewer))
CS_PAGE: Any = Depends(login.operator_page(auth.Role.viewer))


def build_app(settings: HealthSettings, lifecycle: Lifecycle | None = None) -> FastAPI:
    config: HealthConfig = load_config(settings.config_path)
    life = lifecycle or Lifecycle(SERVICE)
    prefix = settings.platform.topic_prefix
    hub = Hub()
    cache = ServingCache(hub, settings.history_days)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(fastapi_app: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(start)
            auth.install(fastapi_app, state["authenticator"])
            login.install(fastapi_app, state["browser_login"])
            yield
        finally:
            login.install(fastapi_app, None)
            auth.install(fastapi_app, None)
            browser_login: BrowserLogin | None = state.get("browser_login")
            if browser_login is not None:
                await browser_login.aclose()
            await run_in_threadpool(life.close)

    def start_views(registry: SchemaRegistry) -> None:
        views = []
        for name, apply in ((CUSTOMER_HEALTH, cache.apply_health), (CUSTOMER_ALERTS, cache.apply_alert)):
            spec = topic(name, prefix)
            view = MaterializedView(
                settings.kafka,
                spec.name,
                registry.decoder(reader_schema=spec.schema_path),
                apply,
                name=f"{SERVICE}-{name}",
                key_filter=lambda key: key is not None,
                poll_timeout=0.02,
                fetch_wait_max_ms=5,
            )
            views.append(life.push(view.start(), f"{name} view"))
        state["views"] = views

    def start() -> None:
        # The scorer and the views hold the GIL in bursts; a request waiting for it waits up to the switch
        # interval (5 ms by default), which alone would break the API's p99 < 5 ms under load.
        sys.setswitchinterval(settings.gil_switch_interval_seconds)
        if settings.migrate:
            db.migrate(settings.database.url.get_secret_value())
        registry = life.push(SchemaRegistry(settings.registry), "schema registry")
        pool = life.push(db.open_pool(settings.database, name=SERVICE), "database pool")
        authenticator = auth.open_authenticator(lambda: pool.connection(timeout=5), settings.auth)
        sessions = SessionStore(lambda: pool.connection(timeout=5), settings.sessions)
        authenticator.sessions = sessions.resolve  # a signed-in browser is an operator credential
        state["authenticator"] = authenticator
        oidc = OidcClient(settings.oidc) if settings.oidc.enabled else None
        state["browser_login"] = BrowserLogin(sessions, oidc, settings.oidc)
        store = HealthStore(pool, f"{prefix}{settings.group_id}")
        state["store"] = store
        state["pool"] = pool
        cache.load_history(store.history(day_of(int(time.time() * 1000)) - settings.history_days))
        if settings.role != "scorer":
            start_views(registry)
        if settings.role == "api":
            # Serving only: every answer comes from the views and the history; no loop, no outbox.
            log.info("health score API starting (role api)", extra={"config_version": config.version})
            return
        builder = FactsBuilder(config, seats_limits(settings.plans_path))
        sink = HealthSink(
            config,
            store,
            builder,
            on_events=cache.add_events,
            on_entitlements=cache.add_entitlements,
            tick_interval=settings.batch_interval_seconds,
            history_days=settings.history_days,
        )
        loop: AtLeastOnceLoop = at_least_once(
            service=SERVICE,
            kafka=settings.kafka,
            registry=registry,
            lifecycle=life,
            handler=sink,
            inputs=[USAGE_EVENTS_ENRICHED, ENTITLEMENT_EVENTS],
            outputs=[CUSTOMER_HEALTH],
            group_id=settings.group_id,
            instance_id=settings.instance_id,
            topic_prefix=prefix,
            max_batch=settings.max_batch,
            batch_wait=settings.batch_wait_seconds,
        )
        sink.entitlement_topic = topic(ENTITLEMENT_EVENTS, prefix).name
        state["loop"] = loop

        def forget(erasure: Erasure, new: bool) -> None:
            # Older requests were applied to PostgreSQL, where the facts are loaded from, before this start.
            if new:
                sink.forget(erasure)
                cache.forget(erasure.customer_id, erasure.matches)
                APPLIED.labels(SERVICE, "memory").inc()

        state["erasures"] = follow_erasures(life, settings, registry, SERVICE, forget)
        alerts_spec = topic(CUSTOMER_ALERTS, prefix)
        assert alerts_spec.schema_path is not None
        producer = life.push(
            Producer(settings.kafka, client_id=f"{SERVICE}-alerts-{settings.instance_id}"), "alert producer"
        )
        sender = AlertSender(
            store,
            producer,
            registry.encoder(alerts_spec.value_subject, alerts_spec.schema_path, auto_register=False),
            alerts_spec.name,
            [*config.webhooks, *settings.webhook_urls],
            signing_secret=(
                settings.webhook_signing_secret.get_secret_value()
                if settings.webhook_signing_secret
                else None
            ),
        )
        workers = Workers(readiness)  # scorer, alert_sender: a check each in /readyz
        life.push(workers, "workers")  # stopped and joined first, before the clients they use close
        state["workers"] = workers
        workers.start("scorer", loop.run, ready=loop.ready)
        workers.start("alert-sender", sender.run)
        log.info(
            "health score starting",
            extra={"config_version": config.version, "webhooks": len(sender.webhooks)},
        )

    app = FastAPI(
        title="plg health score",
        version="1",
        description="Customer health scores (deploy/config/health.yaml), history, alerts, CS dashboard.",
        lifespan=lifespan,
    )

    def views_ready() -> bool:
        views: list[MaterializedView] = state.get("views") or []
        return bool(views) and all(v.healthy() for v in views)

    def erasures_ready() -> bool:
        erasures: ErasureFollower | None = state.get("erasures")
        return erasures is not None and erasures.healthy()

    # scorer and alert_sender are added by Workers as it starts them (roles scorer and all).
    readiness: dict[str, Callable[[], bool]] = {
        "serving_views": views_ready,
        "privacy_erasures": erasures_ready,
    }
    if settings.role == "api":
        del readiness["privacy_erasures"]  # no scorer, so no facts and no live events of persons to forget
    elif settings.role == "scorer":
        del readiness["serving_views"]
    ops_routes(app, readiness=readiness)
    sse_limits = StreamLimits(
        SERVICE, per_key=settings.platform.sse_max_streams_per_key, total=settings.platform.sse_max_streams
    )
    errors: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorOut, "description": "Unknown customer (no score yet)"}
    }

    @app.get(
        "/v1/health",
        response_model=None,
        responses={200: {"model": ListOut}, 422: {"model": ErrorOut, "description": "Invalid parameter"}},
        summary="Customers by risk",
        dependencies=[CS_VIEWER],
    )
    async def list_health(
        band: Literal["red", "yellow", "green"] | None = None,
        segment: str | None = Query(default=None, max_length=100),
        limit: int = Query(default=100, ge=1, le=10_000),
    ) -> Response:
        """Every scored customer, riskiest first (lowest score, then falling fastest), filtered by band and
        segment; from the serving cache."""
        ranked = cache.ranked()
        chosen = [
            s
            for s in ranked
            if (band is None or s["band"] == band) and (segment is None or s["segment"] == segment)
        ]
        return Response(orjson.dumps({"customers": chosen[:limit], "total": len(chosen)}), media_type=_JSON)

    @app.get(
        "/v1/health/stream",
        response_model=None,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "Server-sent events: score, event, alert",
            }
        },
        summary="Live updates (SSE)",
        dependencies=[CS_VIEWER],
    )
    async def stream(
        request: Request, customer: str | None = Query(default=None, max_length=200)
    ) -> Response:
        """``score`` events for every customer (or only ``customer``), plus that customer's ``event``
        (recent enriched events) and ``alert`` events. A comment every 15 s keeps proxies from closing it."""
        slot = sse_limits.acquire(request)  # 503 beyond the per-credential and overall limits
        sub_id, queue = hub.subscribe(customer)
        return event_stream(
            request,
            queue,
            slot=slot,
            close=lambda: hub.unsubscribe(sub_id),
            first=b": connected\n\n",
            render=lambda item: sse_event(item[0], orjson.dumps(item[1])),
            heartbeat=15,
        )

    @app.get(
        "/v1/health/{customer_id}",
        response_model=None,
        responses={200: {"model": HealthOut}, **errors, **auth.responses()},
        summary="One customer's health",
        dependencies=[Depends(auth.secret_key())],  # the customer's own backend, or an operator
    )
    async def get_health(customer_id: str) -> Response:
        """Score, band, components, trend, explanation and daily history, from the serving cache."""
        record = cache.latest.get(customer_id)
        if record is None:
            raise HttpError(404, "customer_not_found", f"no health score for customer {customer_id!r}")
        return Response(orjson.dumps(detail(record, cache.history.get(customer_id, []))), media_type=_JSON)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def overview(caller: PageCaller = CS_PAGE) -> HTMLResponse:
        # The abuse guard's suspended and suspected customers (PostgreSQL, a small indexed read per view).
        pool = state.get("pool")
        abuse = [] if pool is None else await run_in_threadpool(_abuse_rows, pool)
        return HTMLResponse(dashboard.overview(cache.ranked(), who=caller.header(), abuse=abuse))

    @app.get("/customers/{customer_id}", response_class=HTMLResponse, include_in_schema=False)
    async def customer_page(customer_id: str, caller: PageCaller = CS_PAGE) -> HTMLResponse:
        record = cache.latest.get(customer_id)
        return HTMLResponse(
            dashboard.customer_page(
                record,
                customer_id,
                cache.history.get(customer_id, []),
                list(cache.events.get(customer_id, [])),
                list(cache.alerts.get(customer_id, [])),
                list(cache.plan_usage.get(customer_id, {}).values()),
                who=caller.header(),
            )
        )

    app.include_router(login.router())
    login.install_handlers(app)

    install_error_handlers(app, service=SERVICE)
    return app


def _abuse_rows(pool: Any) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return suspension.abuse_overview(conn)
