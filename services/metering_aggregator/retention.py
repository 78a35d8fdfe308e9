"""Retention by window size on ``usage-aggregates``: minute windows expire after hours, hour windows after
months, billing periods are kept as long as invoices need them (forever by default).

Design (docs/metering.md, "Retention by window size"): ``usage-aggregates`` stays one compacted topic —
its name and record are a contract billing reads — and expired windows are **tombstoned** by a sweeper.
Kafka then drops the record and, ``delete.retention.ms`` later, the tombstone. Why tombstones written by a
sweep and not a schedule kept by the aggregator: the aggregator forgets a window an hour after it closes
(grace + 1 min), while its retention runs for days; remembering every window's key until then would be
state as big as the retention (2 880 minute windows per active series for 48 h). The sweep needs no state:
the key says the window (``customer|meter|granularity|window_start|group``), so one pass over the topic
finds every expired one. Its cost is one read of the topic, which the sweep itself keeps bounded.

Safe against the aggregator's own writes: a window is written only while events can still land in it
(until ``window_end + grace``), and the settings refuse a retention shorter than the grace plus a margin,
so no aggregator write can follow a sweep's tombstone. Billing's sink skips tombstones (its ledger in
PostgreSQL keeps what it has read), so a retention longer than billing's lag loses nothing billing needs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.kernel import metrics
from services.kernel.kafka import Producer
from services.kernel.lifecycle import wait_or_stop
from services.kernel.reading import read_to_end
from services.kernel.settings import KafkaSettings
from services.plans.periods import DAY_MS, HOUR_MS, MINUTE_MS

log = logging.getLogger(__name__)

SWEPT = metrics.counter(
    "plg_metering_retention_tombstones",
    "Expired usage-aggregates windows tombstoned by the retention sweeper, by granularity.",
    ("granularity",),
)
SWEEP_SECONDS = metrics.histogram(
    "plg_metering_retention_sweep_seconds", "Time of one retention sweep over usage-aggregates."
)

# The longest billing period (31 days): a period's end is at most this far after its start.
_PERIOD_MAX_MS = 31 * DAY_MS
_LENGTH = {b"MINUTE": MINUTE_MS, b"HOUR": HOUR_MS, b"DAY": DAY_MS, b"BILLING_PERIOD": _PERIOD_MAX_MS}
# Expired keys remembered per pass before their tombstones are written (bounds the sweeper's memory).
_FLUSH_KEYS = 200_000


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long after its end each window size is kept (ms); None keeps it forever."""

    minute_ms: int | None = 48 * HOUR_MS
    hour_ms: int | None = 90 * DAY_MS
    day_ms: int | None = None
    period_ms: int | None = None

    def keep_ms(self, granularity: bytes) -> int | None:
        return {
            b"MINUTE": self.minute_ms,
            b"HOUR": self.hour_ms,
            b"DAY": self.day_ms,
            b"BILLING_PERIOD": self.period_ms,
        }.get(granularity)

    def expired(self, key: bytes, now_ms: int) -> bytes | None:
        """The granularity of the window ``key`` names when it is past its retention at ``now_ms``, else
        None. Parsed from the right: the group is percent-encoded (no ``|``); a customer id may hold one."""
        parts = key.rsplit(b"|", 3)
        if len(parts) != 4:
            return None
        _, granularity, start, _ = parts
        keep = self.keep_ms(granularity)
        if keep is None:
            return None
        try:
            end = int(start) + _LENGTH[granularity]
        except ValueError:
            return None
        return granularity if end + keep < now_ms else None


class RetentionSweeper:
    """Tombstones the expired windows of ``usage-aggregates`` every ``interval`` seconds while ``active()``
    (one instance sweeps: the one holding input partition 0; the others' passes would only repeat it)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        policy: RetentionPolicy,
        interval: float,
        active: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        timeout: float = 600.0,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.policy = policy
        self.interval = interval
        self.active = active
        self.clock = clock
        self.timeout = timeout
        self.last_sweep: float | None = None

    def sweep(self) -> int:
        """One pass: read the topic to its end, tombstone every expired window whose latest record is not a
        tombstone already; returns how many tombstones were written (and acknowledged)."""
        started = time.monotonic()
        now_ms = int(self.clock() * 1000)
        written = 0
        producer = Producer(self.kafka, client_id="plg-metering-retention")
        try:
            # (partition, key) -> granularity, or None once its latest record is a tombstone.
            expired: dict[tuple[int, bytes], bytes | None] = {}

            def flush() -> None:
                nonlocal written
                for (partition, key), granularity in expired.items():
                    if granularity is not None:
                        producer.produce(self.topic, None, key, partition=partition)
                        SWEPT.labels(granularity.decode()).inc()
                        written += 1
                expired.clear()

            for record in read_to_end(self.kafka, self.topic, self.timeout, "plg-metering-retention-read"):
                key = record.key()
                if key is None:
                    continue
                granularity = self.policy.expired(key, now_ms)
                if granularity is None:
                    continue
                where = (record.partition() or 0, key)
                expired[where] = None if record.value() is None else granularity
                if len(expired) >= _FLUSH_KEYS:
                    flush()
            flush()
            if producer.flush(60) > 0:
                raise RuntimeError("retention tombstones not acknowledged within 60 s")
        finally:
            producer.close()
        elapsed = time.monotonic() - started
        SWEEP_SECONDS.observe(elapsed)
        log.info("retention sweep done", extra={"tombstones": written, "seconds": round(elapsed, 3)})
        return written

    def run(self, stop: threading.Event) -> None:
        first_wait = min(60.0, self.interval)  # not at once: start-up has better things to do
        while not wait_or_stop(stop, self.interval if self.last_sweep is not None else first_wait):
            if not self.active():
                continue
            try:
                self.sweep()
            except Exception:  # a broker hiccup: the next pass does it
                log.exception("retention sweep failed; retrying at the next interval")
            self.last_sweep = time.monotonic()
