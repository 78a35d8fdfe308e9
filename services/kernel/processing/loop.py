"""What both loops share: the retry-with-backoff driver, readiness, ticks, and poison-record isolation."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from services.kernel import metrics
from services.kernel.dlq import PROCESSING_FAILED, UNDECODABLE, DeadLetterPublisher
from services.kernel.errors import KafkaClientError, KafkaFatalError
from services.kernel.kafka import Consumer, Record, TopicPartition
from services.kernel.lag import ConsumerLagTracker
from services.kernel.processing.handler import StreamHandler
from services.kernel.processing.messages import (
    Batch,
    Emit,
    Message,
    OutputTopic,
    RetryBatch,
    failure_detail,
)
from services.kernel.processing.stage import StageMetrics
from services.kernel.serde import ValueDecoder

log = logging.getLogger(__name__)

RECORDS = metrics.counter(
    "plg_stream_records", "Records consumed by a stream loop, by service and outcome.", ("service", "outcome")
)

#: Backoff between failed batches: doubling from the first to the last.
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0

PoisonKey = tuple[str, int, int]


class HandlerFailed(RuntimeError):
    """``process`` raised something other than :class:`RetryBatch` or a Kafka error: the record's fault."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(failure_detail(cause))
        self.cause = cause


def call_process(handler: StreamHandler, batch: Batch, out: Emit) -> None:
    """``handler.process``, with the record's faults told apart from the batch's (retried as they are)."""
    try:
        handler.process(batch, out)
    except (RetryBatch, KafkaClientError):
        raise
    except Exception as exc:
        raise HandlerFailed(exc) from exc


def poison_key(message: Message) -> PoisonKey:
    return (message.topic, message.partition, message.offset)


