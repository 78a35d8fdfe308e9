"""A materialised view of a compacted topic: read it whole from the beginning, then follow it.

Every replica of a service that needs the *current* value of every key (entitlements' usage totals, a
health score per customer, enrichment's customer context) reads the whole topic itself: every partition
assigned by hand (no group, so no rebalances and no coordination between replicas), ``read_committed``
(only committed transactions' records), from the beginning. Each record is handed to ``apply`` with its
value decoded, or ``None`` for a tombstone (the key was deleted). ``ready`` is set once the view has read
up to the end offsets the topic had when it started: before that, a missing key means "not read yet", not
"absent", and a service should refuse to answer from it (entitlements answers 503).

What it owns so its users don't rewrite it:

* **end offsets asked in the view's thread, retried**: a partition without a leader for a moment (a topic
  just created, a broker restarting) delays readiness instead of failing the service's start-up;
* **a poison record never stops the view**: one that cannot be decoded, or on which ``apply`` raises, is
  skipped, counted (``plg_view_records_total{outcome}``) and logged, and the next records are applied —
  the view goes on with one stale key rather than stop for good (there is no dead-letter topic: a view
  produces nothing, and the record stays in its topic for whoever investigates);
* a ``key_filter`` to skip records by key **without decoding them** (a view that needs a few of a
  topic's records pays for those only);
* partitions already empty (everything compacted or deleted away) count as read;
* consumer lag of the view (``plg_consumer_lag_*{group=<name>}``) from :mod:`services.kernel.lag`, fed
  from the view's own poll loop;
* small batches (``batch_size``): ``apply`` runs under the GIL, and an HTTP service's requests wait for it.

    view = MaterializedView(kafka, "usage-aggregates", decoder, apply=totals.apply, name="usage-view")
    life.push(view.start(), "usage view")
    ops_routes(app, readiness={"usage_view": view.healthy})
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from services.kernel import metrics
from services.kernel.errors import SerializationError
from services.kernel.kafka import OFFSET_BEGINNING, Consumer, Record, TopicPartition
from services.kernel.lag import ConsumerLagTracker
from services.kernel.lifecycle import backoff_delays
from services.kernel.processing.messages import Message
from services.kernel.processing.store import LocalStore
from services.kernel.serde import ValueDecoder
from services.kernel.settings import KafkaSettings

log = logging.getLogger(__name__)

RECORDS = metrics.counter(
    "plg_view_records",
    "Records a materialised view read, by outcome: applied, skipped (by key), undecodable, failed (apply "
    "raised).",
    ("view", "outcome"),
)
READY = metrics.gauge(
    "plg_view_ready", "1 once the view has read its topic up to where it stood at start.", ("view",)
)

Apply = Callable[[Message], None]
KeyFilter = Callable[[bytes | None], bool]


class MaterializedView:
    """Reads ``topic`` into whatever ``apply`` maintains; see the module docstring.

    ``apply`` runs on the view's thread, one record at a time, in offset order per partition; readers on
    other threads see its effects as soon as it returns (plain dict stores are atomic under the GIL).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        decoder: ValueDecoder,
        apply: Apply,
        *,
        name: str,
        key_filter: KeyFilter | None = None,
        batch_size: int = 500,
        poll_timeout: float = 0.05,
        fetch_wait_max_ms: int = 20,
        track_lag: bool = True,
        checkpoint: ViewCheckpoint | None = None,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.decoder = decoder
        self.apply = apply
        self.name = name
        self.key_filter = key_filter
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.fetch_wait_max_ms = fetch_wait_max_ms
        self.track_lag = track_lag
        # A local store that holds what ``apply`` built, sealed at the view's positions at close: the next
        # start reads only what was written since (see ViewCheckpoint).
        self.checkpoint = checkpoint
        #: Where each partition was started: its sealed position, or the beginning (-2).
        self.started_at: dict[int, int] = {}
        #: "store" when the last start reused a sealed store, else "topic".
        self.restored_from = "topic"
        self.ready = threading.Event()
        # The last error of the loop (None once a poll succeeds again): readiness reports it.
        self.error: BaseException | None = None
        self.records = 0  # every record read, whatever its outcome
        self._counts = {o: RECORDS.labels(name, o) for o in ("applied", "skipped", "undecodable", "failed")}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._lag: ConsumerLagTracker | None = None
        self._partitions: list[TopicPartition] = []
        READY.labels(name).set(0)

    def healthy(self) -> bool:
        """For ``/readyz``: caught up, and the last poll worked."""
        return self.ready.is_set() and self.error is None

    def start(self) -> MaterializedView:
        """Assign every partition and start the view's thread; returns at once (``ready`` comes later)."""
        consumer = self._consumer = Consumer(
            self.kafka, None, client_id=f"{self.name}-view", fetch_wait_max_ms=self.fetch_wait_max_ms
        )
        try:
            self._partitions = [
                TopicPartition(tp.topic, tp.partition) for tp in consumer.assign_all([self.topic])
            ]
            if self.track_lag:
                self._lag = ConsumerLagTracker(consumer, group=self.name).start()
        except BaseException:
            consumer.close()
            raise
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _end_offsets(self, consumer: Consumer) -> dict[tuple[str, int], int]:
        """Where each partition ends now; 0 (nothing to wait for) for one with no record left to read."""
        ends: dict[tuple[str, int], int] = {}
        watermarks = {
            tp.partition: consumer.watermark_offsets(tp.topic, tp.partition) for tp in self._partitions
        }
        if self.checkpoint is not None and not self.started_at:
            self._start_from_checkpoint(consumer, watermarks)
        for tp in self._partitions:
            low, high = watermarks[tp.partition]
            start = max(low, self.started_at.get(tp.partition, OFFSET_BEGINNING))
            # An empty partition, one whose records were all deleted (low == high > 0), or one a sealed store
            # already holds up to its end: the consumer would never get a record there to move its position.
            ends[(tp.topic, tp.partition)] = high if high > start else 0
        return ends

    def _start_from_checkpoint(self, consumer: Consumer, watermarks: dict[int, tuple[int, int]]) -> None:
        """Ask the checkpoint where to start (before anything is applied); a partition it has no position for
        starts at the beginning."""
        assert self.checkpoint is not None
        offsets = self.checkpoint.start_offsets(watermarks)
        self.started_at = {
            tp.partition: offsets.get(tp.partition, OFFSET_BEGINNING) for tp in self._partitions
        }
        if offsets:
            self.restored_from = "store"
            consumer.assign(
                [
                    TopicPartition(tp.topic, tp.partition, self.started_at[tp.partition])
                    for tp in self._partitions
                ]
            )
            log.info(
                "view continues from its local store",
                extra={"view": self.name, "topic": self.topic, "offsets": self.started_at},
            )

    def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        started = time.monotonic()
        ends: dict[tuple[str, int], int] | None = None
        delays = backoff_delays(initial=0.2, maximum=5.0)
        read = self._read
        while not self._stop.is_set():
            try:
                if ends is None:
                    # Here, not in start(): see the module docstring (leaderless partitions).
                    ends = self._end_offsets(consumer)
                records = consumer.consume(self.batch_size, self.poll_timeout)
                if records:
                    read(records)
                if self._lag is not None:
                    self._lag.update()
                if self.error is not None:
                    log.info("view reading again", extra={"view": self.name})
                    self.error = None
                    delays = backoff_delays(initial=0.2, maximum=5.0)
                if not self.ready.is_set() and consumer.caught_up(ends):
                    log.info(
                        "view caught up",
                        extra={
                            "view": self.name,
                            "topic": self.topic,
                            "records": self.records,
                            "seconds": round(time.monotonic() - started, 3),
                        },
                    )
                    READY.labels(self.name).set(1)
                    self.ready.set()
            except Exception as exc:  # broker trouble: keep serving the last view; readiness reports it
                self.error = exc
                log.warning("view read failed; retrying", extra={"view": self.name}, exc_info=True)
                self._stop.wait(next(delays))

    def _read(self, records: list[Record]) -> None:
        self.records += len(records)
        key_filter, decode, apply = self.key_filter, self.decoder.decode, self.apply
        applied = skipped = 0  # counted per batch: a metric increment per record would cost more than a skip
        for record in records:
            if key_filter is not None and not key_filter(record.key()):
                skipped += 1
                continue
            raw = record.value()
            try:
                value = None if raw is None else decode(raw)
            except SerializationError as exc:
                self._counts["undecodable"].inc()
                log.warning(
                    "view skipped a record it cannot decode",
                    extra={"view": self.name, "record": _where(record), "reason": str(exc)[:300]},
                )
                continue
            try:
                apply(Message(record, value))
            except Exception:
                self._counts["failed"].inc()
                log.exception(
                    "view skipped a record apply() failed on",
                    extra={"view": self.name, "record": _where(record)},
                )
                continue
            applied += 1
        if applied:
            self._counts["applied"].inc(applied)
        if skipped:
            self._counts["skipped"].inc(skipped)

    def close(self) -> None:
        self._stop.set()
        stopped = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            stopped = not self._thread.is_alive()
        if self._lag is not None:
            self._lag.close()
        if self._consumer is not None:
            if self.checkpoint is not None and stopped and self.started_at:
                self._seal(self._consumer)
            self._consumer.close()
        READY.labels(self.name).set(0)

    def _seal(self, consumer: Consumer) -> None:
        """The thread has stopped, so every record before each position was applied: seal there."""
        assert self.checkpoint is not None
        try:
            positions = {}
            for tp in consumer.position(self._partitions):
                offset = tp.offset
                # Nothing fetched on that partition since the start: the start is where the state stands.
                positions[tp.partition] = offset if offset >= 0 else self.started_at[tp.partition]
            self.checkpoint.seal(positions)
            log.info("view sealed its local store", extra={"view": self.name, "offsets": positions})
        except Exception:
            log.exception("could not seal the view's local store", extra={"view": self.name})


