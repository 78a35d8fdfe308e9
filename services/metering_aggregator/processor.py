"""The exactly-once loop: consume a batch of usage events, update state, write everything in ONE transaction.

Per batch: ``consume`` → decode → look up new customers → ``begin`` → for each event apply it to its
partition's state (or dead-letter it, or move it to its home partition) → produce the changed aggregates,
the changelog deltas, the threshold events and the dead letters → ``send_offsets`` → ``commit``.

State lives in memory per assigned partition and is rebuilt from the changelog on assignment (read
``read_committed`` up to the last stable offset, *after* the group's committed offsets are known to be
stable, and until the changelog's checkpoint has reached them), so after any crash, rebalance or abort the
state matches the committed offsets exactly. An aborted transaction rebuilds the state of every assigned
partition and rewinds the consumer.

Zombies are fenced twice: the ``transactional.id`` is the instance's stable id (a restarted instance
aborts its predecessor's open transaction at ``init_transactions``), and the consumer group metadata
travels with the offsets (KIP-447), so an instance that lost its partitions cannot commit for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from services.kernel import metrics
from services.kernel.dlq import UNDECODABLE, DeadLetterPublisher
from services.kernel.errors import (
    KafkaFatalError,
    KafkaUnavailableError,
    SerializationError,
    TransactionAbortableError,
)
from services.kernel.kafka import OFFSET_BEGINNING, Consumer, Record, TopicPartition, TransactionalProducer
from services.kernel.lag import ConsumerLagTracker
from services.kernel.serde import ValueDecoder, ValueEncoder
from services.kernel.settings import KafkaSettings
from services.metering_aggregator.changelog import changelog_behind, encode_value, restore
from services.metering_aggregator.customers import CustomerDirectory
from services.metering_aggregator.handlers import aggregate_record, threshold_record
from services.metering_aggregator.model import PartitionState, Rules
from services.plans.model import PlansConfig

log = logging.getLogger(__name__)

EVENTS = metrics.counter(
    "plg_metering_events", "Usage events read by the aggregator, by outcome.", ("outcome",)
)
TRANSACTIONS = metrics.counter("plg_metering_transactions", "Kafka transactions, by result.", ("result",))
BATCH_SECONDS = metrics.histogram(
    "plg_metering_batch_seconds", "Time to process and commit one batch (one transaction)."
)
RESTORE_SECONDS = metrics.histogram(
    "plg_metering_restore_seconds", "Time to rebuild partition state from the changelog."
)
THRESHOLDS = metrics.counter(
    "plg_metering_threshold_events", "Threshold events emitted, by percent.", ("percent",)
)
DEDUP_IDS = metrics.gauge("plg_metering_dedup_ids", "Event ids held for deduplication.")
WINDOWS = metrics.gauge("plg_metering_windows", "Aggregation windows held in memory.")
ASSIGNED = metrics.gauge("plg_metering_assigned_partitions", "usage-events partitions this instance owns.")

SERVICE = "metering-aggregator"
REROUTED = "rerouted"


@dataclass(frozen=True)
class Topics:
    usage_events: str
    usage_aggregates: str
    entitlement_events: str
    dead_letters: str
    changelog: str


@dataclass(frozen=True)
class Encoders:
    aggregate: ValueEncoder
    entitlement: ValueEncoder


class RestoreError(RuntimeError):
    """The changelog could not be read to its end in time."""


def read_changelog(
    kafka: KafkaSettings, topic: str, partitions: Iterable[int], timeout: float = 120.0
) -> dict[int, dict[bytes, bytes | None]]:
    """The latest record per key of each changelog partition (read_committed, up to the stable end)."""
    parts = sorted(partitions)
    latest: dict[int, dict[bytes, bytes | None]] = {p: {} for p in parts}
    if not parts:
        return latest
    reader = Consumer(kafka, None, client_id=f"{SERVICE}-restore", fetch_wait_max_ms=10)
    try:
        tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
        reader.assign(tps)
        ends = reader.end_offsets([TopicPartition(topic, p) for p in parts])
        deadline = time.monotonic() + timeout
        while not reader.caught_up(ends):
            if time.monotonic() > deadline:
                raise RestoreError(f"changelog {topic} {parts} not read to its end within {timeout:.0f}s")
            for record in reader.consume(10_000, 0.2):
                key = record.key()
                if key is None:
                    continue
                by_key = latest[record.partition()]  # type: ignore[index]
                value = record.value()
                if value is None:
                    by_key.pop(key, None)
                else:
                    by_key[key] = value
    finally:
        reader.close()
    return latest


class MeteringProcessor:
    """Owns the partition states and runs batches through Kafka transactions."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        consumer: Consumer,
        producer: TransactionalProducer,
        decoder: ValueDecoder,
        encoders: Encoders,
        dead_letters: DeadLetterPublisher,
        directory: CustomerDirectory,
        config: PlansConfig,
        rules: Rules,
        topics: Topics,
        home_partition: Callable[[str], int],
        upgrade_url: str,
        max_batch_events: int = 20_000,
        batch_wait: float = 0.1,
        eviction_interval: float = 10.0,
        kafka_timeout: float = 30.0,
        producer_factory: Callable[[], TransactionalProducer] | None = None,
        checkpoint_wait: float = 30.0,
        lag: ConsumerLagTracker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kafka = kafka
        self.consumer = consumer
        self.producer = producer
        self.decoder = decoder
        self.encoders = encoders
        self.dead_letters = dead_letters
        self.directory = directory
        self.config = config
        self.rules = rules
        self.topics = topics
        self.home_partition = home_partition
        self.upgrade_url = upgrade_url
        self.max_batch_events = max_batch_events
        self.batch_wait = batch_wait
        self.eviction_interval = eviction_interval
        # How long one transactional call (begin, send_offsets, commit, abort) may retry before the batch is
        # given up (and, for a commit, left in doubt until the next attempt).
        self.kafka_timeout = kafka_timeout
        self.producer_factory = producer_factory
        # How long a restore waits for the changelog to reach the committed offsets (see _restore).
        self.checkpoint_wait = checkpoint_wait
        # Fed from this (the polling) thread: its own thread must not call into the consumer (kernel.lag).
        self.lag = lag
        self._broken_producer: KafkaFatalError | None = None
        self._replacements: list[float] = []
        self.clock = clock
        self.states: dict[int, PartitionState] = {}
        self._last_eviction = 0.0
        self._state_changed = False
        self._needs_recovery = False
        self.running = False
        self.restoring = False
        self.batches = 0

    # -- rebalances (called from inside consumer.consume(), between transactions) ---------------------

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        mine = [tp for tp in partitions if tp.topic == self.topics.usage_events]
        if not mine:
            return
        self.restoring = True
        try:
            self.states.update(self._restore([tp.partition for tp in mine]))
        except Exception:
            # Raising here would leave the assignment undone; the next poll rebuilds what is missing
            # instead (_recover), and no offset of a partition without state is committed meanwhile.
            log.exception("restore on assignment failed; retrying before the next batch")
            self._needs_recovery = True
        finally:
            self.restoring = False
        ASSIGNED.set(len(self.states))

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self.topics.usage_events:
                self.states.pop(tp.partition, None)
        ASSIGNED.set(len(self.states))

    on_lost = on_revoke

    def _restore(self, partitions: list[int]) -> dict[int, PartitionState]:
        """Rebuild the state of ``partitions`` as of the group's committed offsets.

        Every path that (re)builds state goes through here — assignment, and recovery after a failed batch
        or a failed restore — so every one first asks for the committed offsets: under ``read_committed``
        librdkafka asks for *stable* offsets (KIP-447), and the broker answers only once no transaction
        carrying offsets for these partitions is pending (e.g. the previous owner's, still in flight).
        The changelog is then read to its last stable offset, and its checkpoint must have reached the
        committed offset; if it has not, the commit markers are still landing and it is read again.
        """
        started = time.monotonic()
        committed = {
            tp.partition: tp.offset
            for tp in self.consumer.committed(
                [TopicPartition(self.topics.usage_events, p) for p in partitions], timeout=60
            )
        }
        states: dict[int, PartitionState] = {}
        records = 0
        pending = list(partitions)
        while True:
            latest = read_changelog(self.kafka, self.topics.changelog, pending)
            behind: dict[int, PartitionState] = {}
            for p in pending:
                state = PartitionState(p, self.config, self.rules)
                restore(state, latest[p].items())
                records += len(latest[p])
                if changelog_behind(state.checkpoint_offset, committed.get(p, -1)):
                    behind[p] = state
                else:
                    states[p] = state
            if not behind:
                break
            gaps = {p: (s.checkpoint_offset, committed[p]) for p, s in behind.items()}
            if time.monotonic() - started > self.checkpoint_wait:
                # Markers land in milliseconds: this gap is offsets moved outside a transaction (a manual
                # reset forward). The state is still the last committed one; say so loudly and go on rather
                # than stall the partitions for good.
                log.error(
                    "changelog checkpoint stays behind the committed offset (reset by hand?); going on",
                    extra={"partitions": gaps},
                )
                states.update(behind)
                break
            log.warning(
                "changelog behind the committed offsets; reading it again", extra={"partitions": gaps}
            )
            pending = list(behind)
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        RESTORE_SECONDS.observe(elapsed)
        log.info(
            "partition state restored",
            extra={
                "partitions": partitions,
                "seconds": round(elapsed, 3),
                "records": records,
                "dedup_ids": sum(len(s.dedup) for s in states.values()),
                "windows": sum(s.window_count() for s in states.values()),
            },
        )
        return states

    # -- the loop -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.producer.init_transactions()
        self.consumer.subscribe(
            [self.topics.usage_events],
            on_assign=self.on_assign,
            on_revoke=self.on_revoke,
            on_lost=self.on_lost,
        )
        self.running = True

    def run(self, stop: threading.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                self.poll_once()
                backoff = 0.2
            except KafkaFatalError:
                raise
            except (KafkaUnavailableError, TransactionAbortableError, RetryBatch, RestoreError) as exc:
                log.warning("batch not committed; state rebuilt and input rewound", extra={"error": str(exc)})
                if stop.wait(backoff):
                    break
                backoff = min(backoff * 2, 5.0)
        self.running = False

    def poll_once(self) -> int:
        """Consume, process and commit one batch; returns the number of records consumed."""
        if self._needs_recovery:  # a failed batch whose recovery could not finish yet
            self._recover()
        records = self.consumer.consume(self.max_batch_events, self.batch_wait)
        now = self.clock()
        evict = now - self._last_eviction >= self.eviction_interval
        if not records and not evict:
            if self.lag is not None:
                self.lag.update()  # an empty poll may have stepped over a transaction marker
            return 0
        started = time.monotonic()
        try:
            self._transaction(records, int(now * 1000), evict)
        except BaseException as exc:
            TRANSACTIONS.labels("aborted").inc()
            self._needs_recovery = True
            if isinstance(exc, KafkaFatalError) and self._replaceable(exc):
                self._broken_producer = exc
            self._recover()
            if self._broken_producer is None and isinstance(exc, KafkaFatalError) and self._replaceable(exc):
                raise RetryBatch(f"transactional producer replaced after: {exc}") from exc
            raise
        self._state_changed = False
        if evict:
            self._last_eviction = now
            DEDUP_IDS.set(sum(len(s.dedup) for s in self.states.values()))
            WINDOWS.set(sum(s.window_count() for s in self.states.values()))
        BATCH_SECONDS.observe(time.monotonic() - started)
        self.batches += 1
        return len(records)

    def _transaction(self, records: list[Record], now_ms: int, evict: bool) -> None:
        # Every partition whose offset this transaction moves must have its state, so that its checkpoint
        # moves with it — also when its records are only rerouted or undecodable.
        missing = {r.partition() for r in records} - self.states.keys()
        if missing:  # its restore failed: rebuild it and redo the batch
            raise RetryBatch(f"partitions {missing} have no restored state")
        decoded: list[tuple[Record, dict[str, Any]]] = []
        undecodable: list[tuple[Record, str]] = []
        decode = self.decoder.decode
        for record in records:
            value = record.value()
            try:
                if value is None:
                    raise SerializationError("the record has no value (a tombstone on usage-events)")
                decoded.append((record, decode(value)))
            except SerializationError as exc:
                undecodable.append((record, str(exc)))
        try:
            self.directory.ensure({e["customer_id"] for _, e in decoded})
        except Exception as exc:  # database down: nothing applied yet, redo the batch later
            raise RetryBatch(f"customer directory unavailable: {exc}") from exc

        producer = self.producer
        producer.begin(self.kafka_timeout)
        outcomes: dict[str, int] = {}
        counted = 0
        first_offsets: dict[int, int] = {}
        customers = self.directory.snapshot()
        home = self.home_partition
        states = self.states
        publish = self.dead_letters.publish
        for record, error in undecodable:
            publish(record, UNDECODABLE, error)
            outcomes[UNDECODABLE] = outcomes.get(UNDECODABLE, 0) + 1
        for record, event in decoded:
            partition: int = record.partition()  # type: ignore[assignment]
            customer_id = event["customer_id"]
            # When the event reached Kafka (the producer's timestamp), never ahead of our own clock: the
            # partition's clock, which lateness is judged on, whatever our lag (see model.py).
            arrival = record.timestamp()[1]
            if arrival <= 0 or arrival > now_ms:
                arrival = now_ms
            if customer_id and home(customer_id) != partition:
                # Keyed by another partitioner (or not keyed): count it where the customer's state lives,
                # keeping its arrival time.
                producer.produce(
                    self.topics.usage_events,
                    record.value(),
                    record.key(),
                    record.headers(),
                    partition=home(customer_id),
                    timestamp=arrival,
                )
                outcomes[REROUTED] = outcomes.get(REROUTED, 0) + 1
                continue
            state = states[partition]
            if partition not in first_offsets:
                first_offsets[partition] = record.offset()  # type: ignore[assignment]
            # The decoder resolved the record to our reader schema, so every field exists with its type;
            # apply() validates values before it changes anything.
            self._state_changed = True
            rejection = state.apply(event, arrival, customers.get(customer_id))
            if rejection is None:
                counted += 1
                continue
            outcomes[rejection.code] = outcomes.get(rejection.code, 0) + 1
            if rejection.dead_letter:
                publish(
                    record,
                    rejection.code,
                    rejection.message,
                    event_id=event["event_id"],
                    customer_id=customer_id,
                )
        self._write_state(first_offsets, now_ms, evict)
        positions = self.consumer.position()
        offsets = self._write_checkpoints(positions)
        producer.send_offsets(self.consumer, offsets, timeout=self.kafka_timeout)
        producer.commit(self.kafka_timeout)
        if self.lag is not None:
            self.lag.observe(positions)
        TRANSACTIONS.labels("committed").inc()
        if counted:
            EVENTS.labels("counted").inc(counted)
        for outcome, n in outcomes.items():
            EVENTS.labels(outcome).inc(n)

    def _write_state(self, first_offsets: dict[int, int], now_ms: int, evict: bool) -> None:
        produce = self.producer.produce
        topics = self.topics
        encode_aggregate = self.encoders.aggregate.encode
        for partition, seq in first_offsets.items():
            drained = self.states[partition].drain(seq, self.directory.get)
            for w in drained.aggregates:
                produce(topics.usage_aggregates, encode_aggregate(aggregate_record(w, now_ms)), w.key)
            for key, value in drained.changelog:
                # None is a tombstone (a superseded packed record), not the JSON null.
                encoded = None if value is None else encode_value(value)
                produce(topics.changelog, encoded, key, partition=partition)
            for crossing in drained.thresholds:
                record = threshold_record(crossing, now_ms, self.config, self.upgrade_url)
                produce(
                    topics.entitlement_events,
                    self.encoders.entitlement.encode(record),
                    crossing.customer.customer_id,
                )
                THRESHOLDS.labels(str(crossing.percent)).inc()
        if evict:
            for partition, state in self.states.items():
                for key in state.evict():
                    produce(topics.changelog, None, key, partition=partition)

    def _write_checkpoints(self, positions: list[TopicPartition]) -> list[TopicPartition]:
        """Each partition's changelog says which input offset its state is complete up to: the very offset
        committed with it in this transaction (a restore checks one against the other). Returns the offsets
        to commit: only those of partitions with state (a position can move over transaction markers
        without a record, and must not be committed for a partition whose restore failed)."""
        offsets = []
        for tp in positions:
            state = self.states.get(tp.partition)
            if state is None or tp.offset < 0 or tp.topic != self.topics.usage_events:
                continue
            offsets.append(tp)
            record = state.checkpoint(tp.offset)
            if record is not None:
                key, value = record
                self.producer.produce(self.topics.changelog, encode_value(value), key, partition=tp.partition)
        return offsets

    def _recover(self) -> None:
        """After a failed batch: end its transaction, then drop the uncommitted in-memory changes and rewind
        to the committed input.

        The order matters. A commit that timed out is *in doubt* — it may still commit — and the kernel's
        ``abort()`` finishes it either way; only once its outcome is known do the changelog and the
        committed offsets agree, so only then is the state rebuilt and the consumer rewound. If the outcome
        cannot be learnt yet (broker away), this raises and is tried again before the next batch.
        """
        if self._broken_producer is None and (self.producer.in_transaction or self.producer.commit_pending):
            try:
                self.producer.abort(self.kafka_timeout)
            except KafkaFatalError as exc:
                if not self._replaceable(exc):
                    raise
                self._broken_producer = exc
        if self._broken_producer is not None:
            self._replace_producer(self._broken_producer)
        assigned = sorted(
            tp.partition for tp in self.consumer.assignment() if tp.topic == self.topics.usage_events
        )
        missing = [p for p in assigned if p not in self.states]
        rebuild = assigned if self._state_changed else missing
        if rebuild:
            self.states.update(self._restore(rebuild))
        for state in self.states.values():
            state.forget_checkpoint()  # it may have gone with the aborted transaction
        self.consumer.seek_to_committed()
        self._state_changed = False
        self._needs_recovery = False

    # Fatal errors that mean another instance owns our transactional.id or group.instance.id, or we lack
    # the rights: fighting back would fence it in turn, so these end the process instead.
    _NOT_REPLACEABLE = frozenset(
        {
            "_FENCED",
            "PRODUCER_FENCED",
            "INVALID_PRODUCER_EPOCH",
            "FENCED_INSTANCE_ID",
            "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
            "CLUSTER_AUTHORIZATION_FAILED",
        }
    )

    def _replaceable(self, exc: KafkaFatalError) -> bool:
        return (
            self.producer_factory is not None
            and exc.code_name not in self._NOT_REPLACEABLE
            and "fenced" not in str(exc).lower()
        )

    def _replace_producer(self, cause: KafkaFatalError) -> None:
        """A fatal, non-fencing producer error (e.g. INVALID_TXN_STATE after a broker restart): start a new
        producer with the same transactional.id. Its ``init_transactions`` bumps the epoch and lets the
        coordinator finish or abort the old transaction, so the changelog and offsets read next are final.
        More than 5 replacements in 10 minutes end the process instead (something is persistently wrong)."""
        now = time.monotonic()
        self._replacements = [t for t in self._replacements if now - t < 600]
        if len(self._replacements) >= 5:
            raise cause
        assert self.producer_factory is not None
        log.error("transactional producer hit a fatal error; replacing it", extra={"error": str(cause)})
        try:
            self.producer.close(timeout=1)
        except Exception:
            log.exception("closing the broken producer failed")
        self.producer = self.producer_factory()
        self.dead_letters.producer = self.producer
        self.producer.init_transactions(self.kafka_timeout)  # raises while the broker is away: retried
        self._replacements.append(now)
        self._broken_producer = None


class RetryBatch(RuntimeError):
    """The batch could not be processed now (e.g. database down); it is redone from the committed offset."""
