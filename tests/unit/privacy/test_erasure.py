"""Erasure in each place that holds a person in memory or on its own state (docs/privacy.md), without a
broker: the request's hashes, enrichment's identity graph, growth's activation state and its HTTP view,
growth's caches, the health score's live events."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from services.activation import parse_activation
from services.enrichment.handlers import merge_link_key
from services.enrichment.identity import IdentityGraph
from services.growth.activation import Tracker
from services.growth.activation_view import ActivationView
from services.growth.flags import ExposureLog, StickyAssignments
from services.growth.processor import ERASED_PREFIX, ActivationHandler
from services.health_score.serving import Hub, ServingCache
from services.kernel.privacy import Erasure
from services.kernel.processing.messages import Emit, Message, OutputTopic
from services.kernel.settings import KafkaSettings
from services.kernel.topics import GROWTH_CHANGELOG

NOW = 1_800_000_000_000


def test_a_request_names_the_person_only_by_salted_hashes_and_matches_their_ids() -> None:
    a = Erasure.new("acme", ["u-1", "anon-1"])
    b = Erasure.new("acme", ["u-1"])
    record = a.record()
    assert "u-1" not in repr(record)
    assert "anon-1" not in repr(record)
    assert a.salt != b.salt
    assert a.person_hashes.isdisjoint(b.person_hashes)
    back = Erasure.from_record(record)
    assert back.matches("u-1")
    assert back.matches("anon-1")
    assert not back.matches("u-2")
    assert not back.matches(None)
    assert not back.matches(42)
    assert back.matching(["u-2", "u-1", None, "anon-1", "u-1"]) == ["anon-1", "u-1"]


def test_the_identity_graph_forgets_the_person_their_links_and_merged_ids_only_for_that_customer() -> None:
    graph = IdentityGraph()
    graph.identify("acme", "anon-1", "u-1")
    graph.identify("acme", "anon-2", "u-other")
    graph.identify("beta", "anon-1", "u-1")
    graph.merge("acme", "u-old", "u-1")
    assert graph.resolve("acme", "u-old", None) == ("u-1", True)
    erasure = Erasure.new("acme", ["u-1"])
    assert graph.forget("acme", erasure.matches) > 0
    # every id of the person starts a new history: no link to the old person
    assert graph.resolve("acme", None, "anon-1") == ("anon-1", False)
    assert graph.resolve("acme", "u-old", None) == ("u-old", True)
    assert graph.resolve("acme", None, "anon-2") == ("u-other", True)  # other persons untouched
    assert graph.resolve("beta", None, "anon-1") == ("u-1", True)  # another tenant's same ids too


def test_a_merge_tombstone_unmerges_the_person_on_restore() -> None:
    from services.enrichment.handlers import Enricher

    graph = IdentityGraph()
    graph.merge("acme", "u-a", "u-b")
    enricher = Enricher.__new__(Enricher)
    enricher.graph = graph
    enricher.apply_link(None, merge_link_key("acme", "u-a", "u-b").encode(), None, 0, announce=False)
    assert graph.resolve("acme", "u-a", None) == ("u-a", True)
    assert len(graph) == 0


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.records.append(args)


class Follower:
    def __init__(self, *erasures: Erasure) -> None:
        self.erasures = list(erasures)
        self.ready = threading.Event()
        self.ready.set()


CONFIG = parse_activation(
    {"plans": ["free"], "thresholds": [{"name": "projects", "event": "project_created", "count": 1}]}
)


def tracked(person: str, customer: str = "acme") -> Tracker:
    tracker = Tracker(CONFIG)
    event = {
        "event_id": f"e-{person}-{customer}",
        "customer_id": customer,
        "name": "project_created",
        "timestamp": NOW,
        "person_id": person,
        "plan": "free",
    }
    assert tracker.apply(event)  # crossed: a counter and a fired record for the person
    tracker.take_dirty()
    return tracker


def handler_with(tracker: Tracker, follower: Follower) -> ActivationHandler:
    handler = ActivationHandler(
        kafka=KafkaSettings(), config=CONFIG, input_topic="in", changelog_topic=GROWTH_CHANGELOG
    )
    handler.trackers = {2: tracker}
    handler.erasures = follower  # type: ignore[assignment]
    return handler


def test_activation_state_is_tombstoned_once_with_a_marker_and_new_history_survives_a_replay() -> None:
    tracker = tracked("u-1")
    for key, value in tracked("u-2").state.items():
        tracker.state[key] = value
    erasure = Erasure.new("acme", ["u-1"])
    handler = handler_with(tracker, Follower(erasure))
    sink = Sink()
    handler.tick(Emit(sink, {GROWTH_CHANGELOG: OutputTopic(GROWTH_CHANGELOG, None)}, None, NOW))
    tombstones = sorted(r[2] for r in sink.records if r[1] is None)
    assert tombstones == [b"c|person|acme|u-1|project_created", b"f|person|acme|u-1|projects"]
    assert all(r[4] == 2 for r in sink.records)  # on the state's own changelog partition
    marker = ERASED_PREFIX + erasure.erasure_id
    assert marker in tracker.state
    assert not any(v.get("subject") == "u-1" for v in tracker.state.values())
    assert any(v.get("subject") == "u-2" for v in tracker.state.values())
    # The person comes back: a new history. A restore (a new tracker from the changelog, marker included)
    # must not erase it again.
    later = {"event_id": "later", "customer_id": "acme", "name": "project_created", "timestamp": NOW}
    tracker.apply({**later, "person_id": "u-1", "plan": "free"})
    restored = Tracker(CONFIG, dict(tracker.state))
    handler.trackers = {2: restored}
    again = Sink()
    handler.tick(Emit(again, {GROWTH_CHANGELOG: OutputTopic(GROWTH_CHANGELOG, None)}, None, NOW))
    assert again.records == []
    assert restored.state["c|person|acme|u-1|project_created"]["n"] == 1


class Record:
    """The few kernel Record methods a view's Message reads."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def key(self) -> bytes:
        return self._key


