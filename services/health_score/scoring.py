"""The health score (pure): usage, sentiment and financial risk from a customer's daily facts, combined
with the seeds' formula and weights, its band, trend against the previous period and explanation.

The seeds' composite, kept literally (``combine``)::

    score = round(usage * 0.5 + ((sentiment + 1) / 2 * 100) * 0.3 + ((1 - financial_risk) * 100) * 0.2)

with usage 0-100, sentiment -1..1, financial risk 0..1 and JavaScript's ``Math.round`` (half up; Python's
``round`` would round 62.5 to 62). Everything else here says how the three components are measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from services.health_score.model import DAY_MS, Context, DayFacts, Factor, HealthScore, day_of
from services.health_score.registry import HealthConfig

BAND_ORDER = {"red": 0, "yellow": 1, "green": 2}


def round_half_up(x: float) -> int:
    """``Math.round`` of the seeds: .5 goes up (also for negatives, as in JavaScript)."""
    return math.floor(x + 0.5)


def combine(usage: float, sentiment: float, financial_risk: float, weights: Mapping[str, float]) -> int:
    """The seeds' ``calculateHealthScore`` with the configured weights (0.5 / 0.3 / 0.2)."""
    normalized_sentiment = ((sentiment + 1) / 2) * 100
    financial_score = (1 - financial_risk) * 100
    return round_half_up(
        usage * weights["usage"]
        + normalized_sentiment * weights["sentiment"]
        + financial_score * weights["financial"]
    )


