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
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from services.health_score import api
from services.health_score.api import HealthResources
from services.health_score.config import HealthSettings
from services.health_score.customer_list import CustomerDirectorySnapshot
from services.health_score.model import day_of
from services.health_score.processor import FactsBuilder, HealthSink, HomePartitions
from services.health_score.registry import HealthConfig, load_config, summary
from services.health_score.sender import AlertSender
from services.health_score.serving import Hub, ServingCache
from services.health_score.store import HealthStore
from services.kernel import auth, db, login
from services.kernel.http import install_error_handlers
from services.kernel.kafka import Producer
from services.kernel.lifecycle import Lifecycle
from services.kernel.ops import ops_routes
from services.kernel.partitioning import key_partitioner
from services.kernel.privacy import APPLIED, Erasure, follow_erasures
from services.kernel.processing import AtLeastOnceLoop, at_least_once
from services.kernel.processing.view import MaterializedView
from services.kernel.provision import partition_count
from services.kernel.serde import SchemaRegistry
from services.kernel.service import ConfigFile, LoadedFiles
from services.kernel.sse import StreamLimits
from services.kernel.topics import (
    CUSTOMER_ALERTS,
    CUSTOMER_HEALTH,
    ENTITLEMENT_EVENTS,
    USAGE_EVENTS_ENRICHED,
    topic,
)
from services.kernel.workers import Workers
from services.plans.loader import plans_file
from services.plans.model import PlansConfig

log = logging.getLogger(__name__)

SERVICE = "health-score"


def registry_file() -> ConfigFile[Any]:
    """health.yaml as a config file of the service: validated before it builds (exit 2 with every error)."""
    return ConfigFile("health metric registry", lambda s: load_config(s.config_path), summary)


#: The two files the service reads (``__main__`` declares them: --check-config and the start check both).
REGISTRY_FILE = registry_file()
PLANS_FILE = plans_file("plans_path")


def seats_limits(plans: PlansConfig) -> dict[str, int]:
    """Seats each plan allows (the ``seats`` meter's limit), the default of "active users vs seats"."""
    out = {}
    for plan in plans.plans:
        meter = plan.meters.get("seats")
        if meter is not None and meter.limit is not None:
            out[plan.slug] = int(meter.limit)
    return out


def build_app(
    settings: HealthSettings, lifecycle: Lifecycle | None = None, files: LoadedFiles | None = None
) -> FastAPI:
    config: HealthConfig = REGISTRY_FILE.of(settings, files)
    life = lifecycle or Lifecycle(SERVICE)

    @asynccontextmanager
    async def lifespan(fastapi_app: FastAPI) -> AsyncIterator[None]:
        try:
            res = await run_in_threadpool(open_resources, settings, life, config, files, readiness)
            fastapi_app.state.resources = res
            auth.install(fastapi_app, res.authenticator)
            login.install(fastapi_app, res.browser_login)
            yield
        finally:
            login.install(fastapi_app, None)
            auth.install(fastapi_app, None)
            opened: HealthResources | None = getattr(fastapi_app.state, "resources", None)
            fastapi_app.state.resources = None
            if opened is not None:
                await opened.browser_login.aclose()
            await run_in_threadpool(life.close)

    app = FastAPI(
        title="plg health score",
        version="1",
        description="Customer health scores (deploy/config/health.yaml), history, alerts, CS dashboard.",
        lifespan=lifespan,
    )

    def opened() -> HealthResources | None:
        return getattr(app.state, "resources", None)

    def views_ready() -> bool:
        res = opened()
        return res is not None and bool(res.views) and all(v.healthy() for v in res.views)

    def erasures_ready() -> bool:
        res = opened()
        return res is not None and res.erasures is not None and res.erasures.healthy()

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
    app.include_router(api.router)
    login.mount(app)  # the dashboard's sign-in: /auth/*, and pages redirect there without a session
    install_error_handlers(app, service=SERVICE)
    return app


