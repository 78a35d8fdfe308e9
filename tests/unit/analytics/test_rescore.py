"""The batch health path over the analytics store: a customer's score on a past day, rescored from the
store's daily facts (ClickHouse's real engine), equals the real-time path's score computed from the same
events known by that day — key actions of several persons, NPS answers, payment failures, a downgrade,
seats, a billing status and a hard limit hit."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.analytics import queries
from services.analytics.model import limit_hit_row, row_of
from services.analytics.store import AnalyticsStore, open_store
from services.health_score.alerts import CustomerAlertState
from services.health_score.model import DAY_MS, Context
from services.health_score.processor import FactsBuilder
from services.health_score.registry import load_config
from services.health_score.rescore import rebuild, score_on, weekly_scores
from services.health_score.scoring import compute_score
from services.health_score.store import CustomerState

DAY0 = 20_400  # 2025-11-08
_ids = itertools.count()
CONFIG = load_config()
SEATS = {"free": 3, "starter": 3, "growth": 15}


def ev(customer: str, name: str, day: int, person: str | None = "p1", **extra: Any) -> dict[str, Any]:
    tenant = extra.pop("tenant", {"plan": "starter", "billing_status": "active", "open_tickets": 0})
    return {
        "event_id": f"e{next(_ids)}",
        "customer_id": customer,
        "name": name,
        "timestamp": day * DAY_MS + 3_600_000 * (next(_ids) % 20),
        "person_id": person,
        "plan": tenant["plan"],
        "properties": extra.pop("properties", {}),
        "enriched_at": day * DAY_MS,
        "tenant": {"support_tier": "standard", "csm_owner": None, **tenant},
    }


EVENTS = (
    [ev("busy", "core_action_completed", DAY0 + d % 30, person=f"p{d % 4}") for d in range(90)]
    + [ev("busy", "project_created", DAY0 + d, person="p2") for d in (3, 9, 21)]
    + [ev("busy", "user_signed_in", DAY0 + d, person="p5") for d in range(0, 30, 2)]
    + [ev("busy", "nps_submitted", DAY0 + 12, properties={"score": s}) for s in (9, 10, 6)]
    + [ev("busy", "seats_changed", DAY0 + 1, person=None, properties={"seats": 3})]
    + [ev("sinking", "core_action_completed", DAY0 + d, person="p1") for d in range(0, 8)]
    + [
        ev(
            "sinking",
            "payment_failed",
            DAY0 + 20 + k,
            person=None,
            tenant={"plan": "growth", "billing_status": "past_due", "open_tickets": 4},
        )
        for k in range(3)
    ]
    + [
        ev(
            "sinking",
            "plan_downgraded",
            DAY0 + 22,
            person=None,
            tenant={"plan": "starter", "billing_status": "past_due", "open_tickets": 5},
        )
    ]
)
HITS = [
    {
        "event_id": "h1",
        "customer_id": "sinking",
        "meter": "api_requests",
        "plan": "growth",
        "threshold_percent": 100,
        "usage": Decimal(1000),
        "limit": Decimal(1000),
        "hard_limit": True,
        "occurred_at": (DAY0 + 18) * DAY_MS,
    }
]


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[AnalyticsStore]:
    opened = open_store("chdb", chdb_path, None, database="rescore_fixture")
    opened.insert_events([row_of(e, "usage-events-enriched", 0, i) for i, e in enumerate(EVENTS)], "rs")
    opened.insert_limit_hits([limit_hit_row(h, "entitlement-events", 0, i) for i, h in enumerate(HITS)], "rh")
    yield opened
    opened.close()


def realtime_score(customer: str, day: int) -> int:
    """What the real-time path folds from the same events known by the end of ``day``."""
    builder = FactsBuilder(CONFIG, SEATS)
    state = CustomerState({}, Context(), CustomerAlertState())
    end = (day + 1) * DAY_MS
    known = sorted(
        (e for e in EVENTS if e["customer_id"] == customer and e["timestamp"] < end),
        key=lambda e: e["timestamp"],
    )
    for event in known:
        builder.add_event(state, event)
    for hit in HITS:
        if hit["customer_id"] == customer and hit["occurred_at"] < (day + 1) * DAY_MS:
            builder.add_entitlement(state, hit)
    return compute_score(CONFIG, customer, state.facts, state.context, (day + 1) * DAY_MS - 1).score


@pytest.mark.parametrize(
    ("customer", "day"),
    [("busy", DAY0 + 29), ("busy", DAY0 + 13), ("sinking", DAY0 + 25), ("sinking", DAY0 + 10)],
)
def test_a_past_day_rescored_from_the_store_equals_the_real_time_score(
    store: AnalyticsStore, customer: str, day: int
) -> None:
    body = queries.daily_facts(store, queries.Scope(DAY0 * DAY_MS - DAY_MS, (DAY0 + 60) * DAY_MS))
    states = rebuild(body, FactsBuilder(CONFIG, SEATS))
    rescored = score_on(CONFIG, customer, states[customer], day)
    assert rescored is not None
    assert rescored.score == realtime_score(customer, day)


def test_the_sinking_customer_scores_lower_after_its_trouble_and_nobody_before_their_first_event(
    store: AnalyticsStore,
) -> None:
    body = queries.daily_facts(store, queries.Scope(DAY0 * DAY_MS - DAY_MS, (DAY0 + 60) * DAY_MS))
    states = rebuild(body, FactsBuilder(CONFIG, SEATS))
    scores = {(c, d): s for c, d, s in weekly_scores(CONFIG, states, [DAY0 - 1, DAY0 + 10, DAY0 + 25])}
    assert ("busy", DAY0 - 1) not in scores
    assert scores[("sinking", DAY0 + 25)].score < scores[("sinking", DAY0 + 10)].score
    assert states["sinking"].context_on(DAY0 + 25).billing_status == "past_due"  # type: ignore[union-attr]
    assert states["sinking"].context_on(DAY0 + 10).billing_status == "active"  # type: ignore[union-attr]