class ViewCheckpoint:
    """A view's local store: what ``apply`` built, sealed at the view's positions at a clean close, so that
    the next start reads only the records written since (an incremental restore of a view).

    The topic stays the truth. The owner's ``load(seal)`` rebuilds its state from a sealed store (entries may
    stay on disk, see :class:`~services.kernel.processing.spill.SpillMap`) and ``write_all()`` writes what
    memory holds before a seal; ``seal_content()`` adds the owner's own fields to the seal. A seal is
    trusted only when, for every partition it names, the sealed position is within the topic's current
    ``[low, high]`` watermarks and it is younger than ``max_age_seconds`` — the topic's
    ``delete.retention.ms``: past that, compaction may have dropped a tombstone written after the seal,
    whose deletion the store would then miss. Anything else is wiped and the view reads from the beginning.
    """

    def __init__(
        self,
        store: LocalStore,
        *,
        load: Callable[[dict[str, Any]], object],
        write_all: Callable[[], None],
        seal_content: Callable[[], dict[str, Any]],
        max_age_seconds: float = 86_400.0,
    ) -> None:
        self.store = store
        self.load = load
        self.write_all = write_all
        self.seal_content = seal_content
        self.max_age_seconds = max_age_seconds

    def start_offsets(self, watermarks: dict[int, tuple[int, int]]) -> dict[int, int]:
        """Where to start each partition: the sealed positions when the seal is trusted ({} otherwise, the
        store then wiped). Runs on the view's thread before the first record is applied."""
        seal = self.store.seal_of()
        offsets = self._trusted(seal, watermarks) if seal is not None else None
        if offsets is None:
            if seal is not None or self.store.estimated_keys() > 0:
                log.info(
                    "view store not trusted; reading the topic from the beginning",
                    extra={"path": str(self.store.path)},
                )
            self.store.clear()
            return {}
        assert seal is not None
        self.load(seal)
        self.store.unseal()  # it changes from now on
        return offsets

    def _trusted(self, seal: dict[str, Any], watermarks: dict[int, tuple[int, int]]) -> dict[int, int] | None:
        sealed = seal.get("offsets")
        at = seal.get("at")
        if not isinstance(sealed, dict) or not isinstance(at, (int, float)):
            return None
        if time.time() - at > self.max_age_seconds:
            return None
        offsets: dict[int, int] = {}
        for key, offset in sealed.items():
            partition = int(key)
            if partition not in watermarks or not isinstance(offset, int):
                return None  # a partition gone: another topic under this name
            low, high = watermarks[partition]
            if offset != OFFSET_BEGINNING and not low <= offset <= high:
                return None  # records deleted past it, or the topic re-created
            offsets[partition] = offset
        return offsets

    def seal(self, positions: dict[int, int]) -> None:
        self.write_all()
        self.store.seal(
            {**self.seal_content(), "offsets": {str(p): o for p, o in positions.items()}, "at": time.time()}
        )


def _where(record: Record) -> str:
    return f"{record.topic()}[{record.partition()}]@{record.offset()}"
