"""Composition root of the growth service: ``build_app(settings, lifecycle)`` returns the FastAPI app whose
lifespan opens PostgreSQL (flags, audit, onboarding progress), the producer of its telemetry and the
activation loop, all on the lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.customers import CustomerDirectory
from services.growth import api, api_activation, api_onboarding
from services.growth.activation_view import ActivationView
from services.growth.api_activation import crossing_message
from services.growth.config import GrowthSettings
from services.growth.files import ACTIVATION_FILE, FLAGS_FILE, ONBOARDING_FILE
from services.growth.flags import Broadcaster, Evaluator, ExposureLog, FlagsRuntime, StickyAssignments
from services.growth.flagstore import (
    CHANNEL,
    FlagStore,
)
from services.growth.loop import ActivationLoop
from services.growth.onboarding import OnboardingConfig
from services.growth.overrides import FlagOverrides
from services.growth.progress import ProgressStore
from services.growth.resources import Growth
from services.growth.telemetry import TelemetryWriter
from services.kernel import auth
from services.kernel.cors import CorsMiddleware, key_origin_check
from services.kernel.db import migrate, open_pool
from services.kernel.http import install_error_handlers
from services.kernel.kafka import Producer
from services.kernel.lifecycle import Lifecycle
from services.kernel.listen import Listener
from services.kernel.ops import ops_routes
from services.kernel.privacy import APPLIED, Erasure, follow_erasures
from services.kernel.processing.store import LocalStore, store_path
from services.kernel.serde import SchemaRegistry
from services.kernel.service import LoadedFiles
from services.kernel.sse import StreamLimits
from services.kernel.topics import GROWTH_CHANGELOG, USAGE_EVENTS, topic
from services.kernel.workers import Workers

log = logging.getLogger(__name__)

SERVICE = "growth"
VERSION = "0.1.0"


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
    view_store = None
    if settings.state_store == "rocksdb":
        name = f"{topic(GROWTH_CHANGELOG, prefix).name}-view"
        # Closed after the view (pushed before it): the view seals it on its way out.
        view_store = life.push(
            LocalStore(
                store_path(settings.state_dir, settings.instance_id, name), cache_mb=settings.state_cache_mb
            ),
            "activation view store",
        )
    view = ActivationView(
        activation_config,
        lambda record: activation_broadcaster.publish(crossing_message(record)),
        store=view_store,
        memory_keys=settings.state_memory_keys,
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
        FlagOverrides(pool, max_entries=settings.overrides_cache_size),
    )


def build_app(
    settings: GrowthSettings, lifecycle: Lifecycle | None = None, files: LoadedFiles | None = None
) -> FastAPI:
    life = lifecycle or Lifecycle(SERVICE)
    flags_broadcaster = Broadcaster("flags")
    activation_broadcaster = Broadcaster("activation", queue_size=256)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            flags_broadcaster.bind(asyncio.get_running_loop())
            activation_broadcaster.bind(asyncio.get_running_loop())
            _app.state.resources = await asyncio.to_thread(
                open_growth, settings, life, flags_broadcaster, activation_broadcaster, files
            )
            auth.install(_app, _app.state.resources.authenticator)
            log.info("growth ready", extra={"host": settings.host, "port": settings.port})
            yield
        finally:
            _app.state.resources = None
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
    app.state.activation_crossings = activation_broadcaster  # the activation stream's (api_activation.py)
    app.state.sse_limits = StreamLimits(
        SERVICE,
        per_key=settings.platform.sse_max_streams_per_key,
        total=settings.platform.sse_max_streams,
    )

    app.include_router(api.router)  # flags and the admin API (api.py)
    app.include_router(api_onboarding.router)  # next step, progress, completion (api_onboarding.py)
    app.include_router(api_activation.router)  # activation state and crossings (api_activation.py)

    # -- ops -------------------------------------------------------------------------------------------------

    def running() -> Growth | None:
        return getattr(app.state, "resources", None)

    def database_ready() -> bool:
        g = running()
        return g is not None and g.listener.listening.is_set()

    def activation_ready() -> bool:
        g = running()
        return (
            g is not None
            and g.activation.healthy()
            and g.erasures.healthy()
            and (g.loop is None or g.loop.ready())
        )

    ops_routes(
        app,
        {"database": database_ready, "flags": lambda: running() is not None, "activation": activation_ready},
    )
    install_error_handlers(app, service=SERVICE)
    # The browser SDK reads flags and onboarding from the page (sdk/js): CORS on those routes, not admin;
    # outermost so error answers carry it too; a publishable key limited to its origins (plg keys create
    # --origin) is refused from any other page here as at ingest.
    app.add_middleware(
        CorsMiddleware,
        prefixes=("/v1/flags", "/v1/onboarding/", "/v1/activation/"),
        methods=("GET", "POST"),
        origin_allowed=key_origin_check(lambda: auth.installed_keys(app)),
    )
    return app