def open_resources(
    settings: HealthSettings,
    life: Lifecycle,
    config: HealthConfig,
    files: LoadedFiles | None,
    readiness: dict[str, Callable[[], bool]],
) -> HealthResources:
    """Everything the service runs, per ``HEALTH_ROLE``, opened on a worker thread (never the event loop),
    each piece registered on ``life`` as it opens (a failure closes the rest, newest first)."""
    prefix = settings.platform.topic_prefix
    hub = Hub()
    cache = ServingCache(hub, settings.history_days)
    # The scorer and the views hold the GIL in bursts; a request waiting for it waits up to the switch
    # interval (5 ms by default), which alone would break the API's p99 < 5 ms under load.
    sys.setswitchinterval(settings.gil_switch_interval_seconds)
    if settings.migrate:
        db.migrate(settings.database.url.get_secret_value())
    registry = life.push(SchemaRegistry(settings.registry), "schema registry")
    pool = life.push(db.open_pool(settings.database, name=SERVICE), "database pool")
    authenticator, browser_login = login.open_browser_login(
        lambda: pool.connection(timeout=5), settings.auth, settings.sessions, settings.oidc
    )
    store = HealthStore(pool, f"{prefix}{settings.group_id}")
    res = HealthResources(
        plans=PLANS_FILE.of(settings, files),
        directory=CustomerDirectorySnapshot(lambda: pool.connection(timeout=5)),
        cache=cache,
        hub=hub,
        sse_limits=StreamLimits(
            SERVICE,
            per_key=settings.platform.sse_max_streams_per_key,
            total=settings.platform.sse_max_streams,
        ),
        pool=pool,
        store=store,
        authenticator=authenticator,
        browser_login=browser_login,
    )
    cache.load_history(store.history(day_of(int(time.time() * 1000)) - settings.history_days))
    if settings.role != "scorer":
        res.views = _start_views(settings, life, registry, cache)
    if settings.role == "api":
        # Serving only: every answer comes from the views and the history; no loop, no outbox.
        log.info("health score API starting (role api)", extra={"config_version": config.version})
        return res
    builder = FactsBuilder(config, seats_limits(res.plans), settings.max_persons_per_day)
    # A customer's home: the usage-events-enriched partition its key lands on. Enrichment writes that topic
    # with the kernel producer, whose partitioner is librdkafka's consistent_random (CRC32 of the key).
    enriched = topic(USAGE_EVENTS_ENRICHED, prefix).name
    homes = HomePartitions(
        enriched,
        key_partitioner(partition_count(settings.kafka, enriched)),
        settings.instance_id,
    )
    sink = HealthSink(
        config,
        store,
        builder,
        cache_limit=settings.cache_customers,
        on_events=cache.add_events,
        on_entitlements=cache.add_entitlements,
        tick_interval=settings.batch_interval_seconds,
        history_days=settings.history_days,
        homes=homes,
        inbox_interval=settings.inbox_interval_seconds,
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
        consumer_config={
            # Range, not the kernel's cooperative-sticky: sticky balances the partition COUNT over both
            # inputs (9), so two scorers could split the 6 homes 5/1 with one holding entitlement
            # partitions only; range splits each topic on its own (3/3 homes). The price is eager
            # rebalances (each instance drops its cache and reloads from PostgreSQL on first sight).
            "partition.assignment.strategy": "range",
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(1000, settings.session_timeout_ms // 5),
        },
    )
    sink.entitlement_topic = topic(ENTITLEMENT_EVENTS, prefix).name
    res.loop = loop

    def forget(erasure: Erasure, new: bool) -> None:
        # Older requests were applied to PostgreSQL, where the facts are loaded from, before this start.
        if new:
            sink.forget(erasure)
            cache.forget(erasure.customer_id, erasure.matches)
            APPLIED.labels(SERVICE, "memory").inc()

    res.erasures = follow_erasures(life, settings, registry, SERVICE, forget)
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
            settings.webhook_signing_secret.get_secret_value() if settings.webhook_signing_secret else None
        ),
    )
    workers = Workers(readiness)  # scorer, alert_sender: a check each in /readyz
    life.push(workers, "workers")  # stopped and joined first, before the clients they use close
    res.workers = workers
    workers.start("scorer", loop.run, ready=loop.ready)
    workers.start("alert-sender", sender.run)
    log.info(
        "health score starting",
        extra={"config_version": config.version, "webhooks": len(sender.webhooks.urls)},
    )
    return res


def _start_views(
    settings: HealthSettings, life: Lifecycle, registry: SchemaRegistry, cache: ServingCache
) -> list[MaterializedView]:
    views = []
    for name, apply in ((CUSTOMER_HEALTH, cache.apply_health), (CUSTOMER_ALERTS, cache.apply_alert)):
        spec = topic(name, settings.platform.topic_prefix)
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
    return views
