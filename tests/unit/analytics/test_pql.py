"""Product-qualified leads: the rules (eligible plans, activation, a buying signal, noise refused) and the
signals as the store computes them on ClickHouse's real engine, against numbers counted by hand."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.analytics import queries
from services.analytics.model import limit_hit_row, row_of
from services.analytics.pql import Account, PqlRules, Signals, evaluate, rank
from services.analytics.store import AnalyticsStore, open_store

RULES = PqlRules()
NOW = 1_764_000_000_000
D = 86_400_000
_ids = itertools.count()

FREE = Account("acme", "free", "active")
ACTIVATED = Signals(crossed=("project_created",), recent_events=60, previous_events=20)


def test_an_activated_free_account_whose_usage_grew_qualifies_with_its_evidence() -> None:
    lead = evaluate(FREE, ACTIVATED, RULES)
    assert lead is not None
    assert lead["pql_id"] == "pql:acme"
    assert lead["reasons"] == ["activated", "usage_growth"]
    assert lead["score"] == 40 + round(10 * 1.584962500721156)  # x3 = log2(3) doublings
    assert lead["evidence"]["usage"]["growth"] == 3.0
    assert lead["evidence"]["activation"]["thresholds_crossed"] == ["project_created"]


def test_a_limit_hit_is_a_buying_signal_and_scores_by_the_share_hit() -> None:
    hit = {"api_requests": {"percent": 100, "hard_limit": True, "usage": "1000", "limit": "1000"}}
    flat = Signals(crossed=("api_calls",), recent_events=10, previous_events=10, limits=hit)
    lead = evaluate(FREE, flat, RULES)
    assert lead is not None
    assert lead["reasons"] == ["activated", "limit_hit"]
    assert lead["score"] == 70
    assert lead["evidence"]["limit_hits"] == [{"meter": "api_requests", **hit["api_requests"]}]
    at_80 = Signals(crossed=("api_calls",), limits={"seats": {"percent": 80}})
    assert evaluate(FREE, at_80, RULES)["score"] == 50  # type: ignore[index]
    below = Signals(crossed=("api_calls",), limits={"seats": {"percent": 79}})
    assert evaluate(FREE, below, PqlRules(limit_percent=80)) is None


def test_accounts_that_are_not_leads_are_left_out() -> None:
    # a paying plan, a suspended account, no activation, no buying signal, growth on too few events,
    # and a brand-new account (nothing before the window is a start, not growth)
    assert evaluate(Account("acme", "pro", "active"), ACTIVATED, RULES) is None
    assert evaluate(Account("acme", "free", "active", suspended=True), ACTIVATED, RULES) is None
    assert evaluate(FREE, Signals(recent_events=600, previous_events=20), RULES) is None
    assert evaluate(FREE, Signals(crossed=("x",), recent_events=25, previous_events=20), RULES) is None
    assert evaluate(FREE, Signals(crossed=("x",), recent_events=12, previous_events=2), RULES) is None
    assert evaluate(FREE, Signals(crossed=("x",), recent_events=500, previous_events=0), RULES) is None


def test_a_trialing_account_on_a_paid_plan_is_eligible_unless_trials_are_excluded() -> None:
    trial = Account("acme", "growth", "trialing", csm_owner="dana")
    lead = evaluate(trial, ACTIVATED, RULES)
    assert lead is not None
    assert lead["csm_owner"] == "dana"
    assert evaluate(trial, ACTIVATED, PqlRules(trialing=False)) is None


def test_leads_are_ranked_by_score_then_volume() -> None:
    leads = [
        evaluate(Account(c, "free", "active"), Signals(("t",), recent, previous), RULES)
        for c, recent, previous in (("a", 40, 20), ("b", 80, 20), ("c", 160, 80))
    ]
    assert [lead["customer_id"] for lead in rank([x for x in leads if x])] == ["b", "c", "a"]


def _event(customer: str, name: str, ts: int, person: str | None = "p1") -> dict[str, Any]:
    return {
        "event_id": f"{customer}-{next(_ids)}",
        "customer_id": customer,
        "name": name,
        "timestamp": ts,
        "person_id": person,
        "plan": "free",
        "properties": {},
        "enriched_at": ts,
    }


def _hit(customer: str, meter: str, percent: int, ts: int) -> dict[str, Any]:
    return {
        "event_id": f"{customer}|{meter}|{percent}|{ts}",
        "customer_id": customer,
        "meter": meter,
        "plan": "free",
        "threshold_percent": percent,
        "usage": Decimal("1000.5"),
        "limit": Decimal("1000"),
        "hard_limit": True,
        "occurred_at": ts,
    }


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[AnalyticsStore]:
    opened = open_store("chdb", chdb_path, None, database="pql_fixture")
    events = (
        # grower: 3 projects in 2 days 40 days ago (activated), 4 events in the window before (2 persons),
        # 9 in the last 14 days (3 persons)
        [_event("grower", "project_created", NOW - 40 * D + i * D) for i in range(3)]
        + [_event("grower", "api_call_made", NOW - 20 * D, person=f"p{i % 2}") for i in range(4)]
        + [_event("grower", "api_call_made", NOW - 2 * D, person=f"p{i % 3}") for i in range(9)]
        # slow: 3 projects, but 20 days apart each (the threshold has no window: activated anyway), and
        # an account-level event (no person) in the window
        + [_event("slow", "project_created", NOW - 60 * D + i * 20 * D) for i in range(3)]
        + [_event("slow", "seats_changed", NOW - D, person=None)]
        # never: 2 projects only; an event after NOW does not count
        + [_event("never", "project_created", NOW - 3 * D) for _ in range(2)]
        + [_event("never", "project_created", NOW + D)]
    )
    opened.insert_events(
        [row_of(e, "usage-events-enriched", 0, i) for i, e in enumerate(events)], "pql-events"
    )
    hits = [
        _hit("grower", "api_requests", 80, NOW - 3 * D),
        _hit("grower", "api_requests", 100, NOW - 2 * D),
        _hit("grower", "seats", 90, NOW - 30 * D),  # before the window: not a hit now
    ]
    opened.insert_limit_hits(
        [limit_hit_row(h, "entitlement-events", 1, i) for i, h in enumerate(hits)], "pql-hits"
    )
    yield opened
    opened.close()


THRESHOLDS = [
    {"name": "project_created", "event": "project_created", "count": 3, "window_days": None},
    {"name": "projects_fast", "event": "project_created", "count": 3, "window_days": 7},
]


def test_the_store_computes_each_accounts_signals_exactly(store: AnalyticsStore) -> None:
    found = queries.pql_signals(store, ["grower", "slow", "never", "unknown"], NOW, 14, THRESHOLDS)
    grower = found["grower"]
    assert sorted(grower.crossed) == ["project_created", "projects_fast"]
    assert (grower.recent_events, grower.previous_events) == (9, 4)
    assert (grower.recent_persons, grower.previous_persons) == (3, 2)
    assert grower.limits == {
        "api_requests": {
            "percent": 100,
            "hard_limit": True,
            "usage": grower.limits["api_requests"]["usage"],
            "limit": grower.limits["api_requests"]["limit"],
            "last_at": NOW - 2 * D,
        }
    }
    assert Decimal(grower.limits["api_requests"]["usage"]) == Decimal("1000.5")
    assert Decimal(grower.limits["api_requests"]["limit"]) == Decimal("1000")
    slow = found["slow"]
    assert list(slow.crossed) == ["project_created"]
    assert (slow.recent_events, slow.recent_persons) == (1, 0)
    assert list(found["never"].crossed) == []
    assert "unknown" not in found


def test_the_limit_hits_resume_where_their_offsets_end(store: AnalyticsStore) -> None:
    # the sink resumes each input topic from the table its rows live in
    resume = store.resume_offsets("nobody", ["entitlement-events", "usage-events-enriched"])
    assert resume[("entitlement-events", 1)] == 3
    assert resume[("usage-events-enriched", 0)] >= 20
