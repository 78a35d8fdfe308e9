"""Composition root of the analytics service: ``build_app(settings, lifecycle)`` returns the FastAPI app
(HTTP :8086) whose lifespan opens the store, runs the sink loop over ``usage-events-enriched`` in a worker
thread, and closes both (newest first) at shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from services.activation import ActivationConfig, load_activation
from services.analytics import api
from services.analytics.config import AnalyticsSettings
from services.analytics.leads import PqlWatcher
from services.analytics.resources import AnalyticsResources
from services.analytics.sink import AnalyticsSink, Erased
from services.analytics.store import open_store
from services.kernel import auth, db, login
from services.kernel.http import install_error_handlers
from services.kernel.kafka import Producer
from services.kernel.lifecycle import Lifecycle
from services.kernel.ops import ops_routes
from services.kernel.privacy import APPLIED, Erasure, follow_erasures
from services.kernel.processing import at_least_once
from services.kernel.serde import SchemaRegistry
from services.kernel.service import ConfigFile, LoadedFiles
from services.kernel.topics import ENTITLEMENT_EVENTS, PQL, USAGE_EVENTS_ENRICHED, topic
from services.kernel.workers import Workers

log = logging.getLogger(__name__)

SERVICE = "analytics"


def _summary(config: ActivationConfig) -> dict[str, Any]:
    return {"north_star": config.north_star, "thresholds": [t.name for t in config.thresholds]}


#: The one file it reads: run_service loads and checks it (--check-config), build_app receives it.
ACTIVATION_FILE: ConfigFile[AnalyticsSettings] = ConfigFile(
    "activation", lambda s: load_activation(s.activation_path), _summary
)


def open_resources(
    settings: AnalyticsSettings, life: Lifecycle, app: FastAPI, files: LoadedFiles | None = None
) -> AnalyticsResources:
    """Open everything, registering each piece on the lifecycle as it opens (a failure closes the rest)."""
    activation: ActivationConfig = ACTIVATION_FILE.of(settings, files)
    url = settings.clickhouse_url.get_secret_value() if settings.clickhouse_url else None
    store = life.push(open_store(settings.store, settings.path, url), "analytics store")
    pool = life.push(db.open_pool(settings.database, name=SERVICE), "database pool")
    authenticator, browser_login = login.open_browser_login(
        pool.connection, settings.auth, settings.sessions, settings.oidc
    )
    auth.install(app, authenticator)
    login.install(app, browser_login)  # the console pages' sign-in (sessions, SSO)
    registry = life.push(SchemaRegistry(settings.registry), "schema registry")
    group = f"{settings.platform.topic_prefix}{settings.group_id}"
    erased = Erased()

    def forget(erasure: Erasure, new: bool) -> None:
        # Every request, also those read at start: a store restored from a backup or rebuilt from the topic
        # is cleaned again (a DELETE that finds nothing costs one lookup of the customer's ids).
        erased.add(erasure)
        ids = erasure.matching(store.distinct_ids(erasure.customer_id))
        if ids:
            deleted = store.forget_person(erasure.customer_id, ids, erasure.requested_at)
            log.info(
                "erasure applied to the analytics store",
                extra={"erasure_id": erasure.erasure_id, "rows": deleted},
            )
        APPLIED.labels(SERVICE, "store").inc()

    erasures = follow_erasures(life, settings, registry, SERVICE, forget)
    loop = at_least_once(
        service=SERVICE,
        kafka=settings.kafka,
        registry=registry,
        lifecycle=life,
        handler=AnalyticsSink(
            store,
            group,
            erased,
            erasures.ready.is_set,
            limit_topic=topic(ENTITLEMENT_EVENTS, settings.platform.topic_prefix).name,
        ),
        inputs=[USAGE_EVENTS_ENRICHED, ENTITLEMENT_EVENTS],
        group_id=settings.group_id,
        instance_id=settings.instance_id,
        topic_prefix=settings.platform.topic_prefix,
        max_batch=settings.max_batch,
        batch_wait=settings.batch_wait_seconds,
        consumer_config={
            "group.instance.id": f"{group}-{settings.instance_id}",
            "session.timeout.ms": settings.session_timeout_ms,
        },
    )
    pql_spec = topic(PQL, settings.platform.topic_prefix)
    assert pql_spec.schema_path is not None
    producer = life.push(
        Producer(settings.kafka, client_id=f"{SERVICE}-pql-{settings.instance_id}"), "pql producer"
    )
    rules = settings.pql_rules()

    def connect() -> Any:
        return pool.connection(timeout=5)

    watcher = PqlWatcher(
        store,
        connect,
        activation,
        rules,
        producer,
        registry.encoder(pql_spec.value_subject, pql_spec.schema_path, auto_register=False),
        pql_spec.name,
        settings.pql_webhook_urls,
        (
            settings.pql_webhook_signing_secret.get_secret_value()
            if settings.pql_webhook_signing_secret
            else None
        ),
        interval=settings.pql_interval_seconds,
    )
    workers = life.push(Workers(), "workers")  # stopped first, before the store it writes to closes
    workers.start("sink", loop.run)
    workers.start("pql", watcher.run)
    log.info(
        "analytics starting",
        extra={"store": settings.store, "group": group, "pql_webhooks": len(settings.pql_webhook_urls)},
    )
    return AnalyticsResources(
        store,
        activation,
        settings.default_days,
        settings.health_url,
        loop,
        workers,
        erasures,
        connect=connect,
        pql_rules=rules,
        pql=watcher,
        browser_login=browser_login,
    )


def build_app(
    settings: AnalyticsSettings, lifecycle: Lifecycle | None = None, files: LoadedFiles | None = None
) -> FastAPI:
    life = lifecycle or Lifecycle(SERVICE)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            app.state.resources = await run_in_threadpool(open_resources, settings, life, app, files)
            yield
        finally:
            opened: AnalyticsResources | None = getattr(app.state, "resources", None)
            app.state.resources = None
            login.install(app, None)
            if opened is not None and opened.browser_login is not None:
                await opened.browser_login.aclose()
            await run_in_threadpool(life.close)

    app = FastAPI(
        title="plg analytics",
        version="1",
        description="Funnels, retention, the north star, activation rates, timelines of enriched events.",
        lifespan=lifespan,
    )

    def sink_ready() -> bool:
        res: AnalyticsResources | None = getattr(app.state, "resources", None)
        return res is not None and res.ready()

    ops_routes(app, readiness={"sink": sink_ready})
    app.include_router(api.router)
    app.include_router(api.pages)
    login.mount(app)  # /auth/*: the pages send a browser without a session there
    install_error_handlers(app, service=SERVICE)
    return app
