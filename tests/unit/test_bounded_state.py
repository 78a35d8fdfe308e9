"""A flood of made-up person ids from one tenant: every per-person structure stays within its bound —
entries and memory (tracemalloc) — and the other tenants' state is untouched.

Covers the enrichment identity graph, growth's activation counters and the health scorer's daily facts
(the metering aggregator's dedup ids have their own bound and tests: tests/unit/metering/test_state_store.py).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

from services.enrichment.identity import IdentityGraph
from services.growth.activation import Tracker
from services.health_score.alerts import CustomerAlertState
from services.health_score.model import DAY_MS, Context, day_of
from services.health_score.processor import FactsBuilder
from services.health_score.registry import load_config
from services.health_score.store import CustomerState
from services.kernel.processing.store import LocalStore
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


def test_identity_graph_stays_bounded_in_memory_under_a_flood_of_made_up_anonymous_ids(tmp_path: Path):
    """Links past the memory bound go to the local store, none is lost; merges stop at their cap."""
    store = LocalStore(tmp_path / "identity")
    g = IdentityGraph(max_merged=BOUND, store=store, memory_links=BOUND)
    g.identify("neighbour", "anon-n", "user-n")
    g.merge("neighbour", "old-n", "user-n")

    def flood(i: int) -> None:
        g.identify("abuser", f"anon-{i}", f"user-{i}")
        g.merge("abuser", f"merged-{i}", f"user-{i}")

    small = grown_bytes(flood, FLOOD // 10)
    large = grown_bytes(lambda i: flood(FLOOD // 10 + i), FLOOD)
    total = FLOOD + FLOOD // 10
    assert len(g.links.mem) <= BOUND * 1.1 + 1
    assert g.refused_merges > 0
    # 10x more made-up ids, about the same memory (see the activation test for why not strictly less)
    assert large < 2 * small, (small, large)
    # every link is there, the oldest from disk; the neighbour is untouched
    assert len(g.links) == total + 1
    assert g.user_of("abuser", f"anon-{total - 1}") == f"user-{total - 1}"
    assert g.user_of("abuser", "anon-0") == "user-0"
    assert g.resolve("abuser", None, "anon-7") == ("user-7", True)
    assert g.resolve("neighbour", None, "anon-n") == ("user-n", True)
    assert g.canonical("neighbour", "old-n") == "user-n"
    store.close()


def test_activation_counters_stay_bounded_in_memory_under_a_flood_of_made_up_persons(tmp_path: Path):
    """Memory holds at most the bound (after each transaction's spill); every person is still counted, the
    ones past the bound from the local store (RocksDB's own memory is its bounded cache and memtables,
    which tracemalloc does not see)."""
    store = LocalStore(tmp_path / "activation-0")
    tracker = Tracker(ACTIVATION, max_persons=10 * FLOOD, store=store, memory_keys=BOUND)
    for _ in range(3):
        tracker.apply(activation_event("project_created", person="loyal", customer="neighbour"))
    tracker.take_dirty()
    tracker.spill()

    def flood(i: int) -> None:
        tracker.apply(activation_event("project_created", person=f"fake-{i}", customer="abuser"))
        if i % 500 == 0:
            tracker.take_dirty()  # what each transaction does, and after its commit the spill
            tracker.spill()

    small = grown_bytes(flood, FLOOD // 10)
    large = grown_bytes(lambda i: flood(FLOOD // 10 + i), FLOOD)
    tracker.take_dirty()
    tracker.spill()
    assert len(tracker.state.mem) <= BOUND
    # 10x more made-up persons, about the same memory (what was in memory before tracing began is replaced
    # by traced entries, so the second figure is about the first, never 10x it)
    assert large < 2 * small, (small, large)
    # nothing evicted: every made-up person is counted once, most of them on disk
    total = FLOOD + FLOOD // 10
    assert tracker.person_count() == total + 1
    assert tracker.state.disk >= total - BOUND
    for i in (0, 1234, total - 1):
        assert tracker.state[f"c|person|abuser|fake-{i}|project_created"]["n"] == 1
    # the neighbour's person and its crossing are intact (read back from disk)
    assert tracker.state["f|person|neighbour|loyal|projects"]["threshold"] == "projects"
    tracker.apply(activation_event("project_created", person="loyal", customer="neighbour"))
    assert tracker.state["c|person|neighbour|loyal|project_created"]["n"] == 4
    store.close()


def test_past_the_abuse_cap_a_new_person_counts_only_for_the_customer():
    tracker = Tracker(ACTIVATION, max_persons=2)
    tracker.apply(activation_event("project_created", person="a", ts=NOW))
    tracker.apply(activation_event("project_created", person="b", ts=NOW))
    tracker.apply(activation_event("project_created", person="c", ts=NOW))  # the third: refused
    tracker.apply(activation_event("project_created", person="a", ts=NOW))  # a known person: counted
    assert "c|person|c1|c|project_created" not in tracker.state
    assert tracker.state["c|person|c1|a|project_created"]["n"] == 2
    assert tracker.state["c|customer|c1||project_created"]["n"] == 4
    assert tracker.refused == 1
    assert tracker.person_count() == 2


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
