"""The local stack's broker and provisioning, against the real thing: what every other test relies on."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import ConfigResource, ResourceType

from services.kernel.provision import (
    ProvisioningError,
    admin_client,
    config_drift,
    provision_topics,
    register_schemas,
)
from services.kernel.topics import USAGE_EVENTS, TopicSpec, catalogue


def _consume_all(
    bootstrap: str, topic: str, *, isolation: str, expected: int, timeout: float = 30
) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": isolation,
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(values) < expected:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
        # Give a wrongly delivered extra record (e.g. an aborted one) a moment to show up.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
    finally:
        consumer.close()
    return values


def test_transactional_produce_is_visible_to_read_committed_consumers_only_once_committed(
    kafka_settings, topic_prefix
):
    topic = f"{topic_prefix}txn"
    provision_topics(kafka_settings, [TopicSpec(topic, 3, None)])
    producer = Producer(
        {"bootstrap.servers": kafka_settings.bootstrap_servers, "transactional.id": f"{topic_prefix}tx"}
    )
    producer.init_transactions(60)
    producer.begin_transaction()
    producer.produce(topic, key=b"c1", value=b"committed-1")
    producer.produce(topic, key=b"c2", value=b"committed-2")
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"c1", value=b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)

    committed = _consume_all(kafka_settings.bootstrap_servers, topic, isolation="read_committed", expected=2)
    assert sorted(committed) == [b"committed-1", b"committed-2"]
    # The aborted record really reached the log: a read_uncommitted consumer sees it.
    everything = _consume_all(
        kafka_settings.bootstrap_servers, topic, isolation="read_uncommitted", expected=3
    )
    assert b"aborted" in everything


def test_producing_to_an_undeclared_topic_fails_instead_of_creating_it(kafka_settings, topic_prefix):
    topic = f"{topic_prefix}undeclared"
    errors: list[str] = []
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers, "message.timeout.ms": 3000})
    producer.produce(topic, value=b"x", on_delivery=lambda err, _msg: errors.append(str(err)))
    producer.flush(10)
    assert len(errors) == 1
    assert errors[0] != "None", "the record must not be delivered"
    assert topic not in admin_client(kafka_settings).list_topics(timeout=10).topics


def test_provisioning_creates_the_declared_topics_once(kafka_settings, topic_prefix):
    specs = catalogue(topic_prefix)
    first = provision_topics(kafka_settings, specs)
    again = provision_topics(kafka_settings, specs)
    assert sorted(first) == sorted(s.name for s in specs)
    assert again == []
    topics = admin_client(kafka_settings).list_topics(timeout=10).topics
    usage = next(s for s in specs if s.name == f"{topic_prefix}{USAGE_EVENTS}")
    assert len(topics[usage.name].partitions) == usage.partitions


def test_provisioned_topics_carry_their_declared_cleanup_policy(kafka_settings, provisioned):
    admin = admin_client(kafka_settings)
    for spec in provisioned.specs:
        resource = ConfigResource(ResourceType.TOPIC, spec.name)
        config = admin.describe_configs([resource])[resource].result(30)
        assert config["cleanup.policy"].value == spec.cleanup_policy, spec.name


def test_provisioning_an_existing_topic_whose_config_drifted_warns_and_names_the_difference(
    kafka_settings, topic_prefix, caplog
):
    # A state topic created (by hand, or by an older catalogue) with `delete` instead of `compact` loses
    # its state after the retention period: provisioning must not call that "already exists, fine".
    created_as = TopicSpec(f"{topic_prefix}state", 1, None, cleanup_policy="delete")
    declared = TopicSpec(f"{topic_prefix}state", 1, None, cleanup_policy="compact", retention_ms=None)
    provision_topics(kafka_settings, [created_as])
    try:
        with caplog.at_level("WARNING", logger="services.kernel.provision"):
            assert provision_topics(kafka_settings, [declared]) == []

        assert config_drift(kafka_settings, [declared]) == {
            declared.name: {"cleanup.policy": ("compact", "delete")}
        }
        assert any(
            declared.name in r.getMessage() and "cleanup.policy" in r.getMessage() for r in caplog.records
        ), [r.getMessage() for r in caplog.records]
        assert config_drift(kafka_settings, [created_as]) == {}
    finally:
        admin_client(kafka_settings).delete_topics([declared.name])


def test_registering_the_catalogue_twice_gives_the_same_ids(registry_settings, provisioned):
    again = register_schemas(registry_settings, provisioned.specs)
    assert again == provisioned.schema_ids
    assert len(again) == len([s for s in provisioned.specs if s.value_schema])


def test_database_has_the_migrations_applied(stack):
    with psycopg.connect(stack.database_url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions, "migrations must have run"
    assert versions[0].startswith("0001_")


def test_a_stopped_private_broker_refuses_and_a_restarted_one_keeps_its_topics(private_kafka, topic_prefix):
    broker = private_kafka()
    topic = f"{topic_prefix}survives"
    provision_topics(broker.settings, [TopicSpec(topic, 1, None)])
    broker.stop()
    with pytest.raises(KafkaException):
        admin_client(broker.settings).list_topics(timeout=2)
    broker.start()
    assert topic in admin_client(broker.settings).list_topics(timeout=10).topics


def test_provisioning_applies_the_configured_min_insync_replicas_and_replication_factor(
    kafka_settings, topic_prefix
):
    # PLG_TOPIC_MIN_INSYNC_REPLICAS / PLG_TOPIC_REPLICATION_FACTOR reach the broker: 2 in-sync replicas is
    # written as the topic's config (the broker takes it even with one copy), 3 copies cannot be placed on
    # the test stack's single broker, so the broker refuses the topic instead of creating a weaker one.
    spec = TopicSpec(f"{topic_prefix}durable", 1, None)
    provision_topics(kafka_settings, [spec], min_insync_replicas=2)
    admin = admin_client(kafka_settings)
    try:
        resource = ConfigResource(ResourceType.TOPIC, spec.name)
        config = admin.describe_configs([resource])[resource].result(30)
        assert config["min.insync.replicas"].value == "2"
        with pytest.raises(ProvisioningError, match=r"[Rr]eplication factor"):
            provision_topics(
                kafka_settings, [TopicSpec(f"{topic_prefix}three-copies", 1, None)], replication_factor=3
            )
    finally:
        admin.delete_topics([spec.name])
