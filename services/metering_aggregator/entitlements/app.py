"""Composition root of the entitlement API: ``build_app(settings)`` returns the FastAPI app.

``GET /v1/entitlements/{customer_id}/{feature}`` answers from memory (the usage view, the customer cache
and the plans config); only an id the cache has never seen costs a database round trip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.kernel import metrics
from services.kernel.db import open_pool
from services.kernel.lifecycle import Lifecycle
from services.kernel.ops import ops_routes
from services.kernel.serde import SchemaRegistry
from services.kernel.topics import USAGE_AGGREGATES, topic
from services.metering_aggregator.customers import CustomerDirectory
from services.metering_aggregator.entitlements.config import EntitlementsSettings
from services.metering_aggregator.entitlements.view import UsageView
from services.metering_aggregator.handlers import Decision, PlanNotConfigured, UnknownFeature, decide
from services.plans.loader import load_config
from services.plans.periods import billing_period, ms_to_datetime

log = logging.getLogger(__name__)

SERVICE = "entitlements"
CHECKS = metrics.counter("plg_entitlement_checks", "Entitlement checks answered, by result.", ("result",))
_JSON = "application/json"


def _number(value: Decimal | None) -> Any:
    # Exact JSON numbers (orjson cannot encode Decimal): "1000" not 1000.0, "0.001" not 0.0010000000000.
    if value is None:
        return None
    return orjson.Fragment(format(value.normalize(), "f").encode())


def _iso(ms: int) -> str:
    return ms_to_datetime(ms).isoformat().replace("+00:00", "Z")


def decision_body(d: Decision) -> dict[str, Any]:
    return {
        "customer_id": d.customer_id,
        "feature": d.feature,
        "type": d.kind,
        "plan": d.plan,
        "allowed": d.allowed,
        "usage": _number(d.usage),
        "limit": _number(d.limit),
        "remaining": _number(d.remaining),
        "hard_limit": d.hard_limit,
        "period_start": _iso(d.period.start_ms),
        "period_end": _iso(d.period.end_ms),
        "upgrade": None
        if d.upgrade is None
        else {
            "code": d.upgrade.code,
            "upgrade_url": d.upgrade.upgrade_url,
            "suggested_plan": d.upgrade.suggested_plan,
        },
    }


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"code": code, "message": message})
    return Response(body, status_code=status, media_type=_JSON, headers=headers)


def build_app(settings: EntitlementsSettings, lifecycle: Lifecycle | None = None) -> FastAPI:
    config = load_config(settings.config_path)
    life = lifecycle or Lifecycle(SERVICE)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(fastapi_app: FastAPI) -> AsyncIterator[None]:
        try:
            registry = life.push(SchemaRegistry(settings.registry), "schema registry")
            pool = life.push(open_pool(settings.database, name=SERVICE), "database pool")
            directory = CustomerDirectory(
                pool, settings.customers_refresh_seconds, negative_ttl=settings.unknown_customer_ttl_seconds
            )
            state["directory"] = life.push(directory.start(), "customers")
            aggregates = topic(USAGE_AGGREGATES, settings.platform.topic_prefix).name
            view = UsageView(settings.kafka, aggregates, registry.decoder(), settings.periods_kept)
            # On the app's state: the readiness check and every request read it from there.
            fastapi_app.state.usage_view = life.push(view.start(), "usage view")
            log.info("entitlement API starting", extra={"aggregates": aggregates, "config": config.version})
            yield
        finally:
            life.close()

    app = FastAPI(title="plg entitlements", version="1", lifespan=lifespan)

    def view_ready() -> bool:
        view: UsageView | None = getattr(app.state, "usage_view", None)
        return view is not None and view.ready.is_set() and view.error is None

    ops_routes(
        app,
        readiness={
            "usage_view": view_ready,
            "customers": lambda: "directory" in state and state["directory"].loaded,
        },
    )

    @app.get("/v1/entitlements/{customer_id}/{feature}")
    async def entitlement(customer_id: str, feature: str, request: Request) -> Response:
        """May ``customer_id`` use ``feature`` (a meter slug or a boolean feature) now?"""
        directory: CustomerDirectory = state["directory"]
        customer = directory.get(customer_id)
        if customer is None:
            customer = await run_in_threadpool(directory.lookup, customer_id)
            if customer is None:
                CHECKS.labels("unknown_customer").inc()
                return _error(
                    404,
                    "customer_not_found",
                    f"customer {customer_id!r} does not exist; create it with "
                    f"`plg customers create {customer_id} --plan <plan>`",
                )
        now_ms = int(time.time() * 1000)
        usage = 0
        if config.meter(feature) is not None:
            view: UsageView = request.app.state.usage_view
            if not view.ready.is_set():
                # Until the view has read the topic up to where it stood at start, a missing total means
                # "not read yet", not "no usage": answering would allow a customer far over a hard limit
                # (every restart would open the gates). Boolean features need no usage and still answer.
                CHECKS.labels("not_ready").inc()
                return _error(
                    503,
                    "usage_view_not_ready",
                    "the usage view is still catching up with usage-aggregates; retry shortly",
                    {"Retry-After": "1"},
                )
            period = billing_period(now_ms, customer.anchor_day)
            usage = view.usage(customer_id, feature, period.start_ms)
        try:
            decision = decide(config, customer, feature, usage, now_ms, settings.upgrade_url)
        except UnknownFeature as exc:
            CHECKS.labels("unknown_feature").inc()
            known = sorted({m.slug for m in config.meters} | config.feature_names)
            return _error(404, "unknown_feature", f"{exc}; known: {', '.join(known)}")
        except PlanNotConfigured as exc:
            CHECKS.labels("plan_not_configured").inc()
            return _error(409, "plan_not_configured", str(exc))
        CHECKS.labels("allowed" if decision.allowed else "denied").inc()
        return Response(orjson.dumps(decision_body(decision)), media_type=_JSON)

    return app
