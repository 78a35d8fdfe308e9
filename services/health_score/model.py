"""The facts a score is computed from (daily per customer, plus the latest tenant context) and the score
itself: plain data, JSON-able, the same in memory (real-time path) and in PostgreSQL (batch path)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DAY_MS = 86_400_000


def day_of(ms: int) -> int:
    """Days since the epoch (UTC) of an event time in milliseconds."""
    return ms // DAY_MS


@dataclass
class DayFacts:
    """One customer's day: what the score needs, aggregated at event time (never raw events)."""

    #: event name → count, each record weighted by 1/sample_rate.
    actions: dict[str, float] = field(default_factory=dict)
    #: person_id → event name → count, key-action events only (active users, per segment).
    people: dict[str, dict[str, float]] = field(default_factory=dict)
    #: NPS answers (0-10) and CSAT answers (1-5): score → count.
    nps: dict[str, float] = field(default_factory=dict)
    csat: dict[str, float] = field(default_factory=dict)
    payment_failures: float = 0.0
    downgrades: float = 0.0
    #: Highest plan-limit pressure seen that day: 1.0 a hard limit reached, 0.5 >= 90 %, else 0.
    plan_limits: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DayFacts:
        return cls(**data)

    def rename_person(self, old: str, new: str) -> bool:
        """Re-attributes ``old``'s actions to ``new`` (an identity merge). True when something moved."""
        moved = self.people.pop(old, None)
        if moved is None:
            return False
        into = self.people.setdefault(new, {})
        for name, count in moved.items():
            into[name] = into.get(name, 0.0) + count
        return True


@dataclass
class Context:
    """The customer's latest known state (by event time): plan, billing status, open tickets, seats."""

    plan: str | None = None
    billing_status: str | None = None
    open_tickets: int = 0
    seats: int | None = None
    seats_limit: int | None = None
    csm_owner: str | None = None
    as_of: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Context:
        return cls(**data)


@dataclass(frozen=True)
class Factor:
    """One input of the score and what it contributes: ``points`` of ``max_points`` of the 0-100 score;
    ``change`` is the points gained (+) or lost (-) against the previous period."""

    name: str
    component: str
    value: float
    points: float
    max_points: float
    change: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class HealthScore:
    customer_id: str
    score: int
    band: str
    segment: str
    usage: float
    sentiment: float
    financial_risk: float
    contributions: dict[str, float]
    factors: tuple[Factor, ...]
    previous_score: int | None
    trend: int
    trend_direction: str
    churn_risk: float
    active_users: int
    seats: int
    as_of: int
    config_version: int

    @property
    def components(self) -> dict[str, float]:
        return {
            "usage": round(self.usage, 4),
            "sentiment": round(self.sentiment, 4),
            "financial_risk": round(self.financial_risk, 4),
        }

    def top_factors(self, n: int = 3) -> list[Factor]:
        """The factors that moved the score most against the previous period, then the biggest drags."""
        moved = sorted((f for f in self.factors if abs(f.change) >= 0.05), key=lambda f: -abs(f.change))
        drags = sorted(
            (f for f in self.factors if f not in moved and f.max_points - f.points >= 0.05),
            key=lambda f: f.points - f.max_points,
        )
        return (moved + drags)[:n]
