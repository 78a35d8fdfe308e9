"""The at-least-once loop, for sinks with an effect outside Kafka (PostgreSQL, Stripe, HTTP).

Per batch: ``consume`` → decode (undecodable records become dead letters) → the handler's ``process``
performs the effect and may write records (each acknowledged by the broker before going on) → the offsets
are committed. Effect first, offsets after: a crash in between redelivers the batch, so the effect must be
idempotent, in one of two ways:

* **offsets in the sink's own store** — the handler writes ``batch.next_offsets`` in the same database
  transaction as the effect and answers ``stored_offsets()``; the loop then drops every redelivered
  record below them, so each record's effect happens once even though delivery is at least once;
* **idempotency keys** — the effect itself dedups (a Stripe meter event's ``identifier``, an upsert).

Failures: :class:`~services.kernel.processing.RetryBatch` or a Kafka error rewinds to the committed offsets
and retries after a backoff; any other exception dead-letters the message being processed
(``processing_failed``), as in the exactly-once loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from services.kernel import metrics
from services.kernel.dlq import UNDECODABLE
from services.kernel.errors import KafkaUnavailableError
from services.kernel.kafka import Consumer, DeliveryReport, Headers, Key, Producer, TopicPartition
from services.kernel.processing.handler import StreamHandler
from services.kernel.processing.loop import RECORDS, HandlerFailed, LoopBase, LoopParts, call_process
from services.kernel.processing.messages import (
    PROCESSING_FAILED,
    Batch,
    Emit,
    decode_batch,
    next_offsets,
)

log = logging.getLogger(__name__)

BATCHES = metrics.counter(
    "plg_stream_batches", "Batches of the at-least-once loop, by service and result.", ("service", "result")
)


class SinkHandler(StreamHandler):
    """A :class:`StreamHandler` for the at-least-once loop. ``stored_offsets`` is the one extra hook."""

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Mapping[tuple[str, int], int]:
        """The next offset to process per (topic, partition), as stored with the effect (empty: the sink
        keeps none, Kafka's committed offsets rule). Asked on assignment and after every rollback."""
        return {}


class AtLeastOnceLoop(LoopBase):
    """Runs a :class:`SinkHandler` over its input topics: effect first, offsets after.

    Build it with :func:`services.kernel.processing.at_least_once`; the constructor takes the parts."""

    handler: SinkHandler

    def __init__(self, parts: LoopParts, producer: Producer | None, *, ack_timeout: float = 30.0) -> None:
        super().__init__(parts)
        self.producer = producer
        self.ack_timeout = ack_timeout
        # (topic, partition) → the next offset whose effect has not happened yet (stored_offsets()).
        self._floor: dict[tuple[str, int], int] = {}
        self._pending: list[Future[DeliveryReport]] = []
        self._skipped = RECORDS.labels(self.service, "already_applied")
        self._ok = BATCHES.labels(self.service, "committed")
        self._retried = BATCHES.labels(self.service, "retried")

    # -- rebalances -------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        self._track(partitions, owned=True)
        self.restoring = True
        try:
            self.handler.assigned(partitions)
            self._floor.update(self.handler.stored_offsets(partitions))
        except Exception:
            log.exception("sink set-up on assignment failed; retrying before the next batch")
            self._needs_recovery = True
        finally:
            self.restoring = False

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._track(partitions, owned=False)
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._floor = {k: v for k, v in self._floor.items() if k not in gone}
        self.poison.forget(partitions)
        self.handler.revoked(partitions)

    # -- the loop -------------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Consume a batch, have the sink apply it, commit its offsets; returns the records consumed."""
        polled = self._next_batch()
        if polled is None:
            return 0
        records, now, tick = polled
        # An empty batch commits the positions its poll stepped to over transaction markers (loop.py).
        ends = (
            next_offsets(records)
            if records
            else {(tp.topic, tp.partition): tp.offset for tp in self.passed_markers}
        )
        consumed = len(records)
        if self._floor:  # redelivered records whose effect the sink has stored already
            floor = self._floor
            records = [r for r in records if r.offset() >= floor.get((r.topic(), r.partition()), -1)]  # type: ignore[arg-type,operator]
            if len(records) != consumed:
                self._skipped.inc(consumed - len(records))
        messages, undecodable = decode_batch(records, self.decoders, tombstones=self.tombstones)
        keep, failed = self.poison.split(messages)
        batch = Batch(keep, ends)
        out = Emit(self._send, self.outputs, self.dead_letters, int(now * 1000))
        offsets = [TopicPartition(t, p, o) for (t, p), o in ends.items()]
        try:
            for record, error in undecodable:
                out.dead_letter(record, UNDECODABLE, error)
            for message in failed:
                out.dead_letter(message, PROCESSING_FAILED, self.poison.reason(message))
            if len(batch):
                call_process(self.handler, batch, out)
            if tick:
                self.handler.tick(out)
            self._await_acks()
            if offsets:
                self.consumer.commit(offsets)
        except BaseException as exc:
            self._retried.inc()
            self._pending.clear()
            if isinstance(exc, HandlerFailed):
                self.poison.blame(batch, exc.cause)
            self._needs_recovery = True
            self._recover()
            raise
        self.poison.settled(failed, offsets)
        self._note_committed(offsets)
        self._floor.update(ends)
        if tick:
            self._last_tick = now
        if self.lag is not None:
            self.lag.observe(self.consumer.position())
        self._ok.inc()
        self._processed.inc(len(batch))
        if undecodable:
            self._undecodable.inc(len(undecodable))
        if failed:
            self._failed.inc(len(failed))
        self.stage.settled(batch, failed, (record for record, _ in undecodable))
        self.batches += 1
        self.handler.committed(offsets)
        return consumed

    # -- writes -----------------------------------------------------------------------------------------

    def _send(
        self,
        topic: str,
        value: bytes | None,
        key: Key,
        headers: Headers | None,
        partition: int | None,
        timestamp: int | None,
    ) -> None:
        if self.producer is None:
            raise RuntimeError("this loop has no producer: declare its outputs or dead-letter topic")
        future = self.producer.send(topic, value, key, headers, partition=partition, timestamp=timestamp)
        self._pending.append(future)

    def _await_acks(self) -> None:
        """Every record this batch wrote must be on the broker before its offsets are committed."""
        pending, self._pending = self._pending, []
        deadline = time.monotonic() + self.ack_timeout
        for future in pending:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout as exc:
                raise KafkaUnavailableError(
                    f"records not acknowledged within {self.ack_timeout:.0f}s", retriable=True
                ) from exc

    def _recover(self) -> None:
        """Rewind after a failed batch: the sink rolls back what it keeps in memory and says where its
        stored effects end; the consumer goes back to the committed offsets."""
        self.restoring = True
        try:
            assigned = self.consumer.assignment()
            self.handler.rollback(assigned)
            self._floor = dict(self.handler.stored_offsets(assigned)) if assigned else {}
        finally:
            self.restoring = False
        self.consumer.seek_to_committed()
        self._needs_recovery = False

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=10)
