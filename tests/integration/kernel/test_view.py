"""The kernel's materialised view reader against the real broker and registry: read to the end, ready,
follow, tombstones, read_committed, poison records skipped, keys filtered before decoding."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.kernel.kafka import Producer, TransactionalProducer
from services.kernel.processing.messages import Message
from services.kernel.processing.view import MaterializedView
from services.kernel.serde import SchemaRegistry, ValueEncoder
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_AGGREGATES, topic
from tests.conftest import Provisioned
from tests.integration.kernel.helpers import wait_for


def aggregate(customer: str, value: int) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "meter": "api_requests",
        "aggregation": "COUNT",
        "group": {},
        "granularity": "BILLING_PERIOD",
        "window_start": 0,
        "window_end": 1,
        "value": Decimal(value),
        "event_count": value,
        "updated_at": int(time.time() * 1000),
    }


class Latest:
    """What a view keeps: the latest value per key, tombstones deleting; records apply() saw."""

    def __init__(self, fail_on: set[bytes] = frozenset()) -> None:  # type: ignore[assignment]
        self.values: dict[bytes, int] = {}
        self.seen: list[bytes] = []
        self.fail_on = fail_on
        self.thread: str | None = None

    def apply(self, message: Message) -> None:
        key = message.key
        assert key is not None
        self.thread = threading.current_thread().name
        self.seen.append(key)
        if key in self.fail_on:
            raise ValueError(f"cannot apply {key!r}")
        if message.value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = int(message.value["value"])


@dataclass
class Topic:
    """A fresh compacted usage-aggregates topic, a producer and Avro encoder for it; views made with
    :meth:`view` are closed after the test."""

    name: str
    prefix: str
    kafka: KafkaSettings
    registry: SchemaRegistry
    encoder: ValueEncoder
    producer: Producer
    views: list[MaterializedView] = field(default_factory=list)

    def send(self, key: str, value: dict[str, Any] | bytes | None) -> None:
        raw = self.encoder.encode(value) if isinstance(value, dict) else value
        self.producer.produce(self.name, raw, key=key)

    def view(self, apply: Any, name: str, **options: Any) -> MaterializedView:
        self.producer.flush()
        view = MaterializedView(
            self.kafka, self.name, self.registry.decoder(), apply, name=self.prefix + name, **options
        )
        self.views.append(view)
        return view.start()


@pytest.fixture
def aggregates(
    kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings, provisioned: Provisioned
) -> Iterator[Topic]:
    spec = topic(USAGE_AGGREGATES, provisioned.prefix)
    assert spec.schema_path is not None
    sr = SchemaRegistry(registry_settings)
    encoder = sr.encoder(spec.value_subject, spec.schema_path, auto_register=False)
    t = Topic(spec.name, provisioned.prefix, kafka_settings, sr, encoder, Producer(kafka_settings))
    try:
        yield t
    finally:
        for view in t.views:
            view.close()
        t.producer.close()
        sr.close()


def test_the_view_reads_to_the_end_then_is_ready_and_follows_with_tombstones_and_only_committed_records(
    aggregates: Topic, kafka_settings: KafkaSettings
) -> None:
    for i in range(300):
        aggregates.send(f"c{i % 30}", aggregate(f"c{i % 30}", i))
    aggregates.send("c0", None)  # a tombstone: c0 deleted
    txn = TransactionalProducer(kafka_settings, f"{aggregates.prefix}view-test-{uuid.uuid4().hex[:6]}")
    try:
        txn.init_transactions()
        txn.begin()
        txn.produce(aggregates.name, aggregates.encoder.encode(aggregate("aborted", 1)), key="aborted")
        txn.abort()  # read_committed: the view never sees it
    finally:
        txn.close()
    latest = Latest()

    view = aggregates.view(latest.apply, "view")

    assert view.ready.wait(60), "the view never caught up"
    assert view.healthy()
    # Everything written before start is in at the moment it is ready.
    assert latest.values == {f"c{k}".encode(): 270 + k for k in range(1, 30)}
    assert latest.thread == f"{aggregates.prefix}view"
    assert b"aborted" not in latest.seen
    # ...and it follows what comes after.
    aggregates.send("late", aggregate("late", 7))
    aggregates.send("c1", None)
    aggregates.producer.flush()
    wait_for(lambda: latest.values.get(b"late") == 7 and b"c1" not in latest.values, timeout=30)


def test_a_poison_record_is_skipped_and_the_view_goes_on_and_filtered_keys_are_never_decoded(
    aggregates: Topic,
) -> None:
    aggregates.send("a", aggregate("a", 1))
    aggregates.send("garbage", b"not avro at all")  # cannot be decoded
    aggregates.send("boom", aggregate("boom", 2))  # apply() raises on it
    aggregates.send("skip-me", b"also not avro")  # filtered out by key: never decoded
    aggregates.send("b", aggregate("b", 3))
    latest = Latest(fail_on={b"boom"})

    view = aggregates.view(
        latest.apply, "poison-view", key_filter=lambda key: key is not None and not key.startswith(b"skip")
    )

    assert view.ready.wait(60)
    assert latest.values == {b"a": 1, b"b": 3}  # the records after the poison ones were applied
    # garbage never reached apply(), skip-me was not even decoded (keys spread over partitions: any order)
    assert sorted(latest.seen) == [b"a", b"b", b"boom"]
    assert view.records == 5

    def count(outcome: str) -> float | None:
        labels = {"view": f"{aggregates.prefix}poison-view", "outcome": outcome}
        return REGISTRY.get_sample_value("plg_view_records_total", labels)

    assert (count("applied"), count("undecodable"), count("failed"), count("skipped")) == (2, 1, 1, 1)
    assert view.error is None  # poison records are the records' fault, not the view's


def test_an_empty_topic_is_ready_at_once(aggregates: Topic) -> None:
    view = aggregates.view(Latest().apply, "empty")

    assert view.ready.wait(30)
