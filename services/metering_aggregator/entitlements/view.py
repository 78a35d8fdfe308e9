"""The materialised view: current billing-period usage of every customer, from ``usage-aggregates``.

Every replica reads the whole compacted topic (``read_committed``, all partitions assigned by hand, from
the beginning) and keeps, per customer and meter, the running total of the last few billing periods. Only
``BILLING_PERIOD`` records of the ungrouped series matter here; the others are skipped by their key,
without decoding. The view is ready once it has read up to the end offsets it first saw; until then the
API refuses meter checks rather than answer from a partial view.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from services.kernel import metrics
from services.kernel.kafka import Consumer, TopicPartition
from services.kernel.serde import ValueDecoder
from services.kernel.settings import KafkaSettings
from services.metering_aggregator.values import decimal_to_nanounits

log = logging.getLogger(__name__)

VIEW_LAG = metrics.histogram(
    "plg_entitlements_view_lag_seconds",
    "From the aggregate's commit (updated_at) to it being visible in this replica's view.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
VIEW_RECORDS = metrics.counter("plg_entitlements_view_records", "Aggregate records applied to the view.")

_PERIOD_MARK = b"|BILLING_PERIOD|"


class UsageView:
    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        decoder: ValueDecoder,
        periods_kept: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.decoder = decoder
        self.periods_kept = periods_kept
        self.clock = clock
        # (customer, meter) -> {period_start_ms: nanounits}
        self._usage: dict[tuple[str, str], dict[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._partitions: list[TopicPartition] = []
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.records = 0

    def usage(self, customer_id: str, meter: str, period_start_ms: int) -> int:
        """Usage in nanounits (0 when nothing was metered in that period yet)."""
        periods = self._usage.get((customer_id, meter))
        if periods is None:
            return 0
        return periods.get(period_start_ms, 0)

    def apply(self, key: bytes, value: bytes | None) -> bool:
        """Fold one ``usage-aggregates`` record in; False when it is not a period total (skipped)."""
        if value is None or not key.endswith(b"|") or _PERIOD_MARK not in key:
            return False
        customer, meter, _, start = key[:-1].decode().split("|")
        record = self.decoder.decode(value)
        periods = self._usage.get((customer, meter))
        if periods is None:
            periods = self._usage[(customer, meter)] = {}
        periods[int(start)] = decimal_to_nanounits(record["value"])
        if len(periods) > self.periods_kept:
            del periods[min(periods)]
        VIEW_LAG.observe(max(0.0, self.clock() - record["updated_at"] / 1000))
        return True

    def start(self) -> UsageView:
        consumer = self._consumer = Consumer(
            self.kafka, None, client_id="entitlements-view", fetch_wait_max_ms=20
        )
        self._partitions = [
            TopicPartition(tp.topic, tp.partition) for tp in consumer.assign_all([self.topic])
        ]
        self._thread = threading.Thread(target=self._run, name="usage-view", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        started = time.monotonic()
        apply = self.apply
        ends: dict[tuple[str, int], int] | None = None
        while not self._stop.is_set():
            try:
                if ends is None:
                    # Asked here, not in start(): a partition without a leader for a moment (a topic just
                    # created, a broker restarting) delays readiness instead of failing the API's start-up.
                    ends = consumer.end_offsets(self._partitions)
                # Small batches: the GIL is held while a batch is applied, and requests wait for it.
                records = consumer.consume(500, 0.05)
                for record in records:
                    apply(record.key(), record.value())  # type: ignore[arg-type]
                if records:
                    VIEW_RECORDS.inc(len(records))
                    self.records += len(records)
                self.error = None
                if not self.ready.is_set() and consumer.caught_up(ends):
                    log.info(
                        "usage view caught up",
                        extra={
                            "records": self.records,
                            "seconds": round(time.monotonic() - started, 3),
                            "series": len(self._usage),
                        },
                    )
                    self.ready.set()
            except Exception as exc:  # keep serving the last view; readiness reports the failure
                self.error = exc
                log.exception("usage view update failed")
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._consumer is not None:
            self._consumer.close()
