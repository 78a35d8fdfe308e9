"""Per-stage pipeline metrics every stream loop exports, for event-loss and processing-delay alerts.

* ``plg_stage_events_total{service,topic}`` — records a stage has settled (processed or dead-lettered)
  in a committed batch, by input topic. Against ``plg_ingest_events_total{outcome="accepted"}`` it gives
  the loss between ingest and each stage (deploy/prometheus/rules/plg.yml, ``plg:stage_loss_ratio``).
  Counted only after the commit, so a batch that is aborted and redone counts once.
* ``plg_stage_delay_seconds{service}`` — for each committed batch, the seconds from ingest's receipt of
  the batch's oldest event (its ``received_at``) to the commit. Measured from the events' own timestamp,
  not from offsets: an idle topic observes nothing (no false lag), a compacted topic's old records carry
  no ``received_at`` of an event in flight, and a backlog shows up as the age of what is being processed.
  One observation per batch (its worst event) keeps the cost off the per-record path.
* ``plg_stage_last_commit_timestamp_seconds{service}`` — when the stage last committed a batch with
  records, so a dashboard can tell "idle" from "stuck" next to the lag gauges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from services.kernel import metrics
from services.kernel.kafka import Record
from services.kernel.processing.messages import Batch, Message

STAGE_EVENTS = metrics.counter(
    "plg_stage_events",
    "Records settled (processed or dead-lettered) by a stream stage in committed batches, by input topic.",
    ("service", "topic"),
)
STAGE_DELAY = metrics.histogram(
    "plg_stage_delay_seconds",
    "Seconds from ingest's receipt (received_at) of a committed batch's oldest event to the batch's commit.",
    ("service",),
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
LAST_COMMIT = metrics.gauge(
    "plg_stage_last_commit_timestamp_seconds",
    "When the stage last committed a batch that had records (Unix seconds).",
    ("service",),
)


class StageMetrics:
    """The three series above for one service; ``settled`` is called after each successful commit."""

    def __init__(self, service: str, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.clock = clock
        self._delay = STAGE_DELAY.labels(service)
        self._last_commit = LAST_COMMIT.labels(service)
        self._counters: dict[str, Any] = {}

    def _counter(self, topic: str) -> Any:
        counter = self._counters.get(topic)
        if counter is None:
            counter = self._counters[topic] = STAGE_EVENTS.labels(self.service, topic)
        return counter

    def settled(
        self, messages: Iterable[Message], failed: Iterable[Message], undecodable: Iterable[Record]
    ) -> None:
        counts: dict[str, int] = {}
        oldest: int | None = None
        # A Batch's plain list: its own iterator tracks the handler's position (for blame), a cost per record.
        plain = messages.messages if isinstance(messages, Batch) else messages
        for group in (plain, failed):
            for message in group:
                record = message.record
                topic: str = record.topic()  # type: ignore[assignment]
                counts[topic] = counts.get(topic, 0) + 1
                value = message.value
                if value is not None:
                    received = value.get("received_at")
                    if received is None:
                        # usage-events carries it in ingest's metadata record (schemas/usage_event.avsc);
                        # usage-events-enriched at the top level. Null for events produced straight to Kafka.
                        meta = value.get("ingest")
                        received = meta.get("received_at") if type(meta) is dict else None
                    if type(received) is int and (oldest is None or received < oldest):
                        oldest = received
        for record in undecodable:
            topic = record.topic()  # type: ignore[assignment]
            counts[topic] = counts.get(topic, 0) + 1
        if not counts:
            return
        for topic, n in counts.items():
            self._counter(topic).inc(n)
        now = self.clock()
        self._last_commit.set(now)
        if oldest is not None:
            self._delay.observe(max(0.0, now - oldest / 1000.0))
