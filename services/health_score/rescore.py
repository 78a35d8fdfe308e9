"""The batch path over the analytics store: every customer's score on past days, recomputed with a
``health.yaml`` (the one in use or a changed one) from the store's daily facts
(``GET /v1/analytics/daily-facts``) — so a backtest can judge a formula before it ever ran.

The facts are folded by the same :class:`~services.health_score.processor.FactsBuilder` as the real-time
path (each per-day count becomes one event weighted by its count, as sampling weighs events), and scored by
the same :func:`~services.health_score.scoring.compute_score`. The customer's context on each day is the
newest the store knew by then (plan, billing status, open tickets, seats): a past day is scored with what
was known that day, not with today's state.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from services.health_score.alerts import CustomerAlertState
from services.health_score.model import DAY_MS, Context, DayFacts, HealthScore
from services.health_score.processor import FactsBuilder
from services.health_score.registry import HealthConfig
from services.health_score.scoring import compute_score
from services.health_score.store import CustomerState


@dataclass
class Rebuilt:
    """One customer's facts from the store, and its context day by day (ascending)."""

    state: CustomerState
    context_days: list[int] = field(default_factory=list)
    contexts: list[Context] = field(default_factory=list)

    def context_on(self, day: int) -> Context | None:
        i = bisect.bisect_right(self.context_days, day)
        return self.contexts[i - 1] if i else None


def _noon(day: int) -> int:
    return day * DAY_MS + DAY_MS // 2


def rebuild(body: Mapping[str, Any], builder: FactsBuilder) -> dict[str, Rebuilt]:
    """The daily facts answer (``counts``, ``scores``, ``context``, ``limit_hits``) as each customer's
    state, through the real-time path's own folding."""
    out: dict[str, Rebuilt] = {}

    def of(customer: str) -> Rebuilt:
        found = out.get(customer)
        if found is None:
            found = out[customer] = Rebuilt(CustomerState({}, Context(), CustomerAlertState()))
        return found

    # Answers to a survey count once per answer with their value: they come from the scored rows.
    surveys = {builder.nps_event, builder.csat_event}
    for customer, day, name, person, n in body["counts"]:
        if name in surveys:
            continue
        event = {"name": name, "timestamp": _noon(day), "person_id": person or None, "properties": {}}
        # A downgrade counts once per event; everything else is weighted like a sampled event.
        repeat, weight = (int(n), 1) if name == builder.downgraded else (1, int(n))
        for _ in range(repeat):
            builder.add_event(of(customer).state, {**event, "sample_rate": 1.0 / weight})
    for customer, day, name, person, value, n in body["scores"]:
        if name not in surveys:
            continue
        try:
            number: float | str = float(value)
        except ValueError:
            number = value  # refused by the builder like a live one
        event = {
            "name": name,
            "timestamp": _noon(day),
            "person_id": person or None,
            "properties": {"score": number},
        }
        for _ in range(int(n)):
            builder.add_event(of(customer).state, event)
    for customer, day, percent, hard in body["limit_hits"]:
        builder.add_entitlement(
            of(customer).state, {"occurred_at": _noon(day), "threshold_percent": percent, "hard_limit": hard}
        )
    running: dict[str, Context] = {}
    for customer, day, plan, billing_status, open_tickets, seats in sorted(
        body["context"], key=lambda r: (r[0], r[1])
    ):
        rebuilt = of(customer)
        previous = running.get(customer, Context())
        context = replace(
            previous,
            plan=plan or previous.plan,
            seats_limit=builder.seats_limits.get(plan) if plan else previous.seats_limit,
            billing_status=billing_status or previous.billing_status,
            open_tickets=int(open_tickets) if billing_status else previous.open_tickets,
            seats=seats or previous.seats,
            as_of=_noon(day),
        )
        running[customer] = context
        rebuilt.context_days.append(day)
        rebuilt.contexts.append(context)
    return out


def score_on(config: HealthConfig, customer: str, rebuilt: Rebuilt, day: int) -> HealthScore | None:
    """The customer's score at the end of ``day`` from what the store knew by then; None before its first
    event."""
    context = rebuilt.context_on(day)
    if context is None:
        return None
    facts: dict[int, DayFacts] = {d: f for d, f in rebuilt.state.facts.items() if d <= day}
    return compute_score(config, customer, facts, context, (day + 1) * DAY_MS - 1)


def weekly_scores(
    config: HealthConfig, states: Mapping[str, Rebuilt], days: Iterable[int]
) -> list[tuple[str, int, HealthScore]]:
    """Every customer's score on each of ``days`` (e.g. one a week) it had history by."""
    wanted: Sequence[int] = sorted(set(days))
    out = []
    for customer, rebuilt in sorted(states.items()):
        for day in wanted:
            score = score_on(config, customer, rebuilt, day)
            if score is not None:
                out.append((customer, day, score))
    return out
