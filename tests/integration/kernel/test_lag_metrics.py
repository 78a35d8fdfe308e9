"""Consumer lag metrics on a real broker, scraped from an OpsServer's /metrics like Prometheus would."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.kernel.kafka import Consumer, Producer, TopicPartition, TransactionalProducer
from services.kernel.lag import ConsumerLagTracker
from services.kernel.ops import OpsServer
from services.kernel.settings import KafkaSettings
from tests.integration.kernel.helpers import consume_n, wait_for


@pytest.fixture
def ops() -> Iterator[OpsServer]:
    with OpsServer("127.0.0.1", 0) as server:
        yield server


def scrape(ops: OpsServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{ops.url}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def lag_of(ops: OpsServer, group: str, topic: str, partition: int = 0) -> tuple[float | None, float | None]:
    samples = scrape(ops)
    labels = (("group", group), ("partition", str(partition)), ("topic", topic))
    return samples.get(("plg_consumer_lag_messages", labels)), samples.get(
        ("plg_consumer_lag_seconds", labels)
    )


def group_metric(ops: OpsServer, name: str, group: str) -> float | None:
    return scrape(ops).get((name, (("group", group),)))


def joined(consumer: Consumer, topic: str) -> Consumer:
    consumer.subscribe([topic])
    wait_for(lambda: bool(consumer.consume(max_records=1, timeout=0.2) == [] and consumer.assignment()))
    return consumer


def test_consumer_lag_appears_on_metrics_and_moves_when_the_consumer_falls_behind(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str], group_id: str, ops: OpsServer
) -> None:
    topic = make_topic("lag")
    with Consumer(kafka_settings, group_id) as consumer, Producer(kafka_settings) as producer:
        joined(consumer, topic)
        with ConsumerLagTracker(consumer, interval=0.3).start() as tracker:
            wait_for(lambda: lag_of(ops, group_id, topic) == (0.0, 0.0))

            # The consumer stops polling (stuck handler); 20 records arrive.
            for i in range(20):
                producer.send(topic, f"r{i}".encode(), "k").result(30)
            wait_for(lambda: lag_of(ops, group_id, topic)[0] == 20.0)
            first_seconds = lag_of(ops, group_id, topic)[1]
            time.sleep(1.0)
            messages, later_seconds = lag_of(ops, group_id, topic)

            assert messages == 20.0
            assert first_seconds is not None
            assert later_seconds is not None
            assert first_seconds > 0
            assert later_seconds > first_seconds  # still behind: the lag ages
            assert group_metric(ops, "plg_consumer_group_lag_messages_sum", group_id) == 20.0
            assert (group_metric(ops, "plg_consumer_group_max_lag_seconds", group_id) or 0) > 0

            # It catches up.
            consume_n(consumer, 20)
            tracker.update()
            wait_for(lambda: lag_of(ops, group_id, topic) == (0.0, 0.0))
            assert group_metric(ops, "plg_consumer_group_lag_messages_sum", group_id) == 0.0

        # Closing the tracker removes the group's series.
        assert lag_of(ops, group_id, topic) == (None, None)


def test_lag_returns_to_zero_after_reading_committed_transactions(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str], group_id: str, ops: OpsServer
) -> None:
    # A committed transaction ends with a control record the consumer never sees: lag must still hit 0.
    topic = make_topic("lag-txn")
    with Consumer(kafka_settings, group_id) as consumer:
        joined(consumer, topic)
        with TransactionalProducer(kafka_settings, f"txn-{uuid.uuid4().hex}") as producer:
            producer.init_transactions()
            for batch in range(2):
                with producer.transaction():
                    for i in range(5):
                        producer.produce(topic, f"b{batch}-{i}".encode(), "k")
        with ConsumerLagTracker(consumer, interval=0.3).start():
            wait_for(lambda: lag_of(ops, group_id, topic)[0] == 12.0)  # 10 records + 2 commit markers
            consume_n(consumer, 10)

            # librdkafka steps over the last marker on the next poll, as a service's loop keeps doing.
            def polling_and_caught_up() -> bool:
                assert consumer.consume(max_records=10, timeout=0.1) == []
                return lag_of(ops, group_id, topic) == (0.0, 0.0)

            wait_for(polling_and_caught_up, timeout=15)


def test_lag_counts_from_the_committed_offset_before_the_first_record(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str], group_id: str
) -> None:
    topic = make_topic("lag-committed")
    with Producer(kafka_settings) as producer:
        for i in range(10):
            producer.send(topic, f"r{i}".encode()).result(30)
    with Consumer(kafka_settings, group_id) as first:
        first.subscribe([topic])
        consume_n(first, 4)
        first.commit()

    with Consumer(kafka_settings, group_id) as consumer:
        # Assigned (it will start from the committed offset) but nothing read yet: no position.
        consumer.assign([TopicPartition(topic, 0)])
        assert consumer.position()[0].offset < 0
        tracker = ConsumerLagTracker(consumer)
        try:
            (lag,) = tracker.refresh()
        finally:
            tracker.close()

    assert (lag.lag_messages, lag.position, lag.end_offset) == (6, 4, 10)
