"""Records the aggregator writes (pure).

* :func:`aggregate_record` — one ``usage_aggregate`` value for a changed window;
* :func:`threshold_record` — one ``entitlement_event`` for a crossed 80/90/100 % threshold;
* :func:`abuse_record` — one ``abuse_signal`` (the abuse guard).

The entitlement decision the API answers lives in ``services/entitlements/handlers.py``.
"""

from __future__ import annotations

from typing import Any

from services.metering_aggregator.abuse import Signal
from services.metering_aggregator.model import ThresholdCrossing, Window
from services.metering_aggregator.values import nanounits_to_decimal
from services.plans.model import PlansConfig
from services.plans.upgrades import (
    USAGE_LIMIT_APPROACHING,
    USAGE_LIMIT_EXCEEDED,
    suggest_for_meter,
    upgrade_url,
)


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


def abuse_record(signal: Signal, now_ms: int) -> dict[str, Any]:
    """One ``abuse_signal`` value (the evidence of one anomaly)."""
    signal_id = f"{signal.customer_id}|{signal.kind}|{signal.minute_start_ms}"
    if signal.meter is not None:
        signal_id += f"|{signal.meter}"
    return {
        "signal_id": signal_id,
        "customer_id": signal.customer_id,
        "plan": signal.plan,
        "kind": signal.kind,
        "meter": signal.meter,
        "minute_start": signal.minute_start_ms,
        "observed": signal.observed,
        "expected": signal.expected,
        "threshold": signal.threshold,
        "events_in_minute": signal.events_in_minute,
        "persons_in_minute": signal.persons_in_minute,
        "baseline_events_per_minute": signal.baseline_events,
        "baseline_persons_per_minute": signal.baseline_persons,
        "action": "suspend" if signal.suspend else "none",
        "reason": signal.reason,
        "detected_at": now_ms,
    }
