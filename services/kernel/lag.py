"""Consumer lag per group/topic/partition, in messages and in seconds, as Prometheus gauges.

Exported in kafka-lag-exporter's shape, which SREs already alert on::

    plg_consumer_lag_messages{group,topic,partition}    end offset - position
    plg_consumer_lag_seconds{group,topic,partition}     how old the next unconsumed record is (estimate)
    plg_consumer_group_max_lag_seconds{group}
    plg_consumer_group_lag_messages_sum{group}
    plg_consumer_lag_last_update_timestamp_seconds{group}

Each instance exports the partitions assigned to it; with several instances in a group, aggregate with
``max by (group)`` / ``sum by (group)`` in PromQL.

**Lag in seconds** is estimated the way kafka-lag-exporter does it: every refresh records a sample
``(end offset, time)`` per partition; the age of the consumer's position is read off that table by linear
interpolation (:func:`estimate_lag_seconds`). Why not "now - timestamp of the next unconsumed record":
that needs a fetch of one record per partition per refresh from a second client, trusts producer-set
timestamps (our direct producers may send event time), and a compacted topic may have removed the record.
The interpolation needs nothing but the offsets we fetch anyway; its cost is resolution (the refresh
interval) and a short warm-up after start-up, during which the estimate is a lower bound.

**Not on the hot path**: a background thread refreshes every ``interval`` seconds. It asks the broker for
end offsets through its own small client (so it never waits behind or delays the service's consumer); it
reads the service consumer's assignment and positions, which are local calls. ``update()`` from the poll
loop only pokes the thread. End offsets are the last stable offset under ``read_committed`` (librdkafka
honours ``isolation.level``), so an open transaction is not counted as lag.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaException, TopicPartition

from services.kernel import metrics
from services.kernel.errors import KafkaClientError
from services.kernel.kafka import Consumer

log = logging.getLogger(__name__)

Sample = tuple[int, float]  # (end offset, wall-clock seconds)


def estimate_lag_seconds(samples: Sequence[Sample], position: int, now: float) -> float:
    """Seconds since the record at ``position`` (the next one to consume) was appended, estimated from
    ``samples`` of the partition's end offset over time (oldest first, offsets non-decreasing).

    The end offset is "last offset + 1", so the record at ``position`` exists from the moment the end
    offset exceeded ``position``: between the last sample with ``end <= position`` and the first with
    ``end > position``; linear interpolation places it at ``end == position + 1``. A position older than
    the whole table is extrapolated back at the table's average rate (never less than the table's age).
    Zero when the consumer has caught up.
    """
    if not samples:
        return 0.0
    if position >= samples[-1][0]:
        return 0.0
    target = position + 1
    offsets = [offset for offset, _ in samples]
    after = bisect.bisect_right(offsets, position)  # first sample whose end offset is past `position`
    if after == 0:
        first_offset, first_time = samples[0]
        last_offset, last_time = samples[-1]
        produced_at = first_time
        if last_offset > first_offset and last_time > first_time:
            rate = (last_offset - first_offset) / (last_time - first_time)
            produced_at = first_time - (first_offset - target) / rate
        return max(0.0, now - min(produced_at, first_time))
    before_offset, before_time = samples[after - 1]
    after_offset, after_time = samples[after]
    fraction = (target - before_offset) / (after_offset - before_offset)
    produced_at = before_time + fraction * (after_time - before_time)
    return max(0.0, now - produced_at)


class OffsetHistory:
    """Bounded table of ``(end offset, time)`` samples for one partition.

    A run of samples with the same end offset is kept as its first and last point only: the last tells
    when the partition was still at that offset (the interpolation's lower bound), the first when it got
    there. So an idle partition costs two entries however long it idles.
    """

    def __init__(self, capacity: int = 360) -> None:
        self._samples: deque[Sample] = deque(maxlen=max(3, capacity))

    def add(self, end_offset: int, at: float) -> None:
        samples = self._samples
        if samples and end_offset < samples[-1][0]:
            samples.clear()  # topic recreated or truncated: the old table describes another log
        if len(samples) >= 2 and samples[-1][0] == end_offset and samples[-2][0] == end_offset:
            samples[-1] = (end_offset, at)
        else:
            samples.append((end_offset, at))

    @property
    def samples(self) -> list[Sample]:
        return list(self._samples)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    position: int
    end_offset: int
    lag_messages: int
    lag_seconds: float


def compute_partition_lag(
    topic: str,
    partition: int,
    position: int,
    end_offset: int,
    low_offset: int,
    history: Sequence[Sample],
    now: float,
    reset_to_earliest: bool = True,
) -> PartitionLag:
    """Lag of one partition. ``position`` < 0 means nothing consumed and nothing committed yet: the
    consumer will start at the low offset (``earliest``) or at the end (``latest``)."""
    if position < 0:
        position = max(low_offset, 0) if reset_to_earliest else end_offset
    lag = max(0, end_offset - position)
    seconds = estimate_lag_seconds(history, position, now) if lag > 0 else 0.0
    return PartitionLag(topic, partition, position, end_offset, lag, seconds)


_LABELS = ("group", "topic", "partition")
LAG_MESSAGES = metrics.gauge(
    "plg_consumer_lag_messages", "Records between the consumer's position and the partition end.", _LABELS
)
LAG_SECONDS = metrics.gauge(
    "plg_consumer_lag_seconds", "Estimated age of the next record the consumer has not read yet.", _LABELS
)
GROUP_MAX_LAG_SECONDS = metrics.gauge(
    "plg_consumer_group_max_lag_seconds", "Largest lag in seconds over the group's partitions.", ("group",)
)
GROUP_LAG_SUM = metrics.gauge(
    "plg_consumer_group_lag_messages_sum", "Sum of lag in records over the group's partitions.", ("group",)
)
LAST_UPDATE = metrics.gauge(
    "plg_consumer_lag_last_update_timestamp_seconds",
    "When the lag of the group was last computed (stale means the tracker is stuck).",
    ("group",),
)


class ConsumerLagTracker:
    """Computes and exports the lag of one consumer's assigned partitions.

    ``start()`` runs it every ``interval`` seconds on a daemon thread; ``refresh()`` runs it once, now;
    ``update()`` (cheap, from the poll loop) asks the thread for an early refresh; ``close()`` stops it and
    removes this group's series.
    """

    def __init__(
        self,
        consumer: Consumer,
        group: str | None = None,
        *,
        interval: float = 5.0,
        min_interval: float = 0.5,
        timeout: float = 5.0,
        history: int = 360,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.consumer = consumer
        self.group = group or consumer.group_id
        self.interval = interval
        self.min_interval = min_interval
        self.timeout = timeout
        self._clock = clock
        self._history_capacity = history
        self._histories: dict[tuple[str, int], OffsetHistory] = {}
        self._exported: set[tuple[str, int]] = set()
        # Its own client: the broker round trips for end offsets must not queue behind (or hold up) the
        # service consumer's poll. Same group id so it can read the group's committed offsets; it never
        # subscribes, so it never joins the group.
        self._probe = Consumer(
            consumer.settings,
            consumer.group_id if consumer.has_group else None,
            client_id=f"{self.group}-lag-probe",
            isolation_level=consumer.isolation_level,
        )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_refresh = 0.0
        self.last: list[PartitionLag] = []

    # -- running ------------------------------------------------------------------------------------

    def start(self) -> ConsumerLagTracker:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"lag-{self.group}", daemon=True)
            self._thread.start()
        return self

    def update(self) -> None:
        """Ask for a refresh soon (never blocks; rate-limited to one per ``min_interval``)."""
        if time.monotonic() - self._last_refresh >= self.min_interval:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:
                log.exception("consumer lag refresh failed", extra={"group": self.group})
            self._wake.wait(self.interval)
            self._wake.clear()

    # -- computing ----------------------------------------------------------------------------------

    def refresh(self) -> list[PartitionLag]:
        """Compute the lag of every assigned partition now and export it."""
        with self._lock:
            self._last_refresh = time.monotonic()
            if self.consumer.closed:
                return []
            try:
                assignment = self.consumer.assignment()
                positions = self.consumer.position(assignment) if assignment else []
            except (KafkaException, RuntimeError):  # consumer closed under us during shutdown
                return []
            starts = self._start_offsets(positions)
            now = self._clock()
            result: list[PartitionLag] = []
            for tp in positions:
                key = (tp.topic, tp.partition)
                try:
                    low, high = self._probe.watermark_offsets(tp.topic, tp.partition, self.timeout)
                except KafkaClientError:
                    log.warning(
                        "end offset unavailable", extra={"topic": tp.topic, "partition": tp.partition}
                    )
                    continue
                history = self._histories.get(key)
                if history is None:
                    history = self._histories[key] = OffsetHistory(self._history_capacity)
                history.add(high, now)
                result.append(
                    compute_partition_lag(
                        tp.topic,
                        tp.partition,
                        starts.get(key, tp.offset),
                        high,
                        low,
                        history.samples,
                        now,
                        self.consumer.auto_offset_reset != "latest",
                    )
                )
            self._export(result)
            self.last = result
            return result

    def _start_offsets(self, positions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        # Before its first record on a partition the consumer has no position; it will start from the
        # group's committed offset, so that is where its lag counts from.
        missing = [TopicPartition(tp.topic, tp.partition) for tp in positions if tp.offset < 0]
        if not missing or not self.consumer.has_group:
            return {}
        try:
            committed = self._probe.committed(missing, timeout=self.timeout)
        except Exception:
            log.warning("committed offsets unavailable", extra={"group": self.group})
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}

    def _export(self, lags: list[PartitionLag]) -> None:
        current = set()
        for lag in lags:
            labels = (self.group, lag.topic, str(lag.partition))
            LAG_MESSAGES.labels(*labels).set(lag.lag_messages)
            LAG_SECONDS.labels(*labels).set(lag.lag_seconds)
            current.add((lag.topic, lag.partition))
        for topic, partition in self._exported - current:  # revoked partitions: drop their series
            self._remove(topic, partition)
            self._histories.pop((topic, partition), None)
        self._exported = current
        GROUP_MAX_LAG_SECONDS.labels(self.group).set(max((lag.lag_seconds for lag in lags), default=0.0))
        GROUP_LAG_SUM.labels(self.group).set(sum(lag.lag_messages for lag in lags))
        LAST_UPDATE.labels(self.group).set(self._clock())

    def _remove(self, topic: str, partition: int) -> None:
        for gauge in (LAG_MESSAGES, LAG_SECONDS):
            with contextlib.suppress(KeyError):
                gauge.remove(self.group, topic, str(partition))

    # -- shutdown -----------------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + self.interval)
        with self._lock:
            for topic, partition in self._exported:
                self._remove(topic, partition)
            self._exported = set()
            for gauge in (GROUP_MAX_LAG_SECONDS, GROUP_LAG_SUM, LAST_UPDATE):
                with contextlib.suppress(KeyError):
                    gauge.remove(self.group)
            self._probe.close()

    def __enter__(self) -> ConsumerLagTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
