"""The batch path: every customer's score recomputed from the history in PostgreSQL (not from the
real-time path's memory), on a schedule — scores move as days pass even when no event arrives, which is
how a customer who went quiet (silent churn) turns red and alerts. Same facts, same function, same number
as the real-time path (tested)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.health_score.model import DAY_MS, HealthScore, day_of
from services.health_score.processor import FactsBuilder, health_record
from services.health_score.registry import HealthConfig
from services.health_score.scoring import compute_score
from services.health_score.store import CustomerState, HealthStore, ScoreRow


def recompute(
    store: HealthStore,
    config: HealthConfig,
    builder: FactsBuilder,
    as_of: int,
    customers: Iterable[str] | None = None,
    chunk: int = 500,
) -> list[tuple[HealthScore, dict[str, Any], CustomerState]]:
    """Scores as of ``as_of`` (ms) for ``customers`` (default: every customer with history)."""
    ids = list(customers) if customers is not None else store.customers()
    since = day_of(as_of) - config.history_days - 1
    out = []
    for i in range(0, len(ids), chunk):
        for cid, state in store.load(ids[i : i + chunk], since).items():
            score = compute_score(config, cid, state.facts, state.context, as_of)
            out.append(
                (score, health_record(score, state.context.plan, builder.activated(state), "batch"), state)
            )
    return out


def end_of_day(day: int) -> int:
    return (day + 1) * DAY_MS - 1


def history_scores(
    config: HealthConfig, builder: FactsBuilder, customer_id: str, state: CustomerState, as_of: int, days: int
) -> list[tuple[HealthScore, dict[str, Any]]]:
    """The daily history of one customer rebuilt from its facts: the score as of the end of each of the
    last ``days`` days before ``as_of``'s (after a merge re-attributed its people, or a new registry
    version)."""
    today = day_of(as_of)
    out = []
    for day in range(today - days, today):
        score = compute_score(config, customer_id, state.facts, state.context, end_of_day(day))
        out.append((score, health_record(score, state.context.plan, builder.activated(state), "batch")))
    return out


def backfill(
    store: HealthStore,
    config: HealthConfig,
    builder: FactsBuilder,
    as_of: int,
    days: int,
    customers: Iterable[str] | None = None,
) -> int:
    """Rewrites the daily score history of ``customers`` (default all) for the last ``days`` days."""
    ids = list(customers) if customers is not None else store.customers()
    since = day_of(as_of) - days - config.history_days - 1
    written = 0
    for i in range(0, len(ids), 100):
        rows = []
        for cid, state in store.load(ids[i : i + 100], since).items():
            rows += [
                ScoreRow(s, r, "batch") for s, r in history_scores(config, builder, cid, state, as_of, days)
            ]
        store.save_scores(rows)
        written += len(rows)
    return written
