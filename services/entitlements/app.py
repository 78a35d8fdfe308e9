"""Composition root of the entitlement API: ``build_app(settings, lifecycle)`` returns the FastAPI app.

``GET /v1/entitlements/{customer_id}/{feature}`` answers from memory (the usage view, the customer cache
and the plans config); only an id the cache has never seen costs a database round trip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import orjson
from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from services.customers import CustomerDirectory
from services.entitlements.config import EntitlementsSettings
from services.entitlements.grants import GrantCache
from services.entitlements.handlers import PlanNotConfigured, UnknownFeature, decide, decision_body
from services.entitlements.view import ZERO, UsageView
from services.kernel import metrics
from services.kernel.cors import CorsMiddleware
from services.kernel.db import open_pool
from services.kernel.http import RequestOutcome, install_error_handlers
from services.kernel.lifecycle import Lifecycle
from services.kernel.ops import ops_routes
from services.kernel.serde import SchemaRegistry
from services.kernel.topics import USAGE_PERIODS, topic
from services.plans.grants import granted_units
from services.plans.loader import load_config
from services.plans.periods import billing_period

log = logging.getLogger(__name__)

SERVICE = "entitlements"
CHECKS = metrics.counter("plg_entitlement_checks", "Entitlement checks answered, by result.", ("result",))
_JSON = "application/json"


# -- OpenAPI: the answers' shapes (documentation only; the handler writes the bytes itself with orjson) ----


class UpgradeBody(BaseModel):
    code: Literal["usage_limit_exceeded", "feature_not_in_plan"]
    upgrade_url: str
    suggested_plan: str | None = Field(description="null at the top of the plans' upgrade chain")


class EntitlementBody(BaseModel):
    customer_id: str
    feature: str
    type: Literal["meter", "feature"]
    plan: str
    allowed: bool
    usage: float | None = Field(description="exact decimal; null for a boolean feature")
    limit: float | None = Field(description="null when unlimited, and for a boolean feature")
    remaining: float | None = Field(description="null when unlimited, and for a boolean feature")
    hard_limit: bool
    period_start: str = Field(description="current billing period start, UTC, ISO 8601")
    period_end: str = Field(description="current billing period end (exclusive), UTC, ISO 8601")
    upgrade: UpgradeBody | None = Field(description="null when allowed, and when suspended")
    code: Literal["suspended"] | None = Field(
        default=None,
        description="Only while the customer is suspended (abuse guard or support): every feature is refused",
    )
    reason: str | None = Field(
        default=None, description="Why the customer is suspended (only when suspended)"
    )
    suspended_since: str | None = Field(default=None, description="UTC, ISO 8601 (only when suspended)")
    suspended_until: str | None = Field(
        default=None, description="End of the cool-down, UTC, ISO 8601; null: until lifted by support"
    )
    appeal: str | None = Field(default=None, description="How to appeal a suspension (only when suspended)")


class NotFoundBody(BaseModel):
    code: Literal["customer_not_found", "unknown_feature"]
    message: str = Field(
        description="what is missing and how to fix it (create the customer, known features)"
    )


class PlanNotConfiguredBody(BaseModel):
    code: Literal["plan_not_configured"]
    message: str


class NotReadyBody(BaseModel):
    code: Literal["usage_view_not_ready", "database_unavailable"]
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="internal_error, database_unavailable, ...")
    message: str
    request_id: str = Field(description="Also in the X-Request-Id header; quote it when reporting a 500.")


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": EntitlementBody,
        "description": "The decision, with an upgrade path when not allowed; a suspended customer is refused "
        'every feature with code "suspended", the reason and how to appeal.',
    },
    404: {
        "model": NotFoundBody,
        "description": "No such customer, or a feature that is neither a meter nor a feature of any plan.",
    },
    409: {
        "model": PlanNotConfiguredBody,
        "description": "The customer's plan is not in the meters-and-plans config.",
    },
    503: {
        "model": NotReadyBody,
        "description": "A meter check before this replica's usage view has caught up (just started); retry "
        "after Retry-After seconds. Boolean features still answer.",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    },
    500: {"model": ErrorBody, "description": "A bug of ours, logged with the request id the body carries."},
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
            grants = GrantCache(pool, settings.customers_refresh_seconds)
            directory.on_change.append(grants.invalidate)
            state["grants"] = grants
            state["directory"] = life.push(directory.start(), "customers")
            aggregates = topic(USAGE_PERIODS, settings.platform.topic_prefix).name
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
        return view is not None and view.healthy()

    ops_routes(
        app,
        readiness={
            "usage_view": view_ready,
            "customers": lambda: "directory" in state and state["directory"].loaded,
        },
    )

    @app.get(
        "/v1/entitlements/{customer_id}/{feature}",
        responses=RESPONSES,
        response_class=Response,
        summary="May this customer use this feature now?",
    )
    async def entitlement(customer_id: str, feature: str, request: Request) -> Response:
        """May ``customer_id`` use ``feature`` (a meter slug or a boolean feature) now?"""
        directory: CustomerDirectory = state["directory"]
        customer = directory.get(customer_id)
        if customer is None:
            # PostgreSQL cannot hold U+0000, so no customer id has one: not found, without asking it.
            if "\x00" not in customer_id:
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
        usage = ZERO
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
                    "the usage view is still catching up with usage-periods; retry shortly",
                    {"Retry-After": "1"},
                )
            period = billing_period(now_ms, customer.billing_anchor_day)
            usage = view.usage(customer_id, feature, period.start_ms)
        try:
            granted = ZERO
            if config.meter(feature) is not None:
                cache: GrantCache = state["grants"]
                found = cache.cached(customer_id)
                if found is None:  # first check of this customer, or just changed: read it off the loop
                    found = await run_in_threadpool(cache.get, customer_id)
                granted = granted_units(
                    found, feature, billing_period(now_ms, customer.billing_anchor_day), now_ms
                )
            decision = decide(config, customer, feature, usage, now_ms, settings.upgrade_url, granted)
        except UnknownFeature as exc:
            CHECKS.labels("unknown_feature").inc()
            known = sorted({m.slug for m in config.meters} | config.feature_names)
            return _error(404, "unknown_feature", f"{exc}; known: {', '.join(known)}")
        except PlanNotConfigured as exc:
            CHECKS.labels("plan_not_configured").inc()
            return _error(409, "plan_not_configured", str(exc))
        CHECKS.labels(
            "suspended" if decision.suspension else "allowed" if decision.allowed else "denied"
        ).inc()
        return Response(orjson.dumps(decision_body(decision)), media_type=_JSON)

    # The kernel's HTTP error discipline: request ids, 404/405 in this API's {"code", "message"} shape,
    # a database outage as 503, a bug as a logged 500 — counted as a check result like every answer.
    install_error_handlers(app, service=SERVICE, observe=_count_internal_errors)
    # The browser SDK checks entitlements from the page (sdk/js): CORS on the check route, outermost so
    # error answers carry it too.
    app.add_middleware(CorsMiddleware, prefixes=("/v1/entitlements/",), methods=("GET",))
    return app


def _count_internal_errors(outcome: RequestOutcome) -> None:
    # Every other answer of the check endpoint already counts itself in CHECKS; a 500 never reaches that.
    if outcome.status == 500 and outcome.route is not None:
        CHECKS.labels("internal_error").inc()
