"""The entitlement API's routes: ``GET /v1/entitlements/{customer_id}/{feature}``, answered from memory
(the usage view, the customer cache and the plans config); only an id the cache has never seen costs a
database round trip. Resources come in as a dependency (:func:`resources`), the caller from its policy."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from services.customers import CustomerDirectory
from services.entitlements.config import EntitlementsSettings
from services.entitlements.grants import GrantCache
from services.entitlements.handlers import (
    PlanNotConfigured,
    UnknownFeature,
    decide,
    decision_body,
    usage_window,
)
from services.entitlements.trials import TrialCache
from services.entitlements.view import ZERO, UsageView
from services.kernel import metrics
from services.kernel.auth import Caller, publishable_key, responses
from services.kernel.http import resources_dependency
from services.plans.grants import granted_units
from services.plans.model import PlansConfig
from services.plans.periods import Period
from services.plans.trials import trial_until
from services.plans.windows import combine_months

CHECKS = metrics.counter("plg_entitlement_checks", "Entitlement checks answered, by result.", ("result",))
_JSON = "application/json"


@dataclass
class Entitlements:
    """What the routes need, opened by the app's lifespan (``app.state.resources``)."""

    settings: EntitlementsSettings
    config: PlansConfig
    directory: CustomerDirectory
    view: UsageView
    grants: GrantCache
    trials: TrialCache


resources = resources_dependency(Entitlements, "the entitlement API is starting or stopping")


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
    trial_until: str | None = Field(
        default=None,
        description="A boolean feature the plan lacks, allowed by a trial (an onboarding completion "
        "action) until then, UTC, ISO 8601; absent otherwise",
    )


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


def _usage_over(
    config: PlansConfig, view: UsageView, customer_id: str, feature: str, months: list[Period]
) -> Decimal:
    """The meter's usage over the usage period's months, combined as the invoice combines them (SUM and
    COUNT add up, MAX the largest, LATEST the last month's)."""
    if len(months) == 1:
        return view.usage(customer_id, feature, months[0].start_ms)
    values = view.recorded(customer_id, feature, [m.start_ms for m in months])
    return combine_months(config, [{feature: v} for v in values]).get(feature, ZERO)


router = APIRouter()

# A customer's own key of either kind (browsers check their own entitlements with a publishable key), or
# an operator; another customer's key is a 403 before the customer is looked up, so nobody learns who exists.
CHECKER = publishable_key()


@router.get(
    "/v1/entitlements/{customer_id}/{feature}",
    responses={**RESPONSES, **responses()},
    response_class=Response,
    summary="May this customer use this feature now?",
)
async def entitlement(
    customer_id: str,
    feature: str,
    caller: Annotated[Caller, Depends(CHECKER)],
    res: Annotated[Entitlements, Depends(resources)],
) -> Response:
    """May ``customer_id`` use ``feature`` (a meter slug or a boolean feature) now?"""
    directory, config = res.directory, res.config
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
    period = None
    if config.meter(feature) is not None:
        # The invoice's usage period: the month, or a whole annual/custom window billed per_period.
        period, months = usage_window(config, customer, now_ms)
        view = res.view
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
        usage = _usage_over(config, view, customer_id, feature, months)
    try:
        granted = ZERO
        if config.meter(feature) is not None:
            cache = res.grants
            found = cache.cached(customer_id)
            if found is None:  # first check of this customer, or just changed: read it off the loop
                found = await run_in_threadpool(cache.get, customer_id)
            assert period is not None
            granted = granted_units(found, feature, period, now_ms)
        trial_until_ms = None
        if config.meter(feature) is None:
            # A boolean feature may be on trial (an onboarding completion action granted it, seed 002).
            found_trials = res.trials.cached(customer_id)
            if found_trials is None:
                found_trials = await run_in_threadpool(res.trials.get, customer_id)
            trial_until_ms = trial_until(found_trials, feature, now_ms)
        decision = decide(
            config,
            customer,
            feature,
            usage,
            now_ms,
            res.settings.upgrade_url,
            granted,
            trial_until_ms=trial_until_ms,
            period=period,
        )
    except UnknownFeature as exc:
        CHECKS.labels("unknown_feature").inc()
        known = sorted({m.slug for m in config.meters} | config.feature_names)
        return _error(404, "unknown_feature", f"{exc}; known: {', '.join(known)}")
    except PlanNotConfigured as exc:
        CHECKS.labels("plan_not_configured").inc()
        return _error(409, "plan_not_configured", str(exc))
    CHECKS.labels("suspended" if decision.suspension else "allowed" if decision.allowed else "denied").inc()
    return Response(orjson.dumps(decision_body(decision)), media_type=_JSON)
