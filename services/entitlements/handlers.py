"""The entitlement decision (pure): may this customer use this feature now, and if not, which upgrade
solves it; and the JSON body of the answer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import orjson

from services.customers import Customer
from services.customers.suspension import APPEAL
from services.plans.model import PlansConfig
from services.plans.periods import Period, billing_period, month_index, ms_to_datetime, usage_periods
from services.plans.upgrades import (
    FEATURE_NOT_IN_PLAN,
    USAGE_LIMIT_EXCEEDED,
    suggest_for_feature,
    suggest_for_meter,
    upgrade_url,
)
from services.plans.windows import customer_window


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
class Suspension:
    """Why every feature is refused (the abuse guard or support), until when, and how to appeal."""

    reason: str
    since: datetime
    until: datetime | None
    appeal: str


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
    suspension: Suspension | None = None
    #: A boolean feature the plan lacks, allowed by a trial until then (epoch ms).
    trial_until_ms: int | None = None


def usage_window(config: PlansConfig, customer: Customer, now_ms: int) -> tuple[Period, list[Period]]:
    """The period the customer's limits count usage over at ``now_ms``, and the monthly periods (metering's
    ``BILLING_PERIOD`` windows) it is made of: the invoice's usage period (services/plans/windows.py), so
    a price billing usage ``per_period`` over an annual or custom window is limited over that whole
    window, and any other over the month. A plan the book lacks: the month (``decide`` refuses it)."""
    month = billing_period(now_ms, customer.billing_anchor_day)
    if config.longest_usage_months == 1:
        return month, [month]  # no price bills usage over more than a month: no price lookup needed
    cycle_month = customer.billing_cycle_month
    if cycle_month is None:
        cycle_month = month_index((customer.created_at or month.start).date())
    found = customer_window(
        config, customer.plan, customer.price_version, now_ms, customer.billing_anchor_day, cycle_month
    )
    if found is None or found[1] == month:
        return month, [month]
    usage_period = found[1]
    return usage_period, usage_periods(usage_period, customer.billing_anchor_day)


def decide(
    config: PlansConfig,
    customer: Customer,
    feature: str,
    usage: Decimal,
    now_ms: int,
    upgrade_base: str,
    granted: Decimal = Decimal(0),
    *,
    trial_until_ms: int | None = None,
    period: Period | None = None,
) -> Decision:
    """Decide from the plan and the current period's ``usage`` of the meter (0 when none yet).

    Hard limit: allowed while usage < limit. Soft limit: always allowed (usage beyond it is billed as
    overage), with ``remaining`` counting down to 0. Unlimited: allowed, ``limit`` and ``remaining`` null.
    A meter the plan does not list, or a boolean feature that is off or absent, is ``feature_not_in_plan``.
    ``period`` is the usage period ``usage`` was counted over (:func:`usage_window`): the customer's
    month, or a whole annual/custom billing period when its price bills usage ``per_period``.
    """
    plan = config.plan(customer.plan)
    if plan is None:
        raise PlanNotConfigured(
            f"customer {customer.customer_id!r} is on plan {customer.plan!r}, which the meters-and-plans "
            f"config (version {config.version}) does not define"
        )
    if period is None:
        period = billing_period(now_ms, customer.billing_anchor_day)
    meter = config.meter(feature)
    if meter is None and feature not in config.feature_names:
        raise UnknownFeature(f"{feature!r} is neither a meter nor a feature of any plan")
    if customer.suspended_at is not None and customer.suspended(ms_to_datetime(now_ms)):
        # A suspension refuses every feature, whatever the plan and the usage (the plan's answer is kept
        # in the body, so the app still sees the usage; nothing to upgrade to: the way out is the appeal).
        plain = decide(
            config, replace(customer, suspended_at=None), feature, usage, now_ms, upgrade_base, period=period
        )
        return replace(
            plain,
            allowed=False,
            upgrade=None,
            suspension=Suspension(
                customer.suspended_reason or "suspended",
                customer.suspended_at,
                customer.suspended_until,
                APPEAL,
            ),
        )

    def refuse(code: str, suggested: str | None) -> Upgrade:
        return Upgrade(code, upgrade_url(upgrade_base, customer.customer_id, feature, suggested), suggested)

    make = partial(Decision, customer_id=customer.customer_id, feature=feature, plan=plan.slug, period=period)
    if meter is None:
        in_plan = plan.features.get(feature, False)
        # A trial (an onboarding completion action's grant) opens a feature the plan lacks until it ends.
        on_trial = not in_plan and trial_until_ms is not None and trial_until_ms > now_ms
        enabled = in_plan or on_trial
        upgrade = None if enabled else refuse(FEATURE_NOT_IN_PLAN, suggest_for_feature(config, plan, feature))
        return make(
            kind="feature",
            allowed=enabled,
            usage=None,
            limit=None,
            remaining=None,
            hard_limit=True,
            upgrade=upgrade,
            trial_until_ms=trial_until_ms if on_trial else None,
        )
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
    # Top-ups (credit grants) bought this period raise the limit by their units.
    limit = allowance.limit + granted
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


def _number(value: Decimal | None) -> Any:
    # Exact JSON numbers (orjson cannot encode Decimal): "1000" not 1000.0, "0.001" not 0.0010000000000.
    if value is None:
        return None
    return orjson.Fragment(format(value.normalize(), "f").encode())


def _utc(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _iso(ms: int) -> str:
    return ms_to_datetime(ms).isoformat().replace("+00:00", "Z")


def decision_body(d: Decision) -> dict[str, Any]:
    """The answer's JSON body (``orjson.dumps`` it). A suspended customer's answer also carries
    ``code: "suspended"``, the reason, since/until and how to appeal."""
    body = {
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
    if d.trial_until_ms is not None:
        body["trial_until"] = _iso(d.trial_until_ms)
    if d.suspension is not None:
        s = d.suspension
        body["code"] = "suspended"
        body["reason"] = s.reason
        body["suspended_since"] = _utc(s.since)
        body["suspended_until"] = None if s.until is None else _utc(s.until)
        body["appeal"] = s.appeal
    return body
