"""Alert rules with hysteresis (pure): a rule enters at one bound, leaves only past a second, must hold a
minimum duration before it fires, and fires again only after a cooldown — so a value hovering around a
threshold raises one alert, not one per wobble (the seeds' "alert fatigue" pitfall)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from services.health_score.model import HealthScore
from services.health_score.registry import AlertRule, HealthConfig
from services.health_score.scoring import BAND_ORDER


@dataclass
class RuleState:
    active: bool = False
    pending_since: int | None = None
    last_fired: int | None = None


@dataclass(frozen=True)
class Hysteresis:
    direction: str  # "above" | "below"
    enter: float
    exit: float
    min_duration_ms: int
    cooldown_ms: int

    @classmethod
    def of(cls, rule: AlertRule) -> Hysteresis:
        assert rule.enter is not None
        assert rule.exit is not None
        return cls(
            rule.direction,
            rule.enter,
            rule.exit,
            int(rule.min_duration_seconds * 1000),
            int(rule.cooldown_seconds * 1000),
        )

    def _entering(self, value: float) -> bool:
        return value >= self.enter if self.direction == "above" else value <= self.enter

    def _left(self, value: float) -> bool:
        return value < self.exit if self.direction == "above" else value > self.exit

    def step(self, state: RuleState, now: int, value: float) -> bool:
        """Feeds one observation; True when an alert fires now. ``state`` is updated in place."""
        if state.active:
            if self._left(value):
                state.active = False
                state.pending_since = None
            return False
        if not self._entering(value):
            state.pending_since = None
            return False
        if state.pending_since is None:
            state.pending_since = now
        if now - state.pending_since < self.min_duration_ms:
            return False
        state.active = True
        if state.last_fired is not None and now - state.last_fired < self.cooldown_ms:
            return False  # still in its cooldown: active, but silent
        state.last_fired = now
        return True


@dataclass
class BandState:
    """The settled band (held for the rule's minimum duration) and a candidate waiting to settle."""

    settled: str | None = None
    candidate: str | None = None
    candidate_since: int | None = None
    last_fired: int | None = None


def band_step(rule: AlertRule, state: BandState, now: int, band: str) -> tuple[str, str] | None:
    """(from, to) when the settled band drops and the cooldown allows an alert; None otherwise."""
    if state.settled is None:
        state.settled = band
        return None
    if band == state.settled:
        state.candidate = state.candidate_since = None
        return None
    if band != state.candidate:
        state.candidate, state.candidate_since = band, now
    assert state.candidate_since is not None
    if now - state.candidate_since < rule.min_duration_seconds * 1000:
        return None
    before, state.settled = state.settled, band
    state.candidate = state.candidate_since = None
    if BAND_ORDER[band] >= BAND_ORDER[before]:
        return None
    if state.last_fired is not None and now - state.last_fired < rule.cooldown_seconds * 1000:
        return None
    state.last_fired = now
    return before, band


@dataclass
class CustomerAlertState:
    churn_risk: RuleState = field(default_factory=RuleState)
    usage_anomaly: RuleState = field(default_factory=RuleState)
    band: BandState = field(default_factory=BandState)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CustomerAlertState:
        return cls(
            RuleState(**data.get("churn_risk", {})),
            RuleState(**data.get("usage_anomaly", {})),
            BandState(**data.get("band", {})),
        )


@dataclass(frozen=True)
class Alert:
    alert_id: str
    customer_id: str
    rule: str
    severity: str
    value: float
    threshold: float
    message: str
    score: int
    band: str
    fired_at: int
    config_version: int

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def _alert(
    score: HealthScore, rule: str, severity: str, value: float, threshold: float, message: str
) -> Alert:
    # Deterministic: a redelivered batch that fires the same alert again produces the same id.
    return Alert(
        f"{score.customer_id}|{rule}|{score.as_of}",
        score.customer_id,
        rule,
        severity,
        round(value, 4),
        threshold,
        message,
        score.score,
        score.band,
        score.as_of,
        score.config_version,
    )


def evaluate(
    config: HealthConfig, state: CustomerAlertState, score: HealthScore, usage_z: float | None
) -> list[Alert]:
    """Every rule of health.yaml on one new score; updates ``state``; returns the alerts that fire."""
    fired: list[Alert] = []
    now = score.as_of
    churn = config.alerts["churn_risk"]
    if Hysteresis.of(churn).step(state.churn_risk, now, score.churn_risk):
        fired.append(
            _alert(
                score,
                "churn_risk",
                "critical",
                score.churn_risk,
                churn.enter or 0.0,
                f"churn risk {score.churn_risk:.2f} above {churn.enter} (score {score.score})",
            )
        )
    drop = band_step(config.alerts["band_dropped"], state.band, now, score.band)
    if drop is not None:
        fired.append(
            _alert(
                score,
                "band_dropped",
                "warning",
                float(BAND_ORDER[drop[1]]),
                float(BAND_ORDER[drop[0]]),
                f"health band dropped from {drop[0]} to {drop[1]} (score {score.score})",
            )
        )
    anomaly = config.alerts["usage_anomaly"]
    if usage_z is not None and Hysteresis.of(anomaly).step(state.usage_anomaly, now, usage_z):
        fired.append(
            _alert(
                score,
                "usage_anomaly",
                "warning",
                usage_z,
                anomaly.enter or 0.0,
                f"usage z-score {usage_z:.1f} against the customer's own baseline",
            )
        )
    return fired
