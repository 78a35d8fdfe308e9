"""Several scorer instances (docs/health-score.md#scaling-out-several-scorer-instances), on an in-memory
store that keeps the PostgreSQL side's rules: a customer's inputs read away from its home go to the home's
inbox and are folded there once; only the home writes the customer's facts and alerts; a write under an
epoch that another instance has claimed since is refused and leaves nothing behind. The real stack's
version, with two processes and a SIGKILL: tests/e2e/health_score/test_health_scorer_scale_out.py."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

from services.health_score.alerts import Alert, CustomerAlertState
from services.health_score.model import Context
from services.health_score.processor import FactsBuilder, HealthSink, HomePartitions
from services.health_score.registry import load_config
from services.health_score.store import CustomerState, Fenced, InboxEntry, ScoreRow
from services.kernel.kafka import TopicPartition
from services.kernel.processing import Batch, Emit, Message, RetryBatch
from services.kernel.processing.messages import OutputTopic

CONFIG = load_config()
ENRICHED, ENTITLEMENTS = "usage-events-enriched", "entitlement-events"
HOME = {"acme": 0, "globex": 1}


class Store:
    """The rules of services/health_score/store.py that scale-out relies on, in memory."""

    def __init__(self) -> None:
        self.epochs: dict[int, int] = {}
        self.states: dict[str, CustomerState] = {}
        self.inboxed: list[tuple[int, int, str, str, dict[str, Any]]] = []
        self.alerts: list[Alert] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.writers: dict[str, set[int]] = {}
        self._next = 1

    def claim(self, partitions: Iterable[int], owner: str) -> dict[int, int]:
        for p in partitions:
            self.epochs[p] = self.epochs.get(p, 0) + 1
        return {p: self.epochs[p] for p in partitions}

    def load(self, ids: Iterable[str], since: int) -> dict[str, CustomerState]:
        return {
            c: copy.deepcopy(self.states.get(c) or CustomerState({}, Context(), CustomerAlertState()))
            for c in ids
        }

    def inbox(self, homes: Iterable[int], limit: int = 5000) -> list[InboxEntry]:
        wanted = set(homes)
        return [InboxEntry(i, c, k, v) for i, h, c, k, v in self.inboxed if h in wanted][:limit]

    def customers(self) -> list[str]:
        return sorted(self.states)

    def stored_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {k: self.offsets[k] for k in partitions if k in self.offsets}

    def prune(self, before: int) -> int:
        return 0

    def save(
        self,
        states: Mapping[str, CustomerState],
        touched: Mapping[str, set[int]],
        scores: Sequence[ScoreRow],
        alerts: Sequence[Alert],
        offsets: Mapping[tuple[str, int], int],
        *,
        fence: Mapping[int, int] | None = None,
        inbox_add: Sequence[tuple[int, str, str, Mapping[str, Any]]] = (),
        inbox_done: Sequence[int] = (),
    ) -> None:
        if fence and any(self.epochs.get(p) != e for p, e in fence.items()):
            raise Fenced("claimed since")
        if len({i for i, *_ in self.inboxed} & set(inbox_done)) != len(set(inbox_done)):
            raise Fenced("folded by another")
        self.inboxed = [e for e in self.inboxed if e[0] not in inbox_done]
        for home, cid, kind, value in inbox_add:
            self.inboxed.append((self._next, home, cid, kind, dict(value)))
            self._next += 1
        for cid, state in states.items():
            self.states[cid] = copy.deepcopy(state)
            self.writers.setdefault(cid, set()).update(fence or {})
        self.alerts += alerts
        self.offsets.update(offsets)


class Record:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._where = (topic, partition, offset)

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]


class Encoder:
    def encode(self, value: Any) -> bytes:
        return b""


def _sink(store: Store, owner: str) -> HealthSink:
    sink = HealthSink(
        CONFIG,
        store,  # type: ignore[arg-type]
        FactsBuilder(CONFIG, {}),
        tick_interval=3600.0,
        homes=HomePartitions(ENRICHED, HOME.__getitem__, owner),
    )
    sink.entitlement_topic = ENTITLEMENTS
    return sink


def _out(sent: list[tuple[str, Any]]) -> Emit:
    return Emit(
        lambda topic, value, key, *_: sent.append((topic, key)),
        {"customer-health": OutputTopic("customer-health", Encoder())},  # type: ignore[arg-type]
        None,
        int(time.time() * 1000),
    )


def _event(customer: str, name: str = "core_action_completed") -> dict[str, Any]:
    return {
        "customer_id": customer,
        "name": name,
        "timestamp": int(time.time() * 1000),
        "person_id": "p1",
        "properties": {},
        "sample_rate": 1.0,
        "tenant": {"plan": "starter", "billing_status": "past_due", "open_tickets": 9},
    }


def _entitlement(customer: str) -> dict[str, Any]:
    return {"customer_id": customer, "occurred_at": int(time.time() * 1000), "threshold_percent": 100,
            "hard_limit": True}  # fmt: skip


def test_inputs_away_from_home_reach_the_home_through_the_inbox_and_only_the_home_writes() -> None:
    store = Store()
    a, b = _sink(store, "a"), _sink(store, "b")
    a.assigned([TopicPartition(ENRICHED, 0), TopicPartition(ENTITLEMENTS, 0)])
    b.assigned([TopicPartition(ENRICHED, 1), TopicPartition(ENTITLEMENTS, 1)])
    sent_a: list[tuple[str, Any]] = []
    # On a's partitions: acme's own event, globex's entitlement crossing and a globex event keyed off it.
    batch = Batch(
        [
            Message(Record(ENRICHED, 0, 0), _event("acme")),  # type: ignore[arg-type]
            Message(Record(ENRICHED, 0, 1), _event("globex", "payment_failed")),  # type: ignore[arg-type]
            Message(Record(ENTITLEMENTS, 0, 0), _entitlement("globex")),  # type: ignore[arg-type]
        ],
        {(ENRICHED, 0): 2, (ENTITLEMENTS, 0): 1},
    )
    a.process(batch, _out(sent_a))
    assert set(store.states) == {"acme"}
    assert [k for _, _, c, k, _ in store.inboxed if c == "globex"] == ["event", "entitlement"]
    assert store.offsets == {(ENRICHED, 0): 2, (ENTITLEMENTS, 0): 1}
    assert sent_a == [("customer-health", "acme")]

    sent_b: list[tuple[str, Any]] = []
    b.tick(_out(sent_b))  # the inbox fold
    assert store.inboxed == []
    globex = store.states["globex"]
    [facts] = globex.facts.values()
    assert facts.actions == {"payment_failed": 1.0}
    assert facts.plan_limits == 1.0
    assert sent_b == [("customer-health", "globex")]
    b.tick(_out(sent_b))  # folded once: nothing more to do
    assert len(sent_b) == 1
    assert store.writers == {"acme": {0}, "globex": {1}}
    assert {x.customer_id for x in store.alerts} <= {"acme", "globex"}
    assert len([x for x in store.alerts if x.customer_id == "globex"]) <= 1


def test_a_write_under_an_epoch_claimed_since_is_refused_and_leaves_nothing() -> None:
    store = Store()
    stale, fresh = _sink(store, "stale"), _sink(store, "fresh")
    stale.assigned([TopicPartition(ENRICHED, 0)])
    fresh.assigned([TopicPartition(ENRICHED, 0)])  # the group moved it; the stale one was not told yet
    batch = Batch([Message(Record(ENRICHED, 0, 5), _event("acme"))], {(ENRICHED, 0): 6})  # type: ignore[arg-type]
    with pytest.raises(RetryBatch):
        stale.process(batch, _out([]))
    assert store.states == {}
    assert store.offsets == {}
    fresh.process(batch, _out([]))
    assert store.offsets == {(ENRICHED, 0): 6}


def test_one_instance_owning_every_home_needs_no_inbox() -> None:
    store = Store()
    only = _sink(store, "only")
    only.assigned([TopicPartition(ENRICHED, p) for p in (0, 1)] + [TopicPartition(ENTITLEMENTS, 0)])
    batch = Batch(
        [
            Message(Record(ENRICHED, 0, 0), _event("globex")),  # type: ignore[arg-type]
            Message(Record(ENTITLEMENTS, 0, 0), _entitlement("acme")),  # type: ignore[arg-type]
        ],
        {(ENRICHED, 0): 1, (ENTITLEMENTS, 0): 1},
    )
    only.process(batch, _out([]))
    assert store.inboxed == []
    assert set(store.states) == {"acme", "globex"}


def test_the_scorer_keeps_at_most_its_cache_limit_and_an_evicted_customer_is_loaded_with_every_event() -> (
    None
):
    """HEALTH_CACHE_CUSTOMERS under a flood of made-up customers: the least recently scored go (the gauge
    follows), a customer scored in every batch is never loaded again, and one evicted comes back from the
    store with all its facts — no event lost to the bound."""
    from prometheus_client import REGISTRY

    store = Store()
    loads: list[str] = []
    load = store.load

    def counted(ids: Iterable[str], since: int) -> dict[str, CustomerState]:
        ids = list(ids)
        loads.extend(ids)
        return load(ids, since)

    store.load = counted  # type: ignore[method-assign]
    sink = HealthSink(CONFIG, store, FactsBuilder(CONFIG, {}), tick_interval=3600.0, cache_limit=5)  # type: ignore[arg-type]
    sink.assigned([TopicPartition(ENRICHED, 0)])
    offset = 0

    def send(*customers: str) -> None:
        nonlocal offset
        messages = [Message(Record(ENRICHED, 0, offset + i), _event(c)) for i, c in enumerate(customers)]  # type: ignore[arg-type]
        offset += len(customers)
        sink.process(Batch(messages, {(ENRICHED, 0): offset}), _out([]))

    send("loyal", "evicted")
    for i in range(200):
        send("loyal", f"fake-{i}")
        assert len(sink.cache) <= 5
    assert REGISTRY.get_sample_value("plg_health_cached_customers") == len(sink.cache) == 5
    assert loads.count("loyal") == 1  # scored in every batch: stayed cached
    send("evicted")
    assert loads.count("evicted") == 2  # gone with the flood, loaded again
    [facts] = store.states["evicted"].facts.values()
    assert facts.actions == {"core_action_completed": 2.0}
    [facts] = store.states["loyal"].facts.values()
    assert facts.actions == {"core_action_completed": 201.0}
