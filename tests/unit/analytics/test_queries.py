"""The analytics questions on ClickHouse's real engine (chDB, in a temporary directory), against answers
computed by hand from a small fixture: funnels in order and inside the window, breakdowns, weekly
retention, the north star with a windowed threshold, activation rates, timelines, and erasure."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.analytics import queries
from services.analytics.model import QueryError, row_of
from services.analytics.store import AnalyticsStore, open_store

# Thursday 2025-10-09 00:00:00 UTC; its ISO week starts Monday 2025-10-06.
T = 1_759_968_000_000
H = 3_600_000
D = 24 * H
_offsets = itertools.count()


def event(
    customer: str, person: str | None, name: str, ts: int, plan: str = "free", **props: Any
) -> dict[str, Any]:
    return {
        "event_id": f"{customer}-{person}-{name}-{ts}-{next(_offsets)}",
        "customer_id": customer,
        "name": name,
        "timestamp": ts,
        "person_id": person,
        "plan": plan,
        "properties": props,
        "enriched_at": ts,
    }


FIXTURE = [
    # acme/p1: signup → project → invite within a day (reaches 3)
    event("acme", "p1", "signed_up", T, source="ads"),
    event("acme", "p1", "project_created", T + H),
    event("acme", "p1", "team_invite_sent", T + 2 * H),
    # acme/p2: signup, invite before project: in order only signup → project (reaches 2)
    event("acme", "p2", "signed_up", T, source="organic"),
    event("acme", "p2", "team_invite_sent", T + H),
    event("acme", "p2", "project_created", T + 2 * H),
    # acme/p3: project before signup: reaches only step 1 (the signup)
    event("acme", "p3", "project_created", T),
    event("acme", "p3", "signed_up", T + H, source="ads"),
    # beta/p1 (another tenant's p1 is another person): project 9 days after signup, past a 7-day window
    event("beta", "p1", "signed_up", T, plan="pro", source="ads"),
    event("beta", "p1", "project_created", T + 9 * D, plan="pro"),
    # an account-level event: no person, never in person questions
    event("acme", None, "signed_up", T),
    # core actions of acme/p1: 3 in 2 days (week 0), acme/p2: 3 spread over 20 days (weeks 0, 1, 2)
    event("acme", "p1", "core_action_completed", T + D),
    event("acme", "p1", "core_action_completed", T + D + H),
    event("acme", "p1", "core_action_completed", T + 2 * D),
    event("acme", "p2", "core_action_completed", T + D),
    event("acme", "p2", "core_action_completed", T + 10 * D),
    event("acme", "p2", "core_action_completed", T + 20 * D),
]

SCOPE = queries.Scope(T - D, T + 60 * D)
STEPS = ["signed_up", "project_created", "team_invite_sent"]


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[AnalyticsStore]:
    opened = open_store("chdb", chdb_path, None, database="fixture")
    opened.insert_events([row_of(e, "usage-events-enriched", 0, i) for i, e in enumerate(FIXTURE)], "fixture")
    yield opened
    opened.close()


def counts(answer: dict[str, Any]) -> list[int]:
    return [s["count"] for s in answer["steps"]]


def test_funnel_counts_distinct_persons_in_order_within_the_window(store: AnalyticsStore) -> None:
    answer = queries.funnel(store, STEPS, 7 * 86400, SCOPE)
    assert answer["steps"] == [
        {"name": "signed_up", "count": 4},  # acme p1 p2 p3, beta p1 (the account-level signup is no person)
        {"name": "project_created", "count": 2},  # acme p1, p2 (p3's project came first; beta's too late)
        {"name": "team_invite_sent", "count": 1},  # acme p1
    ]


def test_a_wider_window_lets_the_late_conversion_count(store: AnalyticsStore) -> None:
    assert counts(queries.funnel(store, STEPS, 10 * 86400, SCOPE)) == [4, 3, 1]


def test_funnel_of_one_customer(store: AnalyticsStore) -> None:
    scope = queries.Scope(SCOPE.since_ms, SCOPE.until_ms, "beta")
    assert counts(queries.funnel(store, STEPS, 7 * 86400, scope)) == [1, 0, 0]


def test_funnel_broken_down_by_plan_and_by_property(store: AnalyticsStore) -> None:
    by_plan = queries.funnel(store, STEPS, 7 * 86400, SCOPE, "plan")["breakdown"]
    assert {b["value"]: [s["count"] for s in b["steps"]] for b in by_plan} == {
        "free": [3, 2, 1],
        "pro": [1, 0, 0],
    }
    by_source = queries.funnel(store, STEPS[:2], 7 * 86400, SCOPE, "property:source")["breakdown"]
    # the value on each person's first funnel event: acme/p3's first is project_created (no source)
    assert {b["value"]: [s["count"] for s in b["steps"]] for b in by_source} == {
        "ads": [2, 1],
        "organic": [1, 1],
        "": [1, 0],
    }


def test_funnel_refuses_questions_it_cannot_answer(store: AnalyticsStore) -> None:
    with pytest.raises(QueryError, match="at least two steps"):
        queries.funnel(store, ["signed_up"], 3600, SCOPE)
    with pytest.raises(QueryError, match="breakdown"):
        queries.funnel(store, STEPS, 3600, SCOPE, "color")
    with pytest.raises(QueryError, match="window"):
        queries.funnel(store, STEPS, 400 * 86400, SCOPE)


def test_values_with_quotes_and_control_characters_are_parameters_not_sql(store: AnalyticsStore) -> None:
    hostile = ["x' OR 1=1 --", "tab\there", "back\\slash"]
    assert counts(queries.funnel(store, hostile, 3600, SCOPE)) == [0, 0, 0]


def test_weekly_retention_cohorts(store: AnalyticsStore) -> None:
    answer = queries.retention(store, SCOPE, 4, now_ms=T + 60 * D)
    assert answer["cohorts"] == [
        {
            "cohort": "2025-10-06",
            "size": 4,
            # week 1 (from Oct 13): beta/p1 (Oct 18) and acme/p2 (Oct 19); week 3 (from Oct 27): acme/p2
            "weeks": [4, 2, 0, 1],
            "rates": [1.0, 0.5, 0.0, 0.25],
            "observed_weeks": 4,
        }
    ]


def test_retention_of_one_activity_keeps_the_whole_cohort_as_its_size(store: AnalyticsStore) -> None:
    answer = queries.retention(store, SCOPE, 4, event="core_action_completed", now_ms=T + 60 * D)
    (cohort,) = answer["cohorts"]
    # all four persons are the cohort; core actions: week 0 acme/p1 and p2, week 1 and week 3 acme/p2
    assert (cohort["size"], cohort["weeks"]) == (4, [2, 1, 0, 1])


def test_north_star_counts_persons_reaching_the_threshold_inside_its_window(store: AnalyticsStore) -> None:
    answer = queries.north_star(store, SCOPE, "core_action_completed", 3, 7, "core_action_completed")
    weeks = {w["week"]: w for w in answer["weeks"]}
    # acme/p1 did 3 within 2 days (reached in week 0); acme/p2's 3 took 19 days: never within 7
    assert weeks["2025-10-06"] == {
        "week": "2025-10-06",
        "events": 4,
        "persons": 2,
        "newly_reached": 1,
        "reached": 1,
    }
    assert weeks["2025-10-13"]["reached"] == 1
    without_window = queries.north_star(store, SCOPE, "core_action_completed", 3, None, "x")
    assert without_window["weeks"][-1]["reached"] == 2  # acme/p2 reaches it on its third, Oct 29


def test_activation_rates_per_threshold(store: AnalyticsStore) -> None:
    answer = queries.activation_rates(
        store,
        SCOPE,
        [
            {"name": "projects", "event": "project_created", "count": 1, "window_days": None},
            {"name": "core", "event": "core_action_completed", "count": 3, "window_days": 7},
        ],
    )
    assert [(t["name"], t["persons"], t["activated"], t["rate"]) for t in answer["thresholds"]] == [
        ("projects", 4, 4, 1.0),
        ("core", 4, 1, 0.25),
    ]


def test_timeline_newest_first_and_per_person(store: AnalyticsStore) -> None:
    answer = queries.timeline(store, "acme", "p1", 2, SCOPE)
    assert [e["name"] for e in answer["events"]] == ["core_action_completed", "core_action_completed"]
    assert answer["events"][0]["timestamp"] == T + 2 * D
    everyone = queries.timeline(store, "acme", None, 1000, SCOPE)
    assert len(everyone["events"]) == 15


def test_resume_offsets_come_from_rows_and_saved_positions(store: AnalyticsStore) -> None:
    assert store.resume_offsets("g", ["usage-events-enriched"]) == {
        ("usage-events-enriched", 0): len(FIXTURE)
    }
    store.save_offsets("g", {("usage-events-enriched", 0): len(FIXTURE) + 5, ("usage-events-enriched", 1): 7})
    assert store.resume_offsets("g", ["usage-events-enriched"]) == {
        ("usage-events-enriched", 0): len(FIXTURE) + 5,
        ("usage-events-enriched", 1): 7,
    }
    assert store.resume_offsets("other", ["usage-events-enriched"]) == {
        ("usage-events-enriched", 0): len(FIXTURE)
    }


def test_the_same_batch_inserted_twice_is_stored_once(chdb_path: Path) -> None:
    fresh = open_store("chdb", chdb_path, None, database="twice")
    try:
        fresh.engine.command("TRUNCATE TABLE twice.events")
        rows = [row_of(e, "t", 0, i) for i, e in enumerate(FIXTURE[:5])]
        fresh.insert_events(rows, "g:t/0:0-5")
        fresh.insert_events(rows, "g:t/0:0-5")
        assert fresh.engine.rows("SELECT count() AS n FROM twice.events")[0]["n"] == 5
    finally:
        fresh.close()


def test_accounts_for_suggestion_label_retention_and_count_the_first_days(chdb_path: Path) -> None:
    fresh = open_store("chdb", chdb_path, None, database="suggestion")
    try:
        fresh.engine.command("TRUNCATE TABLE suggestion.events")
        events = [
            # stays: active 40 days after its first event; 3 projects in its first 7 days, 1 later
            event("stays", "u", "signed_up", T),
            *[event("stays", "u", "project_created", T + i * D) for i in range(3)],
            event("stays", "u", "project_created", T + 10 * D),
            event("stays", "u", "api_call_made", T + 40 * D),
            # leaves: nothing after day 2
            event("leaves", "u", "signed_up", T),
            event("leaves", "u", "project_created", T + D),
            # cancels: active on day 40, but canceled
            event("cancels", "u", "signed_up", T),
            event("cancels", "u", "subscription_canceled", T + 40 * D),
            # too young: its first event is 10 days before the end, retention cannot be known yet
            event("young", "u", "signed_up", T + 50 * D),
        ]
        fresh.insert_events([row_of(e, "t", 0, i) for i, e in enumerate(events)], None)
        accounts = queries.accounts_for_suggestion(
            fresh, queries.Scope(T - D, T + 60 * D), 7, 30, ["subscription_canceled"]
        )
        by_counts = sorted((a.retained, sorted(a.counts.items())) for a in accounts)
        assert by_counts == [
            (False, [("project_created", 1), ("signed_up", 1)]),
            (False, [("signed_up", 1)]),
            (True, [("project_created", 3), ("signed_up", 1)]),
        ]
    finally:
        fresh.close()