def test_the_activation_view_forgets_tombstoned_keys() -> None:
    view = ActivationView(CONFIG, lambda record: None)
    key = b"c|person|acme|u-1|project_created"
    value = {"scope": "person", "customer": "acme", "subject": "u-1", "event": "project_created", "n": 3}
    view.apply(Message(Record(key), value))  # type: ignore[arg-type]
    assert view.counts("person", "acme", "u-1") == {"project_created": 3}
    view.apply(Message(Record(key), None))  # type: ignore[arg-type]
    assert view.counts("person", "acme", "u-1") == {}
    assert len(view.entries) == 0


def test_growth_caches_and_health_live_events_forget_the_person() -> None:
    erasure = Erasure.new("acme", ["u-1"])
    sticky = StickyAssignments(pool=None, capacity=10)  # type: ignore[arg-type]
    acme = sticky.view("acme")
    acme["checkout|user_id|u-1"] = "b"
    acme["checkout|user_id|u-2"] = "a"
    assert sticky.forget(erasure.matches) == 1
    assert list(acme) == ["checkout|user_id|u-2"]
    exposures = ExposureLog(10)
    from plg_sdk.flags import Evaluation

    result = Evaluation("f", True, "on", "SPLIT", version=1)
    assert exposures.first("u-1", result)
    assert exposures.first("u-2", result)
    assert exposures.forget(erasure.matches) == 1
    assert exposures.first("u-1", result)
    assert not exposures.first("u-2", result)
    cache = ServingCache(Hub())
    cache.events["acme"] = deque(
        [{"person_id": "u-1", "name": "a"}, {"person_id": "u-2", "name": "b"}, {"person_id": None}], maxlen=5
    )
    assert cache.forget("acme", erasure.matches) == 1
    assert [e["person_id"] for e in cache.events["acme"]] == ["u-2", None]
    assert cache.events["acme"].maxlen == 5
