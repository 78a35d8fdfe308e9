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

**Where positions come from**: the thread that polls the consumer hands them over —
``tracker.observe(positions)`` with the list it just sent with a transaction's offsets, or
``tracker.update()`` after any other poll (it reads ``consumer.position()``, a ~20 µs local call, on the
calling thread). The tracker's background thread never calls the service consumer: confluent-kafka 2.16
lets one thread at a time into a Consumer, and a caller that finds it busy sleeps and retries (usleep, no
queue). Against a loop calling ``consume(n, 0.1)`` back to back such a caller gets in only while the loop
is doing something else, e.g. in a transaction (measured: a refresh waited 36 s), and meanwhile the gauges
showed a lag the loop had long cleared. The background thread only asks the broker for end offsets (and,
before the first record, committed offsets) through its own small client, every ``interval`` seconds, or
at most every ``min_interval`` after an observation shows the consumer moved, so a cleared lag reads 0
within about a second. End offsets are the last stable offset under ``read_committed`` (librdkafka honours
``isolation.level``), so an open transaction is not counted as lag.

**Transaction markers**: a transaction ends with a control record the consumer never returns, and an
aborted transaction's records are skipped; librdkafka steps the position over them while serving a poll.
When a batch ends exactly on a transaction's last record, the positions committed with it stop short and
only the next poll moves on, so ``update()`` belongs after empty polls too: a loop that observed only at
commits would show those skipped offsets as lag on an idle partition until its next commit.
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

    With a ``resolution``, a sample that came less than ``resolution`` seconds after the one before it is
    replaced by the next sample instead of kept: refreshes brought forward by a moving consumer then keep
    the table's span at about ``capacity * resolution`` seconds, while the newest sample is always the
    latest end offset. The estimate's error grows by at most the resolution.
    """

    def __init__(self, capacity: int = 360, resolution: float = 0.0) -> None:
        self._samples: deque[Sample] = deque(maxlen=max(3, capacity))
        self.resolution = resolution

    def add(self, end_offset: int, at: float) -> None:
        samples = self._samples
        if samples and end_offset < samples[-1][0]:
            samples.clear()  # topic recreated or truncated: the old table describes another log
        if len(samples) >= 2 and (
            (samples[-1][0] == end_offset and samples[-2][0] == end_offset)
            or samples[-1][1] - samples[-2][1] < self.resolution
        ):
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

    The thread that polls the consumer feeds it: ``observe(positions)`` after each commit (the positions
    it committed), ``update()`` after any other poll. ``start()`` runs the broker side every ``interval``
    seconds on a daemon thread, sooner (at most every ``min_interval``) after the consumer moved;
    ``refresh()`` observes and computes once, now, on the calling thread; ``close()`` stops it and removes
    this group's series. Until the first observation nothing is exported: only the polling thread knows
    the assignment.
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
        # The latest positions the polling thread handed over, replaced whole (one reference store, so the
        # background thread reads a consistent snapshot without a lock on the hot path).
        self._observed: dict[tuple[str, int], int] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_refresh = 0.0
        self._started_at = time.monotonic()
        self._warned_unobserved = False
        self.last: list[PartitionLag] = []

    # -- fed by the thread that polls the consumer ------------------------------------------------------

    def observe(self, positions: Sequence[TopicPartition]) -> None:
        """Hand over the consumer's positions on its whole assignment (e.g. the list just sent with the
        transaction's offsets). Call it from the thread that polls the consumer; never blocks."""
        snapshot = {(tp.topic, tp.partition): tp.offset for tp in positions}
        moved = snapshot != self._observed
        self._observed = snapshot
        if moved:
            self._wake.set()  # the thread keeps refreshes ``min_interval`` apart

    def update(self) -> None:
        """Observe the consumer's current positions (a local call, no broker round trip). Call it from the
        thread that polls the consumer, after a poll that did not end in :meth:`observe` — an empty poll
        too: that is when librdkafka steps over a transaction's commit marker."""
        if self.consumer.closed:
            return
        try:
            positions = self.consumer.position()
        except (KafkaException, RuntimeError):  # consumer closing under us during shutdown
            return
        self.observe(positions)

    # -- running ------------------------------------------------------------------------------------

    def start(self) -> ConsumerLagTracker:
        if self._thread is None:
            self._started_at = time.monotonic()
            self._thread = threading.Thread(target=self._run, name=f"lag-{self.group}", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._compute()
            except Exception:
                log.exception("consumer lag refresh failed", extra={"group": self.group})
            woken = self._wake.wait(self.interval)
            self._wake.clear()
            if woken:
                # Brought forward by an observation: still at most one round of broker calls per
                # min_interval, however often the loop commits.
                delay = self._last_refresh + self.min_interval - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)

    # -- computing ----------------------------------------------------------------------------------

    def refresh(self) -> list[PartitionLag]:
        """Observe the consumer's positions and compute the lag of every assigned partition now, on the
        calling thread (which must be the one polling the consumer)."""
        if self.consumer.closed:
            return []
        try:
            self._observed = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position()}
        except (KafkaException, RuntimeError):  # consumer closed under us during shutdown
            return []
        return self._compute()

    def _compute(self) -> list[PartitionLag]:
        """Lag of the observed positions against the end offsets asked of the broker now; exported."""
        with self._lock:
            self._last_refresh = time.monotonic()
            if self.consumer.closed:  # shutting down: the owner is past its last poll
                return []
            observed = self._observed
            if observed is None:
                self._warn_if_never_observed()
                return []
            positions = [
                TopicPartition(topic, partition, offset) for (topic, partition), offset in observed.items()
            ]
            starts = self._start_offsets(positions)
            now = self._clock()
            result: list[PartitionLag] = []
            for tp in positions:
                if self._stop.is_set():  # closing: with the broker away each ask below can take `timeout`
                    return []
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
                    history = self._histories[key] = OffsetHistory(self._history_capacity, self.interval)
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

    def _warn_if_never_observed(self) -> None:
        # A service that never feeds the tracker exports no lag at all; say so once, after a grace period
        # long enough for the first assignment and a state restore.
        waited = time.monotonic() - self._started_at
        if not self._warned_unobserved and self._thread is not None and waited > max(60.0, 3 * self.interval):
            self._warned_unobserved = True
            log.warning(
                "no consumer positions observed yet: call tracker.update() or observe() from the poll loop",
                extra={"group": self.group, "waited_seconds": round(waited)},
            )

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
