"""Avro through the real broker and our registry, with confluent-kafka's own serializing clients.

These tests import confluent_kafka on purpose: they prove that records written by the kernel are what
Confluent's clients expect, and the other way round.
"""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka import DeserializingConsumer, SerializingProducer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import (
    MessageField,
    SerializationContext,
    StringDeserializer,
    StringSerializer,
)

from services.kernel.kafka import Consumer, Producer
from services.kernel.serde import SchemaRegistry, schema_id_of
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import SCHEMAS_DIR, USAGE_EVENTS
from tests.conftest import Provisioned
from tests.integration.kernel.helpers import consume_n

USAGE_EVENT = SCHEMAS_DIR / "usage_event.avsc"


def event(i: int, customer: str = "cus_interop") -> dict[str, Any]:
    return {
        "event_id": f"evt-{i}-{uuid.uuid4().hex[:8]}",
        "customer_id": customer,
        "name": "api_call_made",
        "timestamp": 1_717_000_000_000 + i,
        "properties": {"endpoint": "/v1/x", "n": i, "ok": True},
        "user_id": None,
        "anonymous_id": f"anon-{i}",
        "session_id": None,
        "ingest": None,
    }


def _serializer(client: SchemaRegistryClient) -> AvroSerializer:
    # TOPIC strategy: subject "<topic>-value", as the catalogue registers it.
    return AvroSerializer(
        client,
        USAGE_EVENT.read_text(),
        conf={"subject.name.strategy.type": "TOPIC", "auto.register.schemas": False},
    )


def _deserializing_consumer(
    kafka: KafkaSettings, client: SchemaRegistryClient, topic: str
) -> DeserializingConsumer:
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"interop-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "key.deserializer": StringDeserializer("utf_8"),
            "value.deserializer": AvroDeserializer(client),
        }
    )
    consumer.subscribe([topic])
    return consumer


def _poll_values(consumer: DeserializingConsumer, n: int, timeout: float = 30.0) -> list[tuple[str, Any]]:
    import time

    got: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append((msg.key(), msg.value()))
    assert len(got) == n, f"got {len(got)} of {n}"
    return got


def test_confluent_serializing_producer_and_deserializing_consumer_work_against_our_registry(
    provisioned: Provisioned, kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings
) -> None:
    topic = provisioned.topic(USAGE_EVENTS)
    client = SchemaRegistryClient({"url": registry_settings.url})
    producer = SerializingProducer(
        {
            "bootstrap.servers": kafka_settings.bootstrap_servers,
            "key.serializer": StringSerializer("utf_8"),
            "value.serializer": _serializer(client),
        }
    )
    sent = [event(i) for i in range(5)]
    for value in sent:
        producer.produce(topic, key=value["customer_id"], value=value)
    assert producer.flush(30) == 0

    consumer = _deserializing_consumer(kafka_settings, client, topic)
    try:
        received = _poll_values(consumer, len(sent))
    finally:
        consumer.close()

    assert sorted(v["event_id"] for _, v in received) == sorted(v["event_id"] for v in sent)
    assert {k for k, _ in received} == {"cus_interop"}
    by_id = {v["event_id"]: v for _, v in received}
    first = by_id[sent[0]["event_id"]]
    assert first["properties"] == {"endpoint": "/v1/x", "n": 0, "ok": True}
    assert first["anonymous_id"] == "anon-0"


def test_kernel_encoder_bytes_equal_confluents_and_carry_the_registered_id(
    provisioned: Provisioned, registry_settings: SchemaRegistrySettings
) -> None:
    subject = f"{provisioned.topic(USAGE_EVENTS)}-value"
    registry = SchemaRegistry(registry_settings)
    encoder = registry.encoder(subject, USAGE_EVENT, auto_register=False)
    ctx = SerializationContext(provisioned.topic(USAGE_EVENTS), MessageField.VALUE)
    value = event(1)

    theirs = _serializer(SchemaRegistryClient({"url": registry_settings.url}))(value, ctx)

    assert encoder.encode(value) == theirs
    assert schema_id_of(theirs) == provisioned.schema_ids[subject] == encoder.schema_id


def test_records_produced_by_the_kernel_are_read_by_confluents_deserializing_consumer(
    provisioned: Provisioned, kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings
) -> None:
    topic = provisioned.topic(USAGE_EVENTS)
    registry = SchemaRegistry(registry_settings)
    encoder = registry.encoder(f"{topic}-value", USAGE_EVENT, auto_register=False)
    sent = [event(i, customer=f"cus_{i % 2}") for i in range(6)]
    with Producer(kafka_settings) as producer:
        futures = [producer.send(topic, encoder.encode(v), v["customer_id"]) for v in sent]
        reports = [f.result(30) for f in futures]
    assert all(r.topic == topic and r.offset >= 0 for r in reports)

    consumer = _deserializing_consumer(
        kafka_settings, SchemaRegistryClient({"url": registry_settings.url}), topic
    )
    try:
        received = _poll_values(consumer, len(sent))
    finally:
        consumer.close()

    assert sorted((k, v["event_id"]) for k, v in received) == sorted(
        (v["customer_id"], v["event_id"]) for v in sent
    )
    # confluent's deserializer gives datetimes for timestamp-millis; the instant is the same.
    assert {int(v["timestamp"].timestamp() * 1000) for _, v in received} == {v["timestamp"] for v in sent}


def test_records_produced_by_confluents_serializing_producer_are_read_by_the_kernel(
    provisioned: Provisioned,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
    group_id: str,
) -> None:
    topic = provisioned.topic(USAGE_EVENTS)
    producer = SerializingProducer(
        {
            "bootstrap.servers": kafka_settings.bootstrap_servers,
            "key.serializer": StringSerializer("utf_8"),
            "value.serializer": _serializer(SchemaRegistryClient({"url": registry_settings.url})),
        }
    )
    sent = [event(i) for i in range(4)]
    for value in sent:
        producer.produce(topic, key=value["customer_id"], value=value)
    assert producer.flush(30) == 0

    decoder = SchemaRegistry(registry_settings).decoder()
    with Consumer(kafka_settings, group_id) as consumer:
        consumer.subscribe([topic])
        records = consume_n(consumer, len(sent))
        decoded = [decoder.decode(r.value()) for r in records]  # type: ignore[arg-type]

    assert sorted(d["event_id"] for d in decoded) == sorted(v["event_id"] for v in sent)
    assert {d["timestamp"] for d in decoded} == {v["timestamp"] for v in sent}
    assert {r.key() for r in records} == {b"cus_interop"}
