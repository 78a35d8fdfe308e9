"""Composition root of the entitlement API: ``build_app(settings, lifecycle)`` returns the FastAPI app.

Its lifespan opens the resources the routes (``services/entitlements/api.py``) receive as a dependency:
the customer cache, the usage view over ``usage-periods`` and the plans config; and the authenticator
their policy checks keys with.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from services.customers import CustomerDirectory
from services.entitlements.api import CHECKS, Entitlements, router
from services.entitlements.config import EntitlementsSettings
from services.entitlements.grants import GrantCache
from services.entitlements.trials import TrialCache
from services.entitlements.view import UsageView
from services.kernel import auth
from services.kernel.cors import CorsMiddleware, key_origin_check
from services.kernel.db import open_pool
from services.kernel.http import RequestOutcome, install_error_handlers
from services.kernel.lifecycle import Lifecycle
from services.kernel.ops import ops_routes
from services.kernel.serde import SchemaRegistry
from services.kernel.service import LoadedFiles
from services.kernel.topics import USAGE_PERIODS, topic
from services.plans.loader import plans_file
from services.plans.model import PlansConfig

log = logging.getLogger(__name__)

SERVICE = "entitlements"
PLANS_FILE = plans_file()  # the one file it reads (__main__ declares it)


def build_app(
    settings: EntitlementsSettings, lifecycle: Lifecycle | None = None, files: LoadedFiles | None = None
) -> FastAPI:
    config: PlansConfig = PLANS_FILE.of(settings, files)  # as run_service loaded it, not read again
    life = lifecycle or Lifecycle(SERVICE)

    def open_resources() -> tuple[Entitlements, auth.Authenticator]:
        registry = life.push(SchemaRegistry(settings.registry), "schema registry")
        pool = life.push(open_pool(settings.database, name=SERVICE), "database pool")
        directory = CustomerDirectory(
            pool, settings.customers_refresh_seconds, negative_ttl=settings.unknown_customer_ttl_seconds
        )
        grants = GrantCache(pool, settings.customers_refresh_seconds, settings.customer_cache_size)
        directory.on_change.append(grants.invalidate)
        trials = TrialCache(pool, settings.customers_refresh_seconds, settings.customer_cache_size)
        directory.on_change.append(trials.invalidate)
        life.push(directory.start(), "customers")
        aggregates = topic(USAGE_PERIODS, settings.platform.topic_prefix).name
        # A limit over an annual/custom usage period adds its months up: keep them all, plus the previous
        # month for its late updates.
        kept = max(settings.periods_kept, config.longest_usage_months + 1)
        view = UsageView(settings.kafka, aggregates, registry.decoder(), kept)
        life.push(view.start(), "usage view")
        log.info("entitlement API starting", extra={"aggregates": aggregates, "config": config.version})
        authenticator = auth.open_authenticator(pool, settings.auth)
        return Entitlements(settings, config, directory, view, grants, trials), authenticator

    @asynccontextmanager
    async def lifespan(fastapi_app: FastAPI) -> AsyncIterator[None]:
        try:
            resources, authenticator = await run_in_threadpool(open_resources)
            fastapi_app.state.resources = resources
            auth.install(fastapi_app, authenticator)
            yield
        finally:
            fastapi_app.state.resources = None
            auth.install(fastapi_app, None)
            await run_in_threadpool(life.close)

    app = FastAPI(title="plg entitlements", version="1", lifespan=lifespan)

    def resources() -> Entitlements | None:
        return getattr(app.state, "resources", None)

    def view_ready() -> bool:
        res = resources()
        return res is not None and res.view.healthy()

    def customers_ready() -> bool:
        res = resources()
        return res is not None and res.directory.loaded

    ops_routes(app, readiness={"usage_view": view_ready, "customers": customers_ready})
    app.include_router(router)

    # The kernel's HTTP error discipline: request ids, 404/405 in this API's {"code", "message"} shape,
    # a database outage as 503, a bug as a logged 500 — counted as a check result like every answer.
    install_error_handlers(app, service=SERVICE, observe=_count_internal_errors)
    # The browser SDK checks entitlements from the page (sdk/js): CORS on the check route, outermost so
    # error answers carry it too; a publishable key limited to its origins (plg keys create --origin) is
    # refused from any other page here as at ingest.
    app.add_middleware(
        CorsMiddleware,
        prefixes=("/v1/entitlements/",),
        methods=("GET",),
        origin_allowed=key_origin_check(lambda: auth.installed_keys(app)),
    )
    return app


def _count_internal_errors(outcome: RequestOutcome) -> None:
    # Every other answer of the check endpoint already counts itself in CHECKS; a 500 never reaches that.
    if outcome.status == 500 and outcome.route is not None:
        CHECKS.labels("internal_error").inc()
