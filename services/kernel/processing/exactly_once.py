"""The exactly-once consume-transform-produce loop (Kafka transactions, KIP-447).

Per batch: ``consume`` → decode (undecodable records become dead letters) → ``begin`` → the handler's
``process`` writes outputs and dead letters → ``prepare_commit`` (checkpoints) → ``send_offsets`` →
``commit``. Everything a batch writes and the offsets it consumed commit together or not at all.

What the loop owns so that no service writes it again:

* **Abort and rewind.** A failed batch ends its transaction (an *in-doubt* commit — one that timed out —
  is finished first: only then do the committed offsets say what happened), asks the handler to
  ``rollback`` its state to the committed offsets, rewinds the consumer to them and retries after a
  backoff (0.2 s doubling to 5 s).
* **Fencing.** The ``transactional.id`` is the instance's stable id (a restarted instance aborts its
  predecessor's open transaction at ``init_transactions``) and the consumer group metadata travels with
  the offsets, so an instance that lost its partitions cannot commit for them. A fencing error ends the
  loop (:class:`~services.kernel.errors.KafkaFatalError`): fighting back would fence the new owner.
* **Producer replacement.** Any other fatal producer error (``INVALID_TXN_STATE`` after a broker restart,
  the ``_WEDGED`` guard of librdkafka #5456) replaces the producer with a new one under the same
  ``transactional.id``, whose ``init_transactions`` bumps the epoch and settles the old transaction; more
  than 5 in 10 minutes end the loop.
* **Poison records.** A record that cannot be decoded is dead-lettered ``undecodable``; a record the
  handler raises on is dead-lettered ``processing_failed`` and the batch redone without it. Neither ever
  stops a partition.
* **Rebalances** (cooperative by default) call the handler's ``assigned``/``revoked`` between
  transactions; **lag** is fed from the polling thread (``kernel.lag``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from services.kernel import metrics
from services.kernel.dlq import UNDECODABLE
from services.kernel.errors import KafkaFatalError
from services.kernel.kafka import Consumer, Headers, Key, Record, TopicPartition, TransactionalProducer
from services.kernel.processing.loop import HandlerFailed, LoopBase, LoopParts, call_process
from services.kernel.processing.messages import (
    PROCESSING_FAILED,
    Batch,
    Emit,
    Message,
    RetryBatch,
    decode_batch,
)

log = logging.getLogger(__name__)

TRANSACTIONS = metrics.counter(
    "plg_stream_transactions",
    "Transactions of the exactly-once loop, by service and result.",
    ("service", "result"),
)
BATCH_SECONDS = metrics.histogram(
    "plg_stream_batch_seconds", "Time to process and commit one batch, by service.", ("service",)
)
PRODUCER_REPLACEMENTS = metrics.counter(
    "plg_stream_producer_replacements", "Transactional producers replaced after a fatal error.", ("service",)
)

# Fatal errors that mean another instance owns our transactional.id or group.instance.id, or we lack the
# rights: fighting back would fence it in turn, so these end the loop instead of replacing the producer.
NOT_REPLACEABLE = frozenset(
    {
        "_FENCED",
        "PRODUCER_FENCED",
        "INVALID_PRODUCER_EPOCH",
        "FENCED_INSTANCE_ID",
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
    }
)
# Fencing errors that a transaction of our own also gets once the coordinator has aborted it for outliving
# its timeout (it bumps the producer epoch, KIP-588/KIP-890; librdkafka reports _FENCED): the broker was away
# longer than the timeout, not another instance. Told apart by the transaction's age (``_replaceable``).
TIMEOUT_FENCING = frozenset({"_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"})
MAX_REPLACEMENTS = 5
REPLACEMENT_WINDOW = 600.0


class ExactlyOnceLoop(LoopBase):
    """Runs a :class:`StreamHandler` over its input topics, one Kafka transaction per batch.

    Build it with :func:`services.kernel.processing.exactly_once` (which wires the clients from the
    settings and the topic catalogue); the constructor takes the parts, for tests and odd wiring.
    """

    def __init__(
        self,
        parts: LoopParts,
        producer_factory: Callable[[], TransactionalProducer],
        *,
        kafka_timeout: float = 30.0,
    ) -> None:
        super().__init__(parts)
        self.producer_factory = producer_factory
        self.producer = producer_factory()
        if self.dead_letters is not None:
            self.dead_letters.producer = self.producer
        # How long one transactional call (begin, send_offsets, commit, abort) may retry before the batch
        # is given up (and, for a commit, left in doubt until the next attempt).
        self.kafka_timeout = kafka_timeout
        self._broken_producer: KafkaFatalError | None = None
        self._replacements: list[float] = []
        self._committed = TRANSACTIONS.labels(self.service, "committed")
        self._aborted = TRANSACTIONS.labels(self.service, "aborted")
        self._batch_seconds = BATCH_SECONDS.labels(self.service)

    # -- rebalances (called from inside consumer.consume(), between transactions) ---------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        self._track(partitions, owned=True)
        self.restoring = True
        try:
            self.handler.assigned(partitions)
        except Exception:
            # Raising here would leave the assignment undone; the next poll rebuilds what is missing
            # instead (rollback), and the handler commits no offset of a partition without state meanwhile.
            log.exception("restore on assignment failed; retrying before the next batch")
            self._needs_recovery = True
        finally:
            self.restoring = False

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._track(partitions, owned=False)
        self.poison.forget(partitions)
        self.handler.revoked(partitions)

    # -- the loop -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.producer.init_transactions(self.kafka_timeout)
        super().start()

    def poll_once(self) -> int:
        """Consume, process and commit one batch; returns the number of records consumed."""
        polled = self._next_batch()
        if polled is None:
            return 0
        records, now, tick = polled
        started = time.monotonic()
        messages, undecodable = decode_batch(records, self.decoders, tombstones=self.tombstones)
        keep, failed = self.poison.split(messages)
        batch = Batch(keep)
        try:
            self._transaction(batch, undecodable, failed, int(now * 1000), tick)
        except BaseException as exc:
            self._aborted.inc()
            self._needs_recovery = True
            replace = isinstance(exc, KafkaFatalError) and self._replaceable(exc)
            if replace:
                self._broken_producer = exc  # type: ignore[assignment]
            elif isinstance(exc, HandlerFailed):
                self.poison.blame(batch, exc.cause)
            self._recover()
            if replace:
                raise RetryBatch(f"transactional producer replaced after: {exc}") from exc
            raise
        if tick:
            self._last_tick = now
        self._batch_seconds.observe(time.monotonic() - started)
        self.batches += 1
        return len(records)

    def _transaction(
        self,
        batch: Batch,
        undecodable: list[tuple[Record, str]],
        failed: list[Message],
        now_ms: int,
        tick: bool,
    ) -> None:
        producer = self.producer
        producer.begin(self.kafka_timeout)
        out = Emit(self._produce, self.outputs, self.dead_letters, now_ms)
        for record, error in undecodable:
            out.dead_letter(record, UNDECODABLE, error)
        for message in failed:
            out.dead_letter(message, PROCESSING_FAILED, self.poison.reason(message))
        if len(batch):
            call_process(self.handler, batch, out)
        if tick:
            self.handler.tick(out)
        positions = self.consumer.position()
        offsets = self.handler.prepare_commit(positions, out)
        producer.send_offsets(self.consumer, offsets, timeout=self.kafka_timeout)
        producer.commit(self.kafka_timeout)
        self.poison.settled(failed, positions)
        # Positions, not only the offsets the handler chose to commit: a partition it withheld (no state
        # yet) must not make every empty poll open another transaction (loop.py, _markers_passed).
        self._note_committed(positions)
        if self.lag is not None:
            self.lag.observe(positions)
        self._committed.inc()
        self._processed.inc(len(batch))
        if undecodable:
            self._undecodable.inc(len(undecodable))
        if failed:
            self._failed.inc(len(failed))
        self.stage.settled(batch, failed, (record for record, _ in undecodable))
        self.handler.committed(offsets)

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: Key,
        headers: Headers | None,
        partition: int | None,
        timestamp: int | None,
    ) -> None:
        self.producer.produce(topic, value, key, headers, partition=partition, timestamp=timestamp)

    # -- recovery ---------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """After a failed batch: end its transaction, then have the handler drop its uncommitted changes,
        and rewind to the committed input.

        The order matters. A commit that timed out is *in doubt* — it may still commit — and the kernel's
        ``abort()`` finishes it either way; only once its outcome is known do the handler's changelog and
        the committed offsets agree, so only then is the state rolled back and the consumer rewound. If the
        outcome cannot be learnt yet (broker away), this raises and is tried again before the next batch.
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
        self.restoring = True
        try:
            self.handler.rollback(self.consumer.assignment())
        finally:
            self.restoring = False
        self.consumer.seek_to_committed()
        self._needs_recovery = False

    def _replaceable(self, exc: KafkaFatalError) -> bool:
        """A fatal error a new producer with the same ``transactional.id`` gets past. Fencing is one only
        when our own transaction had been open longer than its timeout: the coordinator aborted it and
        bumped the epoch (a broker outage longer than the timeout does that), so no other instance is
        involved. A transaction fenced younger than that was fenced by another instance: the loop ends."""
        if exc.code_name not in NOT_REPLACEABLE and "fenced" not in str(exc).lower():
            return True
        began = self.producer.began_at
        timed_out = began is not None and time.monotonic() - began >= self.producer.transaction_timeout
        if timed_out and exc.code_name in TIMEOUT_FENCING:
            log.warning(
                "transaction fenced after outliving its timeout (aborted by the coordinator); "
                "replacing the producer",
                extra={"service": self.service, "error": str(exc)[:300]},
            )
            return True
        return False

    def _replace_producer(self, cause: KafkaFatalError) -> None:
        """A fatal, non-fencing producer error (e.g. INVALID_TXN_STATE after a broker restart): start a new
        producer with the same transactional.id. Its ``init_transactions`` bumps the epoch and lets the
        coordinator finish or abort the old transaction, so the state and offsets read next are final.
        More than 5 replacements in 10 minutes end the loop (something is persistently wrong)."""
        now = time.monotonic()
        self._replacements = [t for t in self._replacements if now - t < REPLACEMENT_WINDOW]
        if len(self._replacements) >= MAX_REPLACEMENTS:
            raise cause
        log.error("transactional producer hit a fatal error; replacing it", extra={"error": str(cause)})
        try:
            self.producer.close(timeout=1)
        except Exception:
            log.exception("closing the broken producer failed")
        self.producer = self.producer_factory()
        if self.dead_letters is not None:
            self.dead_letters.producer = self.producer
        self.producer.init_transactions(self.kafka_timeout)  # raises while the broker is away: retried
        self._replacements.append(now)
        self._broken_producer = None
        PRODUCER_REPLACEMENTS.labels(self.service).inc()

    def close(self) -> None:
        """Close the producer this loop holds by now (it may have replaced the first one)."""
        self.producer.close(timeout=10)
