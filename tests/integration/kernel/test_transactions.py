"""Kafka transactions through the kernel: committed records visible to read_committed, aborted ones never."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from services.kernel.errors import KafkaFatalError, KafkaUnavailableError
from services.kernel.kafka import Consumer, Producer, TopicPartition, TransactionalProducer
from services.kernel.provision import provision_topics
from services.kernel.settings import KafkaSettings
from services.kernel.topics import TopicSpec
from tests.conftest import PrivateKafka
from tests.integration.kernel.helpers import consume_for, consume_n


def values(records: list) -> list[bytes]:  # type: ignore[type-arg]
    return [r.value() for r in records]


def test_read_committed_consumers_see_committed_transactions_and_never_aborted_ones(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str], group_id: str
) -> None:
    topic = make_topic("txn", partitions=2)
    with TransactionalProducer(kafka_settings, f"txn-{uuid.uuid4().hex}") as producer:
        producer.init_transactions()
        with producer.transaction():
            for i in range(3):
                producer.produce(topic, f"committed-1-{i}".encode(), f"k{i}")
        producer.begin()
        for i in range(3):
            producer.produce(topic, f"aborted-{i}".encode(), f"k{i}")
        producer.flush()  # the aborted records really reach the log...
        producer.abort()
        with producer.transaction():
            producer.produce(topic, b"committed-2", "k0")

    with Consumer(kafka_settings, group_id) as committed_reader:
        committed_reader.subscribe([topic])
        seen = values(consume_n(committed_reader, 4)) + values(consume_for(committed_reader, 2.0))
    # ...as a read_uncommitted reader shows.
    with Consumer(kafka_settings, f"{group_id}-dirty", isolation_level="read_uncommitted") as dirty_reader:
        dirty_reader.subscribe([topic])
        everything = values(consume_n(dirty_reader, 7))

    assert sorted(seen) == [b"committed-1-0", b"committed-1-1", b"committed-1-2", b"committed-2"]
    assert sorted(v for v in everything if v.startswith(b"aborted")) == [
        b"aborted-0",
        b"aborted-1",
        b"aborted-2",
    ]


def test_an_exception_inside_a_transaction_aborts_it(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str], group_id: str
) -> None:
    topic = make_topic("txn-exc")
    with TransactionalProducer(kafka_settings, f"txn-{uuid.uuid4().hex}") as producer:
        producer.init_transactions()

        def failing_handler() -> None:
            with producer.transaction():
                producer.produce(topic, b"half-done")
                raise RuntimeError("handler failed")

        with pytest.raises(RuntimeError, match="handler failed"):
            failing_handler()
        assert not producer.in_transaction
        with producer.transaction():
            producer.produce(topic, b"redone")

    with Consumer(kafka_settings, group_id) as consumer:
        consumer.subscribe([topic])
        seen = values(consume_n(consumer, 1)) + values(consume_for(consumer, 1.5))

    assert seen == [b"redone"]


def test_consumed_offsets_commit_with_the_transaction_and_rewind_when_it_aborts(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str], group_id: str
) -> None:
    source, sink = make_topic("source"), make_topic("sink")
    with Producer(kafka_settings) as plain:
        for i in range(4):
            plain.send(source, f"in-{i}".encode(), "k").result(30)

    consumer = Consumer(kafka_settings, group_id)
    producer = TransactionalProducer(kafka_settings, f"txn-{uuid.uuid4().hex}")
    try:
        consumer.subscribe([source])
        producer.init_transactions()

        # First attempt: transform two records, then fail before commit -> abort and rewind.
        batch = consume_n(consumer, 2)
        producer.begin()
        for record in batch:
            producer.produce(sink, record.value().replace(b"in", b"out"), record.key())  # type: ignore[union-attr]
        producer.send_offsets(consumer)
        producer.abort()
        consumer.seek_to_committed()

        # Second attempt: the same records come back; this time the transaction commits.
        redo = consume_n(consumer, 4)
        assert values(redo)[:2] == values(batch)
        with producer.transaction():
            for record in redo:
                producer.produce(sink, record.value().replace(b"in", b"out"), record.key())  # type: ignore[union-attr]
            producer.send_offsets(consumer)

        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed()}
        assert committed == {(source, 0): 4}
    finally:
        producer.close()
        consumer.close()

    with Consumer(kafka_settings, f"{group_id}-sink") as reader:
        reader.subscribe([sink])
        outputs = values(consume_n(reader, 4)) + values(consume_for(reader, 1.5))
    assert outputs == [b"out-0", b"out-1", b"out-2", b"out-3"]


def test_a_second_instance_with_the_same_transactional_id_fences_the_first(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("fence")
    transactional_id = f"txn-{uuid.uuid4().hex}"
    old = TransactionalProducer(kafka_settings, transactional_id)
    new = TransactionalProducer(kafka_settings, transactional_id)
    try:
        old.init_transactions()
        new.init_transactions()  # bumps the epoch: the old instance is a zombie now

        def zombie_write() -> None:
            old.begin()
            old.produce(topic, b"zombie write")
            old.commit(timeout=10)

        with pytest.raises(KafkaFatalError):
            zombie_write()
    finally:
        old.close(timeout=5)
        new.close(timeout=5)


def _in_doubt_commit(broker: PrivateKafka, topic: str, value: bytes) -> TransactionalProducer:
    """A producer whose commit of ``value`` timed out because the broker went away; the broker is back."""
    producer = TransactionalProducer(broker.settings, f"txn-{uuid.uuid4().hex}")
    producer.init_transactions()
    producer.begin()
    producer.produce(topic, value, "k")
    assert producer.flush(10) == 0
    broker.stop()
    with pytest.raises(KafkaUnavailableError):
        producer.commit(timeout=2)
    broker.start()
    return producer


def _private_topic(broker: PrivateKafka) -> str:
    topic = f"txn-doubt-{uuid.uuid4().hex[:8]}"
    provision_topics(broker.settings, [TopicSpec(topic, 1, None)])
    return topic


def test_after_a_commit_timed_out_the_next_transaction_finishes_it_instead_of_failing_forever(
    private_kafka: Callable[[], PrivateKafka],
) -> None:
    # librdkafka refuses begin/abort with _CONFLICT until commit_transaction is called again, so a loop
    # that only ever retries begin() (as its KafkaUnavailableError invites) would stall for good.
    broker = private_kafka()
    topic = _private_topic(broker)
    producer = _in_doubt_commit(broker, topic, b"in-doubt")
    try:
        with producer.transaction():
            producer.produce(topic, b"next", "k")
    finally:
        producer.close(timeout=10)

    with Consumer(broker.settings, f"reader-{uuid.uuid4().hex}") as reader:
        reader.subscribe([topic])
        seen = values(consume_n(reader, 2)) + values(consume_for(reader, 1.0))
    assert seen == [b"in-doubt", b"next"]  # the timed-out commit completed once the broker was back


def test_abort_after_a_commit_timed_out_ends_the_transaction_and_the_producer_goes_on(
    private_kafka: Callable[[], PrivateKafka],
) -> None:
    broker = private_kafka()
    topic = _private_topic(broker)
    producer = _in_doubt_commit(broker, topic, b"in-doubt")
    try:
        producer.abort(timeout=30)  # the commit had begun: librdkafka can only finish it
        assert not producer.in_transaction
        with producer.transaction():
            producer.produce(topic, b"after", "k")
    finally:
        producer.close(timeout=10)

    with Consumer(broker.settings, f"reader-{uuid.uuid4().hex}") as reader:
        reader.subscribe([topic])
        seen = values(consume_n(reader, 1)) + values(consume_for(reader, 1.0))
    assert seen[-1] == b"after"
    assert seen.count(b"in-doubt") <= 1


def test_abort_after_send_offsets_timed_out_resumes_it_and_the_producer_goes_on(
    private_kafka: Callable[[], PrivateKafka],
) -> None:
    # Unlike commit_transaction, send_offsets_to_transaction is not resumable in librdkafka: once it has
    # returned (here: timed out before the coordinator could answer), abort() must end the transaction and
    # the producer go on. (Its other failure, blocking past its timeout, is librdkafka #5456: see
    # TransactionalProducer._call_guarded and tests/unit/kernel/test_transactional_guard.py.)
    broker = private_kafka()
    topic = _private_topic(broker)
    group = Consumer(broker.settings, f"group-{uuid.uuid4().hex}")  # its metadata goes with the offsets
    producer = TransactionalProducer(broker.settings, f"txn-{uuid.uuid4().hex}")
    try:
        producer.init_transactions()
        producer.begin()
        producer.produce(topic, b"aborted", "k")
        assert producer.flush(10) == 0
        with pytest.raises(KafkaUnavailableError):
            producer.send_offsets(group, [TopicPartition(topic, 0, 1)], timeout=0.001)
        producer.abort(timeout=10)
        assert not producer.in_transaction
        with producer.transaction():
            producer.produce(topic, b"after", "k")
    finally:
        producer.close(timeout=10)
        group.close()

    with Consumer(broker.settings, f"reader-{uuid.uuid4().hex}") as reader:
        reader.subscribe([topic])
        seen = values(consume_n(reader, 1)) + values(consume_for(reader, 1.0))
    assert seen == [b"after"]
