"""A flood of made-up person ids from one tenant: every per-person structure stays within its bound —
entries and memory (tracemalloc) — and the other tenants' state is untouched.

Covers the enrichment identity graph, growth's activation counters and the health scorer's daily facts
(the metering aggregator's dedup ids have their own bound and tests: tests/unit/metering/test_state_store.py).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

from services.enrichment.identity import IdentityGraph
from services.growth.activation import Tracker
from services.health_score.alerts import CustomerAlertState
from services.health_score.model import DAY_MS, Context, day_of
from services.health_score.processor import FactsBuilder
from services.health_score.registry import load_config
from services.health_score.store import CustomerState
from tests.unit.growth.test_activation import CONFIG as ACTIVATION
from tests.unit.growth.test_activation import NOW
from tests.unit.growth.test_activation import event as activation_event

FLOOD = 30_000
BOUND = 1_000


def grown_bytes(flood: Callable[[int], None], n: int) -> int:
    """Bytes still allocated after ``flood(i)`` for i in range(n)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            flood(i)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_identity_graph_stays_bounded_under_a_flood_of_made_up_anonymous_ids():
    g = IdentityGraph(max_links=BOUND, max_merged=BOUND)
    g.identify("neighbour", "anon-n", "user-n")
    g.merge("neighbour", "old-n", "user-n")

    def flood(i: int) -> None:
        g.identify("abuser", f"anon-{i}", f"user-{i}")
        g.merge("abuser", f"merged-{i}", f"user-{i}")

    small = grown_bytes(flood, FLOOD // 10)
    large = grown_bytes(lambda i: flood(FLOOD // 10 + i), FLOOD)
    assert len(g) <= 2 * BOUND + 3
    assert g.evicted_links == FLOOD + FLOOD // 10 - BOUND
    assert g.refused_merges > 0
    # 10x more made-up ids grew memory by about nothing (the first pass filled the bound)
    assert large < small, (small, large)
    # the most recent link is there, the oldest gone; the neighbour is untouched
    assert g.user_of("abuser", f"anon-{FLOOD + FLOOD // 10 - 1}") is not None
    assert g.user_of("abuser", "anon-0") is None
    assert g.resolve("neighbour", None, "anon-n") == ("user-n", True)
    assert g.canonical("neighbour", "old-n") == "user-n"


def test_activation_counters_stay_bounded_under_a_flood_of_made_up_persons():
    tracker = Tracker(ACTIVATION, max_persons=BOUND)
    for _ in range(3):
        tracker.apply(activation_event("project_created", person="loyal", customer="neighbour"))
    tracker.take_dirty()

    def flood(i: int) -> None:
        tracker.apply(activation_event("project_created", person=f"fake-{i}", customer="abuser"))
        if i % 500 == 0:
            tracker.take_dirty()  # what each transaction does

    small = grown_bytes(flood, FLOOD // 10)
    large = grown_bytes(lambda i: flood(FLOOD // 10 + i), FLOOD)
    persons = {v["subject"] for v in tracker.state.values() if v.get("scope") == "person"}
    assert len(persons - {"loyal"}) <= BOUND
    assert tracker.person_count() <= BOUND + 1
    assert large < small, (small, large)
    # evicted persons leave the changelog too (tombstones), in the same transaction
    changes = tracker.take_dirty()
    assert any(value is None for _, value in changes)
    # the neighbour's person and its crossing are intact
    assert tracker.state["f|person|neighbour|loyal|projects"]["threshold"] == "projects"


def test_an_evicted_person_counts_again_from_zero():
    tracker = Tracker(ACTIVATION, max_persons=2)
    tracker.apply(activation_event("project_created", person="a", ts=NOW))
    tracker.apply(activation_event("project_created", person="b", ts=NOW))
    tracker.apply(activation_event("project_created", person="a", ts=NOW))  # a is now the most recent
    tracker.apply(activation_event("project_created", person="c", ts=NOW))  # b, least recent, goes
    assert "c|person|c1|b|project_created" not in tracker.state
    assert tracker.state["c|person|c1|a|project_created"]["n"] == 2


def test_health_facts_stay_bounded_under_a_flood_of_made_up_persons():
    config = load_config()
    builder = FactsBuilder(config, {}, max_persons_per_day=BOUND)
    key_action = next(iter(builder.key_names))
    state = CustomerState({}, Context(), CustomerAlertState())
    t = 20_000 * DAY_MS

    def flood(i: int) -> None:
        builder.add_event(
            state,
            {
                "customer_id": "abuser",
                "name": key_action,
                "timestamp": t,
                "person_id": f"fake-{i}",
                "properties": {},
            },
        )

    small = grown_bytes(flood, FLOOD // 10)
    large = grown_bytes(lambda i: flood(FLOOD // 10 + i), FLOOD)
    facts = state.facts[day_of(t)]
    assert len(facts.people) == BOUND
    assert facts.actions[key_action] == FLOOD + FLOOD // 10  # every event still counts as an event
    assert large < small, (small, large)
