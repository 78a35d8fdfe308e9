"""The kernel's Kafka clients against the real broker: delivery, errors, commits, groups, dead letters."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from services.kernel.dlq import DeadLetterPublisher, DlqCipher
from services.kernel.errors import KafkaUnavailableError, TopicNotFoundError
from services.kernel.kafka import (
    Consumer,
    Producer,
    TopicPartition,
    TransactionalProducer,
    check_reachable,
    wait_until_reachable,
)
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import SCHEMAS_DIR, USAGE_EVENTS_DLQ
from tests.conftest import Provisioned
from tests.integration.kernel.helpers import consume_for, consume_n, wait_for


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_send_resolves_once_the_broker_stored_the_record(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("send", partitions=3)
    with Producer(kafka_settings) as producer:
        reports = [producer.send(topic, f"v{i}".encode(), "same-key").result(30) for i in range(3)]

    assert {r.topic for r in reports} == {topic}
    assert len({r.partition for r in reports}) == 1  # same key, same partition
    assert [r.offset for r in reports] == [reports[0].offset + i for i in range(3)]
    assert all(r.timestamp and r.timestamp > 1_700_000_000_000 for r in reports)


def test_produce_calls_back_on_the_poll_thread_and_flush_waits_for_all(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("produce")
    delivered: list[tuple[object, int | None]] = []
    with Producer(kafka_settings) as producer:
        for i in range(100):
            producer.produce(
                topic,
                f"v{i}".encode(),
                None,
                {"h": b"1"},
                lambda err, rec: delivered.append((err, rec.offset())),
            )
        assert producer.flush(30) == 0

    assert len(delivered) == 100
    assert all(err is None for err, _ in delivered)


def test_produce_many_stores_every_record_in_order_and_reports_each_one(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("produce-many", partitions=3)
    delivered: list[tuple[object, int | None, bytes | None]] = []
    # A local queue of 50 records with 200 to write: produce_many must wait for room, not fail or drop.
    with Producer(kafka_settings, max_block=30.0, queue_buffering_max_messages=50) as producer:
        producer.produce_many(
            topic,
            [f"v{i}".encode() for i in range(200)],
            "one-customer",
            lambda err, rec: delivered.append((err, rec.partition(), rec.value())),
        )
        assert producer.flush(30) == 0

    assert all(err is None for err, _, _ in delivered)
    assert len({partition for _, partition, _ in delivered}) == 1  # one key, one partition
    assert [value for _, _, value in delivered] == [f"v{i}".encode() for i in range(200)]


def test_records_to_an_undeclared_topic_fail_with_topic_not_found(kafka_settings: KafkaSettings) -> None:
    with Producer(kafka_settings) as producer:
        future = producer.send(f"undeclared-{uuid.uuid4().hex}", b"x")
        with pytest.raises(TopicNotFoundError):
            future.result(30)


def test_records_to_an_unreachable_broker_fail_as_unavailable() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed_port()}")
    with Producer(settings, message_timeout_ms=1000) as producer:
        future = producer.send("usage-events", b"x")
        with pytest.raises(KafkaUnavailableError):
            future.result(15)


def test_reachability_check_passes_on_the_stack_and_fails_fast_on_a_closed_port(
    kafka_settings: KafkaSettings,
) -> None:
    check_reachable(kafka_settings, timeout=10)

    started = time.monotonic()
    with pytest.raises(KafkaUnavailableError):
        check_reachable(KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed_port()}"), timeout=1)
    assert time.monotonic() - started < 5


def test_waiting_for_kafka_stops_when_the_stop_event_is_set() -> None:
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()

    reachable = wait_until_reachable(
        KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed_port()}"), stop, deadline=60, interval=0.2
    )

    assert reachable is False
    assert time.monotonic() - started < 4


def test_subscribing_to_an_undeclared_topic_raises_topic_not_found(
    kafka_settings: KafkaSettings, group_id: str
) -> None:
    with Consumer(kafka_settings, group_id) as consumer:
        consumer.subscribe([f"undeclared-{uuid.uuid4().hex}"])
        with pytest.raises(TopicNotFoundError):
            consume_for(consumer, 15)


def test_a_new_member_resumes_from_committed_offsets_after_a_clean_close(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str], group_id: str
) -> None:
    topic = make_topic("resume")
    with Producer(kafka_settings) as producer:
        for i in range(6):
            producer.send(topic, f"r{i}".encode()).result(30)

    with Consumer(kafka_settings, group_id) as first:
        first.subscribe([topic])
        first_batch = consume_n(first, 3, timeout=30)[:3]
        # Commit exactly what was processed, not what librdkafka prefetched.
        first.commit([TopicPartition(topic, 0, first_batch[-1].offset() + 1)])  # type: ignore[operator]

    started = time.monotonic()
    with Consumer(kafka_settings, group_id) as second:
        second.subscribe([topic])
        rest = consume_n(second, 3, timeout=30)
    rejoin_seconds = time.monotonic() - started

    assert [r.value() for r in first_batch] == [b"r0", b"r1", b"r2"]
    assert [r.value() for r in rest] == [b"r3", b"r4", b"r5"]
    # The first member left the group on close, so the second did not wait out a session timeout (45 s).
    assert rejoin_seconds < 20


def test_a_compacted_topic_is_read_whole_by_an_assign_all_reader(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("state", partitions=3, cleanup_policy="compact")
    with Producer(kafka_settings) as producer:
        for i in range(9):
            producer.send(topic, f"v{i}".encode(), f"key-{i}").result(30)

    with Consumer(kafka_settings) as reader:  # no group: every instance reads everything
        partitions = reader.assign_all([topic])
        ends = reader.end_offsets(partitions)
        seen: dict[bytes | None, bytes | None] = {}
        deadline = time.monotonic() + 30
        while not reader.caught_up(ends):
            assert time.monotonic() < deadline, "reader never caught up"
            for record in reader.consume(timeout=0.2):
                seen[record.key()] = record.value()

    assert len(partitions) == 3
    assert sum(ends.values()) == 9
    assert seen == {f"key-{i}".encode(): f"v{i}".encode() for i in range(9)}


def test_a_dead_letter_keeps_the_original_bytes_and_reason(
    provisioned: Provisioned,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
    group_id: str,
) -> None:
    registry = SchemaRegistry(registry_settings)
    dlq_topic = provisioned.topic(USAGE_EVENTS_DLQ)
    encoder = registry.encoder(f"{dlq_topic}-value", SCHEMAS_DIR / "dead_letter.avsc", auto_register=False)
    source = provisioned.topic("usage-events")
    with Producer(kafka_settings) as producer:
        original = producer.send(source, b"\x00\x00\x00\xff\xffnot avro", "cus_9").result(30)

        with Consumer(kafka_settings, group_id) as consumer:
            consumer.subscribe([source])
            (bad,) = consume_n(consumer, 1)
            publisher = DeadLetterPublisher(producer, encoder, dlq_topic, "kernel-test")
            future = publisher.publish(bad, "undecodable", "unknown schema id 65535", customer_id="cus_9")
            assert future is not None
            future.result(30)
            consumer.commit()

        with Consumer(kafka_settings, f"{group_id}-dlq") as dlq_reader:
            dlq_reader.subscribe([dlq_topic])
            (letter_record,) = consume_n(dlq_reader, 1)

    letter = registry.decoder().decode(letter_record.value())  # type: ignore[arg-type]
    assert letter_record.key() == b"cus_9"
    assert b"not avro" not in letter_record.value()  # encrypted at write time
    assert DlqCipher.from_env().reveal(letter)["original_value"] == b"\x00\x00\x00\xff\xffnot avro"
    assert (letter["original_topic"], letter["original_partition"], letter["original_offset"]) == (
        source,
        original.partition,
        original.offset,
    )
    assert (letter["error_code"], letter["service"], letter["customer_id"]) == (
        "undecodable",
        "kernel-test",
        "cus_9",
    )
    assert dict(letter_record.headers() or [])["plg-error-code"] == b"undecodable"


def test_a_dead_letter_inside_a_transaction_is_visible_only_after_commit(
    provisioned: Provisioned,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
    group_id: str,
) -> None:
    registry = SchemaRegistry(registry_settings)
    dlq_topic = provisioned.topic(USAGE_EVENTS_DLQ)
    encoder = registry.encoder(f"{dlq_topic}-value", SCHEMAS_DIR / "dead_letter.avsc", auto_register=False)
    source = provisioned.topic("usage-events")
    with Producer(kafka_settings) as producer:
        producer.send(source, b"garbage", "cus_1").result(30)

    with (
        Consumer(kafka_settings, group_id) as consumer,
        TransactionalProducer(kafka_settings, f"txn-{uuid.uuid4().hex}") as txn,
        Consumer(kafka_settings, f"{group_id}-dlq") as dlq_reader,
    ):
        txn.init_transactions()
        consumer.subscribe([source])
        dlq_reader.subscribe([dlq_topic])
        (bad,) = consume_n(consumer, 1)
        txn.begin()
        assert (
            DeadLetterPublisher(txn, encoder, dlq_topic, "kernel-test").publish(bad, "undecodable", "x")
            is None
        )
        txn.send_offsets(consumer)
        txn.flush()
        assert consume_for(dlq_reader, 2.0) == []  # written, but not committed yet
        txn.commit()
        wait_for(lambda: len(consume_for(dlq_reader, 0.5)) == 1, timeout=20)
