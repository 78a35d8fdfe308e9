"""Records the aggregator writes, and the entitlement decision the API answers (pure).

* :func:`aggregate_record` — one ``usage_aggregate`` value for a changed window;
* :func:`threshold_record` — one ``entitlement_event`` for a crossed 80/90/100 % threshold;
* :func:`decide` — may this customer use this feature now, and if not, which upgrade solves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import urlencode

from services.metering_aggregator.model import Customer, ThresholdCrossing, Window
from services.metering_aggregator.values import nanounits_to_decimal
from services.plans.model import PlansConfig
from services.plans.periods import Period, billing_period
from services.plans.upgrades import suggest_for_feature, suggest_for_meter

USAGE_LIMIT_EXCEEDED = "usage_limit_exceeded"
USAGE_LIMIT_APPROACHING = "usage_limit_approaching"
FEATURE_NOT_IN_PLAN = "feature_not_in_plan"


def aggregate_record(w: Window, now_ms: int) -> dict[str, Any]:
    series = w.series
    return {
        "customer_id": series.customer_id,
        "meter": series.meter.slug,
        "aggregation": series.meter.aggregation.value,
        "group": series.group_values,
        "granularity": w.granularity.value,
        "window_start": w.start_ms,
        "window_end": w.end_ms,
        "value": nanounits_to_decimal(w.value),
        "event_count": w.event_count,
        "updated_at": now_ms,
    }


def upgrade_url(base: str, customer_id: str, feature: str, suggested_plan: str | None) -> str:
    query = {"customer_id": customer_id, "feature": feature}
    if suggested_plan:
        query["plan"] = suggested_plan
    return f"{base}{'&' if '?' in base else '?'}{urlencode(query)}"


def threshold_record(
    crossing: ThresholdCrossing, now_ms: int, config: PlansConfig, upgrade_base: str
) -> dict[str, Any]:
    usage = nanounits_to_decimal(crossing.usage)
    limit = nanounits_to_decimal(crossing.limit)
    plan = config.plan(crossing.customer.plan)
    suggested = suggest_for_meter(config, plan, crossing.meter, usage) if plan is not None else None
    customer_id = crossing.customer.customer_id
    return {
        # Deterministic, so consumers can deduplicate even if they read a topic twice; with the limit, as a
        # plan change mid-period starts the thresholds of the new limit.
        "event_id": (
            f"{customer_id}|{crossing.meter}|{crossing.period_start_ms}|"
            f"{format(limit.normalize(), 'f')}|{crossing.percent}"
        ),
        "customer_id": customer_id,
        "meter": crossing.meter,
        "plan": crossing.customer.plan,
        "threshold_percent": crossing.percent,
        "usage": usage,
        "limit": limit,
        "hard_limit": crossing.hard_limit,
        "period_start": crossing.period_start_ms,
        "period_end": crossing.period_end_ms,
        "occurred_at": now_ms,
        "upgrade": {
            "code": USAGE_LIMIT_EXCEEDED if crossing.percent >= 100 else USAGE_LIMIT_APPROACHING,
            "upgrade_url": upgrade_url(upgrade_base, customer_id, crossing.meter, suggested),
            "suggested_plan": suggested,
        },
    }


# ------------------------------------------------------------------------------------- entitlements


class UnknownFeature(LookupError):
    """Neither a meter nor a boolean feature of any plan has this name."""


class PlanNotConfigured(LookupError):
    """The customer's plan (from the database) is not in the meters-and-plans config."""


@dataclass(frozen=True, slots=True)
class Upgrade:
    code: str
    upgrade_url: str
    suggested_plan: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to "may this customer use this feature now?"."""

    customer_id: str
    feature: str
    kind: str  # "meter" | "feature"
    plan: str
    allowed: bool
    usage: Decimal | None
    limit: Decimal | None  # None = unlimited (or a boolean feature)
    remaining: Decimal | None
    hard_limit: bool
    period: Period
    upgrade: Upgrade | None


def decide(
    config: PlansConfig,
    customer: Customer,
    feature: str,
    usage_nanounits: int,
    now_ms: int,
    upgrade_base: str,
) -> Decision:
    """Decide from the plan and the current period's usage (``usage_nanounits``, 0 when none yet).

    Hard limit: allowed while usage < limit. Soft limit: always allowed (usage beyond it is billed as
    overage), with ``remaining`` counting down to 0. Unlimited: allowed, ``limit`` and ``remaining`` null.
    A meter the plan does not list, or a boolean feature that is off or absent, is ``feature_not_in_plan``.
    """
    plan = config.plan(customer.plan)
    if plan is None:
        raise PlanNotConfigured(
            f"customer {customer.customer_id!r} is on plan {customer.plan!r}, which the meters-and-plans "
            f"config (version {config.version}) does not define"
        )
    period = billing_period(now_ms, customer.anchor_day)
    meter = config.meter(feature)
    if meter is None and feature not in config.feature_names:
        raise UnknownFeature(f"{feature!r} is neither a meter nor a feature of any plan")

    def refuse(code: str, suggested: str | None) -> Upgrade:
        return Upgrade(code, upgrade_url(upgrade_base, customer.customer_id, feature, suggested), suggested)

    make = partial(Decision, customer_id=customer.customer_id, feature=feature, plan=plan.slug, period=period)
    if meter is None:
        enabled = plan.features.get(feature, False)
        upgrade = None if enabled else refuse(FEATURE_NOT_IN_PLAN, suggest_for_feature(config, plan, feature))
        return make(
            kind="feature",
            allowed=enabled,
            usage=None,
            limit=None,
            remaining=None,
            hard_limit=True,
            upgrade=upgrade,
        )
    usage = nanounits_to_decimal(usage_nanounits)
    allowance = plan.meters.get(feature)
    if allowance is None:
        upgrade = refuse(FEATURE_NOT_IN_PLAN, suggest_for_feature(config, plan, feature))
        return make(
            kind="meter",
            allowed=False,
            usage=usage,
            limit=Decimal(0),
            remaining=Decimal(0),
            hard_limit=True,
            upgrade=upgrade,
        )
    if allowance.limit is None:
        return make(
            kind="meter",
            allowed=True,
            usage=usage,
            limit=None,
            remaining=None,
            hard_limit=False,
            upgrade=None,
        )
    limit = allowance.limit
    remaining = max(limit - usage, Decimal(0))
    allowed = not allowance.hard_limit or usage < limit
    upgrade = None
    if not allowed:
        upgrade = refuse(USAGE_LIMIT_EXCEEDED, suggest_for_meter(config, plan, feature, usage))
    return make(
        kind="meter",
        allowed=allowed,
        usage=usage,
        limit=limit,
        remaining=remaining,
        hard_limit=allowance.hard_limit,
        upgrade=upgrade,
    )
