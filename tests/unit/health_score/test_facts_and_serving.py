"""Folding enriched events into facts (event time, sampling, context order, merges, bad answers), the
serving cache's order and the dashboard's escaping."""

from __future__ import annotations

import random
from typing import Any

from services.health_score import dashboard
from services.health_score.alerts import CustomerAlertState
from services.health_score.model import DAY_MS, Context, day_of
from services.health_score.processor import MERGE_EVENT, FactsBuilder
from services.health_score.registry import load_config
from services.health_score.serving import Hub, ServingCache, summary
from services.health_score.store import CustomerState

CONFIG = load_config()
T = 20_000 * DAY_MS


def state() -> CustomerState:
    return CustomerState({}, Context(), CustomerAlertState())


def event(name: str, ts: int = T, person: str | None = "p1", **extra: Any) -> dict[str, Any]:
    return {
        "customer_id": "acme",
        "name": name,
        "timestamp": ts,
        "person_id": person,
        "properties": {},
        **extra,
    }


def test_events_land_in_their_event_time_day_weighted_by_sampling() -> None:
    builder = FactsBuilder(CONFIG, {"starter": 3})
    s = state()
    builder.add_event(s, event("core_action_completed"))
    builder.add_event(s, event("page_viewed", ts=T - 3 * DAY_MS, sample_rate=0.1))
    assert s.facts[day_of(T)].people == {"p1": {"core_action_completed": 1.0}}
    assert s.facts[day_of(T) - 3].actions == {"page_viewed": 10.0}
    assert s.facts[day_of(T) - 3].people == {}, "passive events never make a person active"


def test_an_older_event_does_not_overwrite_a_newer_context() -> None:
    builder = FactsBuilder(CONFIG, {"starter": 3, "pro": 10})
    s = state()
    new = {"plan": "pro", "billing_status": "past_due", "open_tickets": 2}
    old = {"plan": "starter", "billing_status": "active", "open_tickets": 0}
    builder.add_event(s, event("api_call_made", ts=T, tenant=new))
    builder.add_event(s, event("api_call_made", ts=T - 1000, tenant=old))
    assert (s.context.plan, s.context.billing_status, s.context.open_tickets, s.context.seats_limit) == (
        "pro",
        "past_due",
        2,
        10,
    )


def test_survey_answers_out_of_range_are_reported_not_counted() -> None:
    builder = FactsBuilder(CONFIG, {})
    s = state()
    assert builder.add_event(s, event("nps_submitted", properties={"score": 9}))[1] is None
    _, problem = builder.add_event(s, event("csat_submitted", properties={"score": 7}))
    assert problem is not None
    assert "1..5" in problem
    assert s.facts[day_of(T)].nps == {"9": 1.0}
    assert s.facts[day_of(T)].csat == {}


def test_a_merge_moves_every_day_of_the_merged_ids_to_the_survivor() -> None:
    builder = FactsBuilder(CONFIG, {})
    s = state()
    builder.add_event(s, event("core_action_completed", ts=T - DAY_MS, person="anon-1"))
    builder.add_event(s, event("core_action_completed", ts=T, person="old-canonical"))
    builder.add_event(s, event("core_action_completed", ts=T, person="user-1"))
    merge = {"merged_id": "anon-1", "survivor_id": "user-1", "replaced_person_ids": ["old-canonical"]}
    day, _ = builder.add_event(s, event(MERGE_EVENT, person="user-1", merge=merge))
    assert day is None
    assert {p for f in s.facts.values() for p in f.people} == {"user-1"}
    assert s.facts[day_of(T)].people["user-1"]["core_action_completed"] == 2.0


def test_entitlement_crossings_raise_plan_pressure() -> None:
    builder = FactsBuilder(CONFIG, {})
    s = state()
    builder.add_entitlement(s, {"occurred_at": T, "threshold_percent": 90, "hard_limit": False})
    assert s.facts[day_of(T)].plan_limits == 0.5
    builder.add_entitlement(s, {"occurred_at": T, "threshold_percent": 100, "hard_limit": True})
    assert s.facts[day_of(T)].plan_limits == 1.0


class _Msg:
    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value


def record(cid: str, score: int, trend: int = 0, at: int = T) -> dict[str, Any]:
    return {"customer_id": cid, "score": score, "band": CONFIG.band(score), "trend": trend, "computed_at": at}


def test_the_serving_cache_ranks_riskiest_first_and_ignores_older_scores() -> None:
    cache = ServingCache(Hub())
    for r in (record("a", 80), record("b", 30, -5), record("c", 30, 2), record("d", 60)):
        cache.apply_health(_Msg(r))  # type: ignore[arg-type]
    cache.apply_health(_Msg(record("a", 10, at=T - 1)))  # type: ignore[arg-type]  # older: ignored
    assert [s["customer_id"] for s in cache.ranked()] == ["b", "c", "d", "a"]
    assert cache.latest["a"]["score"] == 80
    assert cache.history["a"] == [{"day": "2024-10-04", "score": 80, "band": "green"}]


def test_the_kept_order_equals_a_full_sort_after_many_score_changes_and_a_history_load() -> None:
    """The list order is kept as scores arrive (one move per score); after any sequence it is the order a
    full sort of every customer's summary gives, and each summary's sparkline is its current history."""
    rng = random.Random(7)
    cache = ServingCache(Hub())
    at = T
    for _ in range(3000):
        at += rng.choice((0, 1, 86_400_000))  # some scores land on the same day, some on the next
        r = record(f"c{rng.randrange(60)}", rng.randrange(101), rng.randrange(-3, 4), at)
        cache.apply_health(_Msg(r))  # type: ignore[arg-type]
        if rng.random() < 0.05:
            cache.ranked()  # read between changes too: the cached order must be dropped on change
    cache.load_history({"c1": [{"day": "2024-01-01", "score": 1, "band": "red"}], "nobody": []})
    expected = sorted(
        (summary(r, cache.history.get(c, [])) for c, r in cache.latest.items()),
        key=lambda s: (s["score"], s["trend"], s["customer_id"]),
    )
    assert cache.ranked() == expected
    assert len(cache.ranked()) == 60


def test_the_dashboard_escapes_what_customers_send() -> None:
    hostile = '<script>alert("x")</script>'
    html = dashboard.customer_page(
        None, hostile, [], [{"name": hostile, "timestamp": T, "person_id": hostile}], [], []
    )
    assert hostile not in html
    assert "&lt;script&gt;" in html
    assert hostile not in dashboard.overview([{**record("x", 40), "customer_id": hostile, "sparkline": [40]}])
