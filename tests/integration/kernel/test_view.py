"""The kernel's materialised view reader against the real broker and registry: read to the end, ready,
follow, tombstones, read_committed, poison records skipped, keys filtered before decoding."""

from __future__ import annotations

import threading
import time
import uuid
from decimal import Decimal
from typing import Any

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


def _setup(
    kafka: KafkaSettings, registry: SchemaRegistrySettings, provisioned: Provisioned
) -> tuple[str, Any, ValueEncoder]:
    spec = topic(USAGE_AGGREGATES, provisioned.prefix)
    sr = SchemaRegistry(registry)
    assert spec.schema_path is not None
    return spec.name, sr, sr.encoder(spec.value_subject, spec.schema_path, auto_register=False)


def test_the_view_reads_to_the_end_then_is_ready_and_follows_with_tombstones_and_only_committed_records(
    kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings, provisioned: Provisioned
) -> None:
    name, sr, encoder = _setup(kafka_settings, registry_settings, provisioned)
    producer = Producer(kafka_settings)
    for i in range(300):
        producer.produce(name, encoder.encode(aggregate(f"c{i % 30}", i)), key=f"c{i % 30}")
    producer.produce(name, None, key="c0")  # a tombstone: c0 deleted
    producer.flush()
    txn = TransactionalProducer(kafka_settings, f"{provisioned.prefix}view-test-{uuid.uuid4().hex[:6]}")
    txn.init_transactions()
    txn.begin()
    txn.produce(name, encoder.encode(aggregate("aborted", 1)), key="aborted")
    txn.abort()  # read_committed: the view never sees it
    latest = Latest()
    view = MaterializedView(
        kafka_settings, name, sr.decoder(), latest.apply, name=f"{provisioned.prefix}view"
    )
    try:
        view.start()
        assert view.ready.wait(60), "the view never caught up"
        assert view.healthy()
        # Everything written before start is in at the moment it is ready.
        assert latest.values == {f"c{k}".encode(): 270 + k for k in range(1, 30)}
        assert latest.thread == f"{provisioned.prefix}view"
        assert b"aborted" not in latest.seen

        # ...and it follows what comes after.
        producer.produce(name, encoder.encode(aggregate("late", 7)), key="late")
        producer.produce(name, None, key="c1")
        producer.flush()
        wait_for(lambda: latest.values.get(b"late") == 7 and b"c1" not in latest.values, timeout=30)
    finally:
        view.close()
        producer.close()
        txn.close()
        sr.close()


def test_a_poison_record_is_skipped_and_the_view_goes_on_and_filtered_keys_are_never_decoded(
    kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings, provisioned: Provisioned
) -> None:
    name, sr, encoder = _setup(kafka_settings, registry_settings, provisioned)
    producer = Producer(kafka_settings)
    producer.produce(name, encoder.encode(aggregate("a", 1)), key="a")
    producer.produce(name, b"not avro at all", key="garbage")  # cannot be decoded
    producer.produce(name, encoder.encode(aggregate("boom", 2)), key="boom")  # apply() raises on it
    producer.produce(name, b"also not avro", key="skip-me")  # filtered out by key: never decoded
    producer.produce(name, encoder.encode(aggregate("b", 3)), key="b")
    producer.flush()
    latest = Latest(fail_on={b"boom"})
    view = MaterializedView(
        kafka_settings,
        name,
        sr.decoder(),
        latest.apply,
        name=f"{provisioned.prefix}poison-view",
        key_filter=lambda key: key is not None and not key.startswith(b"skip"),
    )
    try:
        view.start()
        assert view.ready.wait(60)
        assert latest.values == {b"a": 1, b"b": 3}  # the records after the poison ones were applied
        # garbage never reached apply(), skip-me was not even decoded (keys spread over partitions: any order)
        assert sorted(latest.seen) == [b"a", b"b", b"boom"]
        assert view.records == 5

        def count(outcome: str) -> float | None:
            labels = {"view": f"{provisioned.prefix}poison-view", "outcome": outcome}
            return REGISTRY.get_sample_value("plg_view_records_total", labels)

        assert (count("applied"), count("undecodable"), count("failed"), count("skipped")) == (2, 1, 1, 1)
        assert view.error is None  # poison records are the records' fault, not the view's
    finally:
        view.close()
        producer.close()
        sr.close()


def test_an_empty_topic_is_ready_at_once(
    kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings, provisioned: Provisioned
) -> None:
    name, sr, _ = _setup(kafka_settings, registry_settings, provisioned)
    view = MaterializedView(
        kafka_settings, name, sr.decoder(), Latest().apply, name=f"{provisioned.prefix}empty"
    )
    try:
        view.start()
        assert view.ready.wait(30)
    finally:
        view.close()
        sr.close()