def _clamp(x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo if x < lo else hi if x > hi else x


def _days(facts: Mapping[int, DayFacts], today: int, window: int) -> list[DayFacts]:
    return [facts[d] for d in range(today - window + 1, today + 1) if d in facts]


@dataclass(frozen=True)
class UsageParts:
    depth: float
    breadth: float
    active_users: float
    trend: float
    active_count: int
    seats: int
    weighted_actions: float

    def score(self, weights: Mapping[str, float]) -> float:
        return 100 * (
            weights["depth"] * self.depth
            + weights["breadth"] * self.breadth
            + weights["active_users"] * self.active_users
            + weights["trend"] * self.trend
        )


def active_users(config: HealthConfig, facts: Mapping[int, DayFacts], today: int, segment: str) -> int:
    """The one definition (health.yaml ``active_user``): people with at least ``min_key_actions`` key
    actions of their segment within the window."""
    key = config.key_actions(segment)
    totals: dict[str, float] = {}
    for day in _days(facts, today, config.active_user.window_days):
        for person, actions in day.people.items():
            n = sum(c for name, c in actions.items() if name in key)
            if n:
                totals[person] = totals.get(person, 0.0) + n
    return sum(1 for n in totals.values() if n >= config.active_user.min_key_actions)


def usage_parts(
    config: HealthConfig, facts: Mapping[int, DayFacts], context: Context, today: int, segment: str
) -> UsageParts:
    rules = config.usage
    key = config.key_actions(segment)
    window = _days(facts, today, rules.window_days)
    weighted = 0.0
    used: set[str] = set()
    for day in window:
        for name, count in day.actions.items():
            if name in key:
                weighted += key[name] * count
                if count > 0:
                    used.add(name)
            elif name in config.passive_events:
                weighted += config.passive_events[name] * count
    active = active_users(config, facts, today, segment)
    seats = context.seats or context.seats_limit or rules.default_seats
    weeks = rules.window_days / 7
    depth = _clamp(weighted / max(active, 1) / weeks / rules.depth_target_per_user_week)
    breadth = sum(key[n] for n in used) / sum(key.values())

    def key_weighted(days: list[DayFacts]) -> float:
        return sum(key[n] * c for d in days for n, c in d.actions.items() if n in key)

    t = rules.trend_days
    recent = key_weighted(_days(facts, today, t))
    periods = (rules.window_days - t) // t
    earlier = key_weighted(
        [facts[d] for d in range(today - t - periods * t + 1, today - t + 1) if d in facts]
    )
    baseline = earlier / periods
    trend = (1.0 if recent > 0 else 0.0) if baseline <= 0 else _clamp(recent / baseline)
    return UsageParts(depth, breadth, _clamp(active / seats), trend, active, seats, weighted)


def sentiment_parts(
    config: HealthConfig, facts: Mapping[int, DayFacts], context: Context, today: int
) -> dict[str, float]:
    """Available signals, each -1..1: NPS ((promoters - detractors) / answers), CSAT ((score - 3) / 2 on
    average), open tickets (0 → 0, saturation or more → -1). Missing answers are left out, not zero."""
    rules = config.sentiment
    promoters = detractors = answers = 0.0
    csat_sum = csat_n = 0.0
    for day in _days(facts, today, rules.window_days):
        for score, n in day.nps.items():
            s = int(score)
            answers += n
            promoters += n if s >= 9 else 0
            detractors += n if s <= 6 else 0
        for score, n in day.csat.items():
            csat_sum += (int(score) - 3) / 2 * n
            csat_n += n
    # 0.0 - x: no "-0.0" for a customer without tickets.
    parts: dict[str, float] = {"tickets": 0.0 - _clamp(context.open_tickets / rules.open_tickets_saturation)}
    if answers:
        parts["nps"] = (promoters - detractors) / answers
    if csat_n:
        parts["csat"] = _clamp(csat_sum / csat_n, -1.0, 1.0)
    return parts


def financial_parts(
    config: HealthConfig, facts: Mapping[int, DayFacts], context: Context, today: int
) -> dict[str, float]:
    """Each risk signal 0..1: payment failures (saturating), past due now, downgrades, plan limits hit."""
    rules = config.financial
    window = _days(facts, today, rules.window_days)
    return {
        "payment_failures": _clamp(
            sum(d.payment_failures for d in window) / rules.payment_failures_saturation
        ),
        "past_due": 1.0 if context.billing_status in rules.past_due_statuses else 0.0,
        "downgrades": _clamp(sum(d.downgrades for d in window)),
        "plan_limits": max((d.plan_limits for d in window), default=0.0),
    }


def _factors(
    config: HealthConfig, usage: UsageParts, sentiment: dict[str, float], risk: dict[str, float]
) -> list[Factor]:
    w = config.score_weights
    out = []
    for name in ("depth", "breadth", "active_users", "trend"):
        top = 100 * w["usage"] * config.usage.weights[name]
        out.append(Factor(f"usage.{name}", "usage", getattr(usage, name), top * getattr(usage, name), top))
    available = sum(config.sentiment.weights[k] for k in sentiment)
    for name, value in sentiment.items():
        top = 100 * w["sentiment"] * config.sentiment.weights[name] / available
        out.append(Factor(f"sentiment.{name}", "sentiment", value, top * (value + 1) / 2, top))
    for name, value in risk.items():
        top = 100 * w["financial"] * config.financial.weights[name]
        out.append(Factor(f"financial.{name}", "financial", value, top * (1 - value), top))
    return out


def _compute(config: HealthConfig, facts: Mapping[int, DayFacts], context: Context, as_of: int):  # type: ignore[no-untyped-def]
    today = day_of(as_of)
    segment = config.segment_of(context.plan)
    usage = usage_parts(config, facts, context, today, segment)
    sentiment = sentiment_parts(config, facts, context, today)
    available = sum(config.sentiment.weights[k] for k in sentiment)
    sentiment_value = sum(config.sentiment.weights[k] * v for k, v in sentiment.items()) / available
    risk = financial_parts(config, facts, context, today)
    risk_value = _clamp(sum(config.financial.weights[k] * v for k, v in risk.items()))
    usage_value = usage.score(config.usage.weights)
    score = combine(usage_value, sentiment_value, risk_value, config.score_weights)
    return score, segment, usage, usage_value, sentiment, sentiment_value, risk, risk_value


def compute_score(
    config: HealthConfig, customer_id: str, facts: Mapping[int, DayFacts], context: Context, as_of: int
) -> HealthScore:
    """The customer's score as of ``as_of`` (ms), from the daily facts up to that day and the context.
    Deterministic: the real-time path (facts in memory) and the batch path (facts from PostgreSQL) call
    exactly this."""
    score, segment, usage, usage_value, sentiment, sentiment_value, risk, risk_value = _compute(
        config, facts, context, as_of
    )
    previous_as_of = as_of - config.usage.trend_days * DAY_MS
    p = _compute(config, facts, context, previous_as_of)
    previous_facts = {k: v for k, v in facts.items() if k <= day_of(previous_as_of)}
    had_history = bool(previous_facts)
    previous_score = p[0] if had_history else None
    before = {f.name: f.points for f in _factors(config, p[2], p[4], p[6])} if had_history else {}
    factors = tuple(
        Factor(
            f.name,
            f.component,
            round(f.value, 4),
            round(f.points, 2),
            round(f.max_points, 2),
            round(f.points - before[f.name], 2) if f.name in before else 0.0,
            _detail(f.name, usage),
        )
        for f in _factors(config, usage, sentiment, risk)
    )
    w = config.score_weights
    trend = score - previous_score if previous_score is not None else 0
    direction = "flat" if abs(trend) <= config.trend_flat_points else ("up" if trend > 0 else "down")
    return HealthScore(
        customer_id=customer_id,
        score=score,
        band=config.band(score),
        segment=segment,
        usage=usage_value,
        sentiment=sentiment_value,
        financial_risk=risk_value,
        contributions={
            "usage": round(usage_value * w["usage"], 2),
            "sentiment": round((sentiment_value + 1) / 2 * 100 * w["sentiment"], 2),
            "financial": round((1 - risk_value) * 100 * w["financial"], 2),
        },
        factors=factors,
        previous_score=previous_score,
        trend=trend,
        trend_direction=direction,
        churn_risk=round(1 - score / 100, 4),
        active_users=usage.active_count,
        seats=usage.seats,
        as_of=as_of,
        config_version=config.version,
    )


def _detail(name: str, usage: UsageParts) -> str:
    if name == "usage.active_users":
        return f"{usage.active_count} active of {usage.seats} seats"
    if name == "usage.depth":
        return f"{usage.weighted_actions:.0f} weighted actions in the window"
    return ""


def daily_key_actions(config: HealthConfig, facts: Mapping[int, DayFacts], day: int, segment: str) -> float:
    key = config.key_actions(segment)
    d = facts.get(day)
    return 0.0 if d is None else sum(key[n] * c for n, c in d.actions.items() if n in key)


def usage_zscore(
    config: HealthConfig, facts: Mapping[int, DayFacts], as_of: int, segment: str
) -> float | None:
    """z-score of the last complete day's weighted key actions against the customer's own moving baseline
    (the ``baseline_days`` before it); None until ``min_baseline_days`` of history exist. The standard
    deviation has a Poisson floor (sqrt of the mean) so a perfectly regular customer is not an anomaly at
    its first small dip."""
    rule = config.alerts["usage_anomaly"]
    assert rule.baseline_days is not None
    assert rule.min_baseline_days is not None
    last = day_of(as_of) - 1
    first_known = min(facts, default=last)
    days = [d for d in range(last - rule.baseline_days, last) if d >= first_known]
    if len(days) < rule.min_baseline_days:
        return None
    values = [daily_key_actions(config, facts, d, segment) for d in days]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    std = max(std, math.sqrt(mean), 1e-9)
    return (daily_key_actions(config, facts, last, segment) - mean) / std
