"""The metric registry (``deploy/config/health.yaml``) as a validated model: metrics, the one definition of
an active user, segments with their key actions, score weights, bands and alert rules (pure, no I/O but
reading the file)."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.kernel.config import ConfigFileError, load_yaml
from services.kernel.config import config_path as kernel_config_path

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "deploy" / "config" / "health.yaml"
CONFIG_PATH_ENV = "HEALTH_CONFIG_PATH"


WHAT = "health metric registry"
#: The one config error of every service (services.kernel.config), under this module's old name.
HealthConfigError = ConfigFileError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Weight = float


class Metric(_Strict):
    description: str = Field(min_length=1)
    source_events: list[str]
    derived: bool = False
    window_days: int = Field(ge=1, le=400)
    retention_days: int = Field(ge=1, le=3650)
    alerting: bool = False
    threshold: float | None = None


class ActiveUser(_Strict):
    min_key_actions: int = Field(ge=1)
    window_days: int = Field(ge=1, le=400)


class Segment(_Strict):
    plans: list[str]
    key_actions: dict[str, float] = Field(min_length=1)


class UsageRules(_Strict):
    window_days: int = Field(ge=2, le=400)
    trend_days: int = Field(ge=1, le=200)
    depth_target_per_user_week: float = Field(gt=0)
    default_seats: int = Field(ge=1)
    weights: dict[str, float]


class SentimentRules(_Strict):
    window_days: int = Field(ge=1, le=400)
    open_tickets_saturation: int = Field(ge=1)
    weights: dict[str, float]
    nps_event: str
    csat_event: str


class FinancialRules(_Strict):
    window_days: int = Field(ge=1, le=400)
    payment_failure_event: str
    downgrade_event: str
    payment_failures_saturation: int = Field(ge=1)
    past_due_statuses: list[str]
    weights: dict[str, float]


class Bands(_Strict):
    red: int = Field(ge=0, le=100)
    yellow: int = Field(ge=0, le=100)
    green: int = Field(ge=0, le=100)


class AlertRule(_Strict):
    metric: str
    direction: Literal["above", "below"]
    enter: float | None = None
    exit: float | None = None
    baseline_days: int | None = Field(default=None, ge=2)
    min_baseline_days: int | None = Field(default=None, ge=2)
    min_duration_seconds: float = Field(ge=0)
    cooldown_seconds: float = Field(ge=0)


class HealthConfig(_Strict):
    version: int = Field(ge=1)
    effective_date: date
    active_user: ActiveUser
    metrics: dict[str, Metric] = Field(min_length=1)
    segments: dict[str, Segment] = Field(min_length=1)
    default_segment: str
    passive_events: dict[str, float]
    score_weights: dict[str, float]
    usage: UsageRules
    sentiment: SentimentRules
    financial: FinancialRules
    bands: Bands
    trend_flat_points: float = Field(ge=0)
    alerts: dict[Literal["churn_risk", "band_dropped", "usage_anomaly"], AlertRule]
    webhooks: list[str] = []

    def segment_of(self, plan: str | None) -> str:
        for name, segment in self.segments.items():
            if plan in segment.plans:
                return name
        return self.default_segment

    def key_actions(self, segment: str) -> dict[str, float]:
        return self.segments.get(segment, self.segments[self.default_segment]).key_actions

    def band(self, score: int) -> str:
        if score <= self.bands.red:
            return "red"
        if score <= self.bands.yellow:
            return "yellow"
        return "green"

    @property
    def retention_days(self) -> int:
        return max(m.retention_days for m in self.metrics.values())

    @property
    def history_days(self) -> int:
        """Days of daily facts a score needs: the longest window plus one previous period."""
        return (
            max(
                self.usage.window_days,
                self.sentiment.window_days,
                self.financial.window_days,
                self.active_user.window_days,
            )
            + self.usage.trend_days
        )


def _sums_to_one(where: str, weights: dict[str, float], expected: set[str], errors: list[str]) -> None:
    missing = expected - set(weights)
    if missing:
        errors.append(f"{where}: missing {', '.join(sorted(missing))}")
    unknown = set(weights) - expected
    if unknown:
        errors.append(f"{where}: unknown {', '.join(sorted(unknown))} (known: {', '.join(sorted(expected))})")
    if any(w < 0 or not math.isfinite(w) for w in weights.values()):
        errors.append(f"{where}: weights must be finite and >= 0")
    total = sum(weights.values())
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        errors.append(f"{where}: weights must add up to 1, they add up to {total:g}")


def cross_reference_errors(config: HealthConfig) -> list[str]:
    """What the field types cannot say: weights adding up, bands in order, rules that make sense."""
    errors: list[str] = []
    _sums_to_one("score_weights", dict(config.score_weights), {"usage", "sentiment", "financial"}, errors)
    _sums_to_one(
        "usage.weights", dict(config.usage.weights), {"depth", "breadth", "active_users", "trend"}, errors
    )
    _sums_to_one("sentiment.weights", dict(config.sentiment.weights), {"nps", "csat", "tickets"}, errors)
    _sums_to_one(
        "financial.weights",
        dict(config.financial.weights),
        {"payment_failures", "past_due", "downgrades", "plan_limits"},
        errors,
    )
    b = config.bands
    if not (0 <= b.red < b.yellow < b.green == 100):
        errors.append(f"bands: need 0 <= red < yellow < green = 100, got {b.red}/{b.yellow}/{b.green}")
    if config.default_segment not in config.segments:
        errors.append(f"default_segment: {config.default_segment!r} is not a segment")
    seen: dict[str, str] = {}
    for name, segment in config.segments.items():
        for plan in segment.plans:
            if plan in seen:
                errors.append(f"segments.{name}.plans: {plan!r} is already in segment {seen[plan]!r}")
            seen[plan] = name
        for action, weight in segment.key_actions.items():
            if weight <= 0 or not math.isfinite(weight):
                errors.append(f"segments.{name}.key_actions.{action}: weight must be > 0")
            if action in config.passive_events:
                errors.append(f"segments.{name}.key_actions.{action}: is also a passive event")
            elif weight <= max(config.passive_events.values(), default=0.0):
                errors.append(
                    f"segments.{name}.key_actions.{action}: must weigh more than every passive event"
                )
    if config.usage.trend_days * 2 > config.usage.window_days:
        errors.append("usage.trend_days: the window must hold at least two trend periods")
    for name, metric in config.metrics.items():
        if metric.alerting and metric.threshold is None:
            errors.append(f"metrics.{name}: an alerting metric needs a threshold")
        if metric.window_days > metric.retention_days:
            errors.append(f"metrics.{name}: window_days exceeds retention_days")
    known_metrics = set(config.metrics) | {"health.band", "health.score"}
    for name, rule in config.alerts.items():
        where = f"alerts.{name}"
        if rule.metric not in known_metrics:
            errors.append(f"{where}.metric: unknown metric {rule.metric!r}")
        if name != "band_dropped":
            if rule.enter is None or rule.exit is None:
                errors.append(f"{where}: enter and exit are required")
            elif rule.direction == "above" and not rule.exit < rule.enter:
                errors.append(f"{where}: exit must be below enter for an 'above' rule (hysteresis)")
            elif rule.direction == "below" and not rule.exit > rule.enter:
                errors.append(f"{where}: exit must be above enter for a 'below' rule (hysteresis)")
        if name == "usage_anomaly" and (rule.baseline_days is None or rule.min_baseline_days is None):
            errors.append(f"{where}: baseline_days and min_baseline_days are required")
        elif name == "usage_anomaly" and rule.min_baseline_days > rule.baseline_days:  # type: ignore[operator]
            errors.append(f"{where}: min_baseline_days exceeds baseline_days")
    churn = config.metrics.get("customer.churn_risk")
    churn_rule = config.alerts.get("churn_risk")
    if churn and churn_rule and churn.threshold is not None and churn_rule.enter != churn.threshold:
        errors.append("alerts.churn_risk.enter: must equal metrics.customer.churn_risk.threshold")
    for i, url in enumerate(config.webhooks):
        if not url.startswith(("http://", "https://")):
            errors.append(f"webhooks[{i}]: not an http(s) URL")
    return errors


def parse_config(data: Any, source: str = "<health config>") -> HealthConfig:
    if not isinstance(data, dict):
        raise ConfigFileError(source, [f"the document must be a mapping, got {type(data).__name__}"], WHAT)
    try:
        config = HealthConfig.model_validate(data)
    except ValidationError as exc:
        errors = [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigFileError(source, errors, WHAT) from None
    errors = cross_reference_errors(config)
    if errors:
        raise ConfigFileError(source, errors, WHAT)
    return config


def config_path(path: str | Path | None = None) -> Path:
    return kernel_config_path(path, CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH)


def load_config(path: str | Path | None = None) -> HealthConfig:
    resolved = config_path(path)
    data = load_yaml(resolved, WHAT)
    return parse_config(data, str(resolved))


def summary(config: HealthConfig) -> dict[str, Any]:
    return {
        "version": config.version,
        "effective_date": str(config.effective_date),
        "metrics": sorted(config.metrics),
        "segments": sorted(config.segments),
        "score_weights": dict(config.score_weights),
        "bands": config.bands.model_dump(),
        "alerts": sorted(config.alerts),
    }
