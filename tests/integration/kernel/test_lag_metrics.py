"""Consumer lag metrics on a real broker, scraped from an OpsServer's /metrics like Prometheus would."""

from __future__ import annotations

import threading
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


def only_observations_refresh(ops: OpsServer, group: str, tracker: ConsumerLagTracker) -> None:
    """From now on the tracker refreshes only when the polling thread hands it moved positions: the next
    periodic round is an hour away. The round already waiting on the old interval runs first (seen by the
    group's last-update timestamp moving), so nothing the test checks next can come from a periodic one."""
    name = "plg_consumer_lag_last_update_timestamp_seconds"
    before = group_metric(ops, name, group)
    tracker.interval = 3600.0
    wait_for(lambda: group_metric(ops, name, group) != before, timeout=60)


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
            tracker.update()  # the poll thread (this one) hands over the positions
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
        with ConsumerLagTracker(consumer, interval=0.3).start() as tracker:
            tracker.update()
            wait_for(lambda: lag_of(ops, group_id, topic)[0] == 12.0)  # 10 records + 2 commit markers
            consume_n(consumer, 10)

            # librdkafka steps over the last marker on the next poll, as a service's loop keeps doing.
            def polling_and_caught_up() -> bool:
                assert consumer.consume(max_records=10, timeout=0.1) == []
                tracker.update()
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


# ------------------------------------------------------------ a loop shaped like the metering aggregator's