class PoisonGuard:
    """Remembers the records a handler raised on, so that the redone batch dead-letters them instead.

    When ``process`` raises while iterating the batch, the message it was on is the culprit. When it
    raises after the iteration, no message can be blamed: the loop then reads these records one per batch
    (``batch_size``) until it is past them, where the blame is certain.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self.poison: dict[PoisonKey, str] = {}
        self.singles_until: dict[tuple[str, int], int] = {}

    def batch_size(self, maximum: int) -> int:
        return 1 if self.singles_until else maximum

    def split(self, messages: list[Message]) -> tuple[list[Message], list[Message]]:
        """``(to process, to dead-letter)``."""
        if not self.poison:
            return messages, []
        poison = self.poison
        keep = [m for m in messages if poison_key(m) not in poison]
        return keep, [m for m in messages if poison_key(m) in poison]

    def reason(self, message: Message) -> str:
        return self.poison.get(poison_key(message), "")

    def settled(self, failed: list[Message], positions: Sequence[TopicPartition]) -> None:
        """A batch committed: its dead-lettered records are done; single-record mode ends once every
        partition is past the records it was for."""
        for message in failed:
            self.poison.pop(poison_key(message), None)
        if self.singles_until:
            at = {(tp.topic, tp.partition): tp.offset for tp in positions}
            self.singles_until = {k: end for k, end in self.singles_until.items() if at.get(k, end) < end}

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.poison = {k: v for k, v in self.poison.items() if k[:2] not in gone}
        self.singles_until = {k: v for k, v in self.singles_until.items() if k not in gone}

    def blame(self, batch: Batch, exc: Exception) -> None:
        culprit = batch.culprit()
        if culprit is None and len(batch) == 1:
            culprit = batch[0]
        if culprit is not None:
            key = poison_key(culprit)
            self.poison[key] = failure_detail(exc)
            log.error(
                "handler failed on a record; it goes to the dead-letter topic",
                exc_info=exc,
                extra={"service": self.service, "record": f"{key[0]}[{key[1]}]@{key[2]}"},
            )
            return
        for message in batch:
            where = (message.topic, message.partition)
            self.singles_until[where] = max(self.singles_until.get(where, -1), message.offset + 1)
        log.error(
            "handler failed on a batch without pointing at a record; redoing it one record at a time",
            exc_info=exc,
            extra={"service": self.service, "records": len(batch)},
        )


@dataclass
class LoopParts:
    """What both loops are wired from (``build.py`` makes it from the settings and the catalogue)."""

    service: str
    consumer: Consumer
    #: Physical input topic names, and the decoder of each one's values.
    inputs: Sequence[str]
    decoders: Mapping[str, ValueDecoder]
    #: Catalogue name → where it goes and its encoder.
    outputs: Mapping[str, OutputTopic]
    handler: StreamHandler
    dead_letters: DeadLetterPublisher | None = None
    max_batch: int = 10_000
    batch_wait: float = 0.1
    #: Pass tombstones to the handler (``value`` None) instead of dead-lettering them.
    tombstones: bool = False
    #: Fed from the polling thread: its own thread must not call into the consumer (kernel.lag).
    lag: ConsumerLagTracker | None = None
    clock: Callable[[], float] = time.time


class LoopBase:
    """Drives ``poll_once`` until stopped: a failed batch (already recovered from by ``poll_once``) is
    retried after a backoff; only :class:`KafkaFatalError` ends the loop."""

    def __init__(self, parts: LoopParts) -> None:
        self.service = parts.service
        self.consumer = parts.consumer
        self.inputs = list(parts.inputs)
        self.decoders = dict(parts.decoders)
        self.outputs = dict(parts.outputs)
        self.handler = parts.handler
        parts.handler.bind(parts.consumer)
        self.dead_letters = parts.dead_letters
        self.max_batch = parts.max_batch
        self.batch_wait = parts.batch_wait
        self.tombstones = parts.tombstones
        self.lag = parts.lag
        self.clock = parts.clock
        self.poison = PoisonGuard(parts.service)
        self.running = False
        self.restoring = False
        self.batches = 0
        self._needs_recovery = False
        self._last_tick = parts.clock()
        #: (topic, partition) → the position this instance last committed there (or saw committed by its
        #: own empty-batch commit). Absent until then: a partition just assigned counts as unknown.
        self._committed_at: dict[tuple[str, int], int] = {}
        #: Positions the last empty poll moved past ``_committed_at`` (see :meth:`_markers_passed`).
        self.passed_markers: list[TopicPartition] = []
        #: (topic, partition) this instance owns now: a snapshot replaced whole on every rebalance, so any
        #: thread may read it (the consumer itself must only be called from the polling thread).
        self.assigned: frozenset[tuple[str, int]] = frozenset()
        self._processed = RECORDS.labels(parts.service, "processed")
        self._undecodable = RECORDS.labels(parts.service, UNDECODABLE)
        self._failed = RECORDS.labels(parts.service, PROCESSING_FAILED)
        # Events settled per input topic and their delay since ingest (loss and delay alerts).
        self.stage = StageMetrics(parts.service)

    def _track(self, partitions: Sequence[TopicPartition], *, owned: bool) -> None:
        changed = {(tp.topic, tp.partition) for tp in partitions}
        self.assigned = self.assigned | changed if owned else self.assigned - changed
        # Whoever owns a partition next commits there; what we committed says nothing about it later.
        self._committed_at = {k: v for k, v in self._committed_at.items() if k not in changed}

    def _note_committed(self, positions: Sequence[TopicPartition]) -> None:
        for tp in positions:
            if tp.offset >= 0:
                self._committed_at[(tp.topic, tp.partition)] = tp.offset

    def _markers_passed(self) -> list[TopicPartition]:
        """The positions an empty poll moved past what this instance last committed.

        A transactional input ends each transaction with a commit marker the consumer never returns
        (aborted records are skipped too); when a batch ends on a transaction's last record, the offsets
        committed with it stop short of the marker, and only a later poll steps the position over it. Left
        there, the group's committed offset stays behind the partition end for as long as the partition
        idles: Kafka's own tools (ConsumerGroupCommand, KEDA's scaler, Burrow) then report a lag our
        position-based gauges do not. Everything below such a position was returned by an earlier poll
        and either committed or rewound to the committed offset (a failed batch seeks back), so only
        markers and aborted records lie in between, and committing the position is always safe.
        """
        try:
            positions = self.consumer.position()
        except Exception:  # closing under us: the next poll will tell
            return []
        at = self._committed_at
        return [tp for tp in positions if tp.offset >= 0 and tp.offset > at.get((tp.topic, tp.partition), -1)]

    def ready(self) -> bool:
        """Started, and not restoring state (the ops server's readiness check)."""
        return self.running and not self.restoring

    @property
    def readiness(self) -> dict[str, Callable[[], bool]]:
        """What ``run_service`` serves on ``/readyz`` when a service's ``build`` returns the loop itself."""
        return {self.service: self.ready}

    def start(self) -> None:
        self.consumer.subscribe(
            self.inputs, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self.running = True

    def poll_once(self) -> int:
        raise NotImplementedError

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        raise NotImplementedError

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        raise NotImplementedError

    def _recover(self) -> None:
        raise NotImplementedError

    def _next_batch(self) -> tuple[list[Record], float, bool] | None:
        """Consume the next batch: ``(records, now, tick due)``, or None when there is nothing to do (an
        empty poll with no tick due and no transaction marker passed, or a batch that must wait for a
        repair). An empty poll that stepped over markers returns an empty batch with ``passed_markers``
        set: the loop commits those positions like any batch's (:meth:`_markers_passed`)."""
        if self._needs_recovery:  # a failed batch whose recovery could not finish yet
            self._recover()
        records = self.consumer.consume(self.poison.batch_size(self.max_batch), self.batch_wait)
        if self._needs_recovery:
            # An assignment inside this very poll failed to set up: nothing of this batch may be processed
            # before that is repaired (its records are read again after the rewind).
            self._recover()
            return None
        now = self.clock()
        tick = self.tick_due(now)
        self.passed_markers = []
        if not records and not tick:
            if self.lag is not None:
                self.lag.update()  # an empty poll may have stepped over a transaction marker
            self.passed_markers = self._markers_passed()
            if not self.passed_markers:
                return None
        return records, now, tick

    def tick_due(self, now: float) -> bool:
        interval = self.handler.tick_interval
        return interval is not None and now - self._last_tick >= interval

    def run(self, stop: threading.Event) -> None:
        """Start (if not yet) and process batches until ``stop`` is set. Returns on ``stop``; raises
        :class:`KafkaFatalError` when this instance is fenced or its clients keep breaking."""
        if not self.running:
            self.start()
        backoff = BACKOFF_FIRST
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                    backoff = BACKOFF_FIRST
                except KafkaFatalError:
                    raise
                except Exception as exc:  # recovered from already (or retried before the next batch)
                    log.warning(
                        "batch not committed; input rewound",
                        extra={"service": self.service, "error": str(exc)[:500]},
                    )
                    if stop.wait(backoff):
                        break
                    backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            self.running = False
