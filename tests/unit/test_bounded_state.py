"""A flood of made-up person ids from one tenant: every per-person structure stays within its bound —
entries and memory (tracemalloc) — and the other tenants' state is untouched.

Covers the enrichment identity graph, growth's activation counters and the health scorer's daily facts
(the metering aggregator's dedup ids have their own bound and tests: tests/unit/metering/test_state_store.py);
and the caches of docs/operations.md "Memory bounds" (the entitlement API's per-customer rows, growth's flag
overrides and exposures, ingest's rate-limit buckets and name memo, the kernel's credential cache and failed
attempts): each stays at its bound with its gauge equal to its size, and what it evicted is read again from
its source, never answered wrong.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plg_sdk.flags import Evaluation
from prometheus_client import REGISTRY

from services.enrichment.identity import IdentityGraph
from services.entitlements.customer_cache import CustomerCache
from services.growth.activation import Tracker
from services.growth.flags import ExposureLog
from services.growth.overrides import FlagOverrides
from services.health_score.alerts import CustomerAlertState
from services.health_score.model import DAY_MS, Context, day_of
from services.health_score.processor import FactsBuilder
from services.health_score.registry import load_config
from services.health_score.store import CustomerState
from services.ingest import metrics as ingest_metrics
from services.ingest import model as ingest_model
from services.ingest.ratelimit import RateLimiter
from services.kernel import metrics
from services.kernel.apikeys import CredentialCache
from services.kernel.auth import FailedAttempts
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


# -- the caches of docs/operations.md "Memory bounds" -----------------------------------------------


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


class Rows:
    """A pool over a made-up table (one value per key, bumped by ``change``): counts the reads, so a test sees
    an evicted entry read again rather than answered from memory or dropped."""

    def __init__(self) -> None:
        self.reads = 0
        self.version: dict[str, int] = {}

    @contextmanager
    def connection(self) -> Iterator[Rows]:
        self.reads += 1
        yield self

    def value(self, key: str) -> str:
        return f"{key}@{self.version.get(key, 0)}"

    def change(self, key: str) -> None:
        self.version[key] = self.version.get(key, 0) + 1

    # what FlagOverrides runs: (flag key, scope, variant) rows of the person
    def execute(self, sql: str, params: tuple[str, str]) -> Rows:
        self._rows = [("banner", "person", self.value(f"{params[0]}/{params[1]}"))]
        return self

    def fetchall(self) -> list[tuple[str, str, str]]:
        return self._rows


def test_entitlement_customer_rows_stay_at_their_bound_and_an_evicted_customer_is_read_again():
    rows = Rows()
    cache = CustomerCache(rows, lambda conn, c: [conn.value(c)], 3600, name="grants", max_entries=BOUND)  # type: ignore[arg-type]
    assert cache.get("loyal") == ["loyal@0"]

    def flood(i: int) -> None:
        assert cache.get(f"fake-{i}") == [f"fake-{i}@0"]

    small = grown_bytes(flood, FLOOD // 10)
    large = grown_bytes(lambda i: flood(FLOOD // 10 + i), FLOOD)
    assert len(cache) == BOUND
    assert gauge("plg_entitlements_customer_cache_entries", cache="grants") == BOUND
    assert large < 2 * small, (small, large)
    # the loyal customer was evicted by the flood: its next check reads it again, with its current rows
    rows.change("loyal")
    reads = rows.reads
    assert cache.get("loyal") == ["loyal@1"]
    assert rows.reads == reads + 1
    assert cache.get("loyal") == ["loyal@1"]
    assert rows.reads == reads + 1
    assert len(cache) == BOUND


def test_growth_overrides_and_exposures_stay_at_their_bound_under_a_flood_of_made_up_persons():
    rows = Rows()
    overrides = FlagOverrides(rows, ttl_seconds=3600, max_entries=BOUND)  # type: ignore[arg-type]
    exposures = ExposureLog(BOUND)
    seen = Evaluation("banner", True, "on", "SPLIT", version=3)
    assert overrides.get("acme", "loyal") == {"banner": "acme/loyal@0"}
    assert exposures.first("loyal", seen)

    def flood(i: int) -> None:
        assert overrides.get("abuser", f"fake-{i}") == {"banner": f"abuser/fake-{i}@0"}
        assert exposures.first(f"fake-{i}", seen)

    small = grown_bytes(flood, FLOOD // 10)
    large = grown_bytes(lambda i: flood(FLOOD // 10 + i), FLOOD)
    assert len(overrides) == BOUND
    assert len(exposures) == BOUND
    assert gauge("plg_growth_overrides_cache_entries") == BOUND
    assert gauge("plg_growth_exposure_log_entries") == BOUND
    assert large < 2 * small, (small, large)
    # evicted: the override is read again (its current value), the exposure reported again (analytics
    # counts exposures once per identity, so a repeat costs one event, a loss would cost the experiment)
    rows.change("acme/loyal")
    assert overrides.get("acme", "loyal") == {"banner": "acme/loyal@1"}
    assert exposures.first("loyal", seen)
    assert not exposures.first("loyal", seen)


def test_ingest_rate_limit_buckets_and_name_memo_stay_bounded_under_a_flood_of_keys_and_names():
    limiter = RateLimiter(rate=10, burst=100, min_burst=1, max_keys=BOUND)
    assert limiter.retry_after("loyal", 100, now=0.0) == 0
    assert limiter.retry_after("loyal", 1, now=0.0) > 0  # its burst is spent
    for i in range(FLOOD):
        assert limiter.retry_after(f"fake-{i}", 1, now=0.0) == 0  # every key gets its own bucket
        assert len(limiter) <= BOUND
    assert gauge("plg_ingest_rate_limit_buckets") == len(limiter)
    # the loyal key's bucket went with the others: it starts again full (never refused for another's flood)
    assert limiter.retry_after("loyal", 100, now=0.0) == 0

    names = ingest_model._VALID_NAMES
    assert ingest_metrics.MEMO is not None  # importing ingest's metrics makes the gauge track the memo
    for i in range(2 * ingest_model._MAX_REMEMBERED + 10):
        assert ingest_model._event_name(f"event-{i}", "name") == f"event-{i}"
        assert len(names) <= ingest_model._MAX_REMEMBERED
    metrics.refresh_sizes()
    assert gauge("plg_ingest_memo_entries", cache="valid_names") == len(names)
    # an evicted name is checked again and still accepted
    assert "event-0" not in names
    assert ingest_model._event_name("event-0", "name") == "event-0"


@dataclass(frozen=True)
class Row:
    secret_sha256: str
    revoked: bool = False


def test_credential_cache_and_failed_attempts_stay_bounded_under_a_flood_of_made_up_key_ids_and_clients():
    lookups: list[str] = []

    async def lookup(key_id: str) -> Any:
        lookups.append(key_id)
        return Row("h") if key_id == "real" else None

    async def flood() -> None:
        cache: CredentialCache[Any] = CredentialCache(lookup, 3600, 3600, max_entries=BOUND, name="keys")
        assert await cache.get("real") == Row("h")
        before = len(lookups)
        for i in range(FLOOD):
            assert await cache.get(f"fake-{i}") is None
            assert len(cache._entries) <= BOUND
            if i % 100 == 0:
                assert await cache.get("real") == Row("h")  # a key in use, between the made-up ones
        assert len(cache._entries) == BOUND
        assert gauge("plg_auth_credential_cache_entries", cache="keys") == BOUND
        # the key in use stayed cached through the flood (never looked up again); the made-up ids evicted
        # are looked up again when they come back, and still unknown
        assert len(lookups) == before + FLOOD
        assert await cache.get("fake-0") is None
        assert len(lookups) == before + FLOOD + 1

    asyncio.run(flood())

    attempts = FailedAttempts(3, 60.0, max_clients=BOUND, clock=lambda: 0.0)
    for _ in range(3):
        attempts.failed("attacker")
    assert attempts.retry_after("attacker") > 0
    for i in range(FLOOD):
        attempts.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(attempts._windows) == BOUND
    assert gauge("plg_auth_failed_attempt_clients") == BOUND