class TransactionalLoop:
    """What the metering aggregator does, on a thread of its own: ``consume(50_000, 0.1)`` back to back;
    each batch goes to ``output`` in one transaction with the input positions (``send_offsets``), which are
    then handed to the tracker; an empty poll hands over the current positions with ``update()``.

    ``hold()`` keeps the loop away from the consumer (a slow batch, a restore) until ``release()``;
    ``max_records`` may be lowered to make batches end where a test needs them to."""

    def __init__(
        self,
        consumer: Consumer,
        producer: TransactionalProducer,
        output: str,
        tracker: ConsumerLagTracker,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.output = output
        self.tracker = tracker
        self.max_records = 50_000
        self.consumed = 0
        self.error: BaseException | None = None
        self._running = threading.Event()
        self._running.set()
        self._idle = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="txn-loop", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._running.is_set():
                    self._idle.set()
                    self._running.wait(0.1)
                    continue
                self._idle.clear()
                records = self.consumer.consume(self.max_records, 0.1)
                if not records:
                    self.tracker.update()
                    continue
                self.producer.begin()
                for record in records:
                    self.producer.produce(self.output, record.value(), record.key())
                positions = self.consumer.position()
                self.producer.send_offsets(self.consumer, positions)
                self.producer.commit()
                self.tracker.observe(positions)
                self.consumed += len(records)
        except BaseException as exc:  # surfaced by the test instead of dying silently on this thread
            self.error = exc

    def hold(self) -> None:
        self._running.clear()
        assert self._idle.wait(10), "the loop did not pause"

    def release(self) -> None:
        self._running.set()

    def wait_consumed(self, n: int, timeout: float = 30.0) -> float:
        """Wait until ``n`` records went through committed transactions; returns when that was seen."""
        wait_for(lambda: self.error is not None or self.consumed >= n, timeout=timeout, interval=0.02)
        assert self.error is None, self.error
        assert self.consumed == n
        return time.monotonic()

    def __enter__(self) -> TransactionalLoop:
        self.producer.init_transactions()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._running.set()
        self._thread.join(10)
        assert self.error is None, self.error


@pytest.fixture
def aggregator_like(
    kafka_settings: KafkaSettings, make_topic: Callable[..., str], group_id: str
) -> Iterator[tuple[str, TransactionalLoop]]:
    """A 3-partition input consumed by a :class:`TransactionalLoop` with a default tracker (5 s interval,
    as in the aggregator), started before the loop as the aggregator's composition root does."""
    source = make_topic("lag-src", partitions=3)
    output = make_topic("lag-out", partitions=3)
    with (
        Consumer(kafka_settings, group_id) as consumer,
        TransactionalProducer(kafka_settings, f"txn-{uuid.uuid4().hex}") as producer,
    ):
        consumer.subscribe([source])
        with (
            ConsumerLagTracker(consumer).start() as tracker,
            TransactionalLoop(consumer, producer, output, tracker) as loop,
        ):
            yield source, loop


def test_lag_reads_zero_once_a_busy_transactional_loop_catches_up_without_waiting_for_a_periodic_round(
    kafka_settings: KafkaSettings,
    group_id: str,
    ops: OpsServer,
    aggregator_like: tuple[str, TransactionalLoop],
) -> None:
    # The `make run` report: 4 batches of 400 events for one customer (partition 2), the aggregator had
    # counted them all within a second, but /metrics said lag 400 (and growing seconds) for 15-25 s.
    source, loop = aggregator_like
    wait_for(lambda: lag_of(ops, group_id, source, 2) == (0.0, 0.0))
    with Producer(kafka_settings) as producer:
        for batch in range(3):
            for i in range(400):
                producer.produce(source, f"e{batch}-{i}".encode(), "customer-1", partition=2)
            assert producer.flush(30) == 0
        loop.wait_consumed(1200)

        # The 4th batch (a duplicate of the 3rd) lands while the loop is busy elsewhere: a real lag.
        loop.hold()
        for i in range(400):
            producer.produce(source, f"e2-{i}".encode(), "customer-1", partition=2)
        assert producer.flush(30) == 0
    wait_for(lambda: lag_of(ops, group_id, source, 2)[0] == 400.0, timeout=60)
    assert (lag_of(ops, group_id, source, 2)[1] or 0.0) > 0.0

    # Then the periodic round (5 s; the report's lag lasted 15-25 s) is taken out of the picture: lag must
    # clear through the catching-up commit's own observation (within min_interval, 0.5 s, on a quiet
    # machine; how fast a loaded CI machine makes it is not asserted).
    only_observations_refresh(ops, group_id, loop.tracker)
    assert lag_of(ops, group_id, source, 2)[0] == 400.0
    loop.release()
    loop.wait_consumed(1600, timeout=60)
    wait_for(lambda: lag_of(ops, group_id, source, 2) == (0.0, 0.0), timeout=60, interval=0.05)

    assert group_metric(ops, "plg_consumer_group_lag_messages_sum", group_id) == 0.0
    assert group_metric(ops, "plg_consumer_group_max_lag_seconds", group_id) == 0.0


def test_a_partition_ending_in_transaction_markers_reads_zero_once_the_loop_idles(
    kafka_settings: KafkaSettings,
    group_id: str,
    ops: OpsServer,
    aggregator_like: tuple[str, TransactionalLoop],
) -> None:
    # Transactional input (the aggregator re-routes records into its own input that way). Each transaction
    # ends with a marker the consumer never returns, and an aborted one's records are skipped too. When a
    # batch ends on a transaction's last record (here: batches of 5 = one transaction each), the positions
    # committed with it stop short of what follows; only the next poll, an empty one, steps over the
    # markers and the aborted records. Lag must read 0 then, not stay at what the last commit saw.
    source, loop = aggregator_like
    wait_for(lambda: lag_of(ops, group_id, source, 0) == (0.0, 0.0))
    loop.hold()
    loop.max_records = 5
    with TransactionalProducer(kafka_settings, f"txn-{uuid.uuid4().hex}") as writer:
        writer.init_transactions()
        for outcome in ("commit", "abort", "commit", "abort"):
            writer.begin()
            for i in range(5):
                writer.produce(source, f"{outcome}-{i}".encode(), "k", partition=0)
            writer.flush(30)
            if outcome == "commit":
                writer.commit()
            else:
                writer.abort()
    wait_for(lambda: lag_of(ops, group_id, source, 0)[0] == 24.0, timeout=60)  # 20 records + 4 markers

    loop.release()
    loop.wait_consumed(10, timeout=60)  # the last commit's positions: 17, with 7 offsets to go
    # Only an empty poll's observation steps past them (the periodic rounds keep computing from what was
    # observed): without it the lag would stay at 7, however long one waits.
    wait_for(lambda: lag_of(ops, group_id, source, 0) == (0.0, 0.0), timeout=60, interval=0.05)

    # Still 0 after more than one refresh interval of the loop idling.
    time.sleep(6.0)
    assert lag_of(ops, group_id, source, 0) == (0.0, 0.0)
