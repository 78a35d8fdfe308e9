"""The sink that fills the store from ``usage-events-enriched`` (and ``entitlement-events``' plan-limit
crossings), exactly once.

Exactly once without a transaction spanning Kafka and the store: the store is the source of truth for
where to resume. Each batch is one ``INSERT`` (one part, atomic) whose rows carry their partition and
offset; then the batch's next offsets are saved in the store (they matter only when the batch's last
records wrote no row). On assignment, and after any failed batch, the loop asks :meth:`stored_offsets` and
drops every redelivered record below them — so a crash anywhere (before the insert, between the insert
and the Kafka commit, after it) neither loses nor repeats a row. The insert's deduplication token (the
batch's offset ranges) also drops a retried insert of the same batch on the engine's side.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from services.analytics.model import dedup_token, limit_hit_row, row_of
from services.analytics.store import AnalyticsStore, StoreError
from services.kernel import metrics
from services.kernel.kafka import TopicPartition
from services.kernel.privacy import Erasure
from services.kernel.processing import Batch, Emit, RetryBatch, SinkHandler

log = logging.getLogger(__name__)

ROWS = metrics.counter(
    "plg_analytics_rows", "Enriched events written to the analytics store, by outcome.", ("outcome",)
)
FRESHNESS = metrics.gauge(
    "plg_analytics_freshness_seconds",
    "Seconds between the newest stored event's enrichment and its insert into the store (last batch).",
)


def analytics_consented(event: Mapping[str, Any]) -> bool:
    """False when the event says its person refused analytics (``consent.analytics`` false): such events
    are metered and billed, never kept for analytics."""
    consent = event.get("consent")
    if isinstance(consent, Mapping):
        return consent.get("analytics") is not False
    return True


class Erased:
    """The erasure requests read from ``privacy-erasures``, by customer: an event of an erased person from
    before the request is never stored (a replay of ``usage-events-enriched`` cannot bring the person
    back); the same person's later events start a new history."""

    def __init__(self) -> None:
        self._by_customer: dict[str, list[Erasure]] = {}
        self._lock = threading.Lock()

    def add(self, erasure: Erasure) -> None:
        with self._lock:
            self._by_customer.setdefault(erasure.customer_id, []).append(erasure)

    def covers(self, event: Mapping[str, Any]) -> bool:
        erasures = self._by_customer.get(event["customer_id"])
        if not erasures:
            return False
        when = int(event.get("timestamp") or 0)
        ids = [event.get(f) for f in ("person_id", "resolved_user_id", "user_id", "anonymous_id")]
        return any(when <= e.requested_at and any(e.matches(i) for i in ids) for e in erasures)


class AnalyticsSink(SinkHandler):
    """Enriched events → ``plg_analytics.events``; offsets kept in the store."""

    def __init__(
        self,
        store: AnalyticsStore,
        group: str,
        erased: Erased | None = None,
        erasures_ready: Callable[[], bool] = lambda: True,
        limit_topic: str | None = None,
    ) -> None:
        self.store = store
        # Records of this topic (entitlement-events, prefixed) are limit hits, every other one an event.
        self.limit_topic = limit_topic
        self.group = group
        self.erased = erased or Erased()
        self.erasures_ready = erasures_ready
        self._inserted = ROWS.labels("inserted")
        self._no_consent = ROWS.labels("no_analytics_consent")
        self._duplicates = ROWS.labels("duplicate_event_id")
        self._erased = ROWS.labels("erased_person")

    def process(self, batch: Batch, out: Emit) -> None:
        if not self.erasures_ready():
            raise RetryBatch("privacy-erasures is still being read: an erased person must not be stored")
        rows: list[dict[str, Any]] = []
        hits: list[dict[str, Any]] = []
        firsts: dict[tuple[str, int], int] = {}
        newest_enriched = 0
        for message in batch:
            event = message.value
            firsts.setdefault((message.topic, message.partition), message.offset)
            if event is None:
                continue
            if message.topic == self.limit_topic:
                hits.append(limit_hit_row(event, message.topic, message.partition, message.offset))
                continue
            if not analytics_consented(event):
                self._no_consent.inc()
                continue
            if self.erased.covers(event):
                self._erased.inc()
                continue
            rows.append(row_of(event, message.topic, message.partition, message.offset))
            newest_enriched = max(newest_enriched, int(event.get("enriched_at") or 0))
        try:
            rows = self._new_events(rows)
            token = dedup_token(self.group, batch.next_offsets, firsts)
            self.store.insert_events(rows, token)
            # A crash between the two inserts is safe: each topic's rows live in one table, and resuming
            # reads each table's own newest offsets (the limit hits' topic is redone, the events' skipped).
            self.store.insert_limit_hits(hits, f"{token}:limits")
            self.store.save_offsets(self.group, batch.next_offsets)
        except StoreError as exc:
            # The store is down or refused the batch: redo it (nothing of it counts as done).
            raise RetryBatch(f"analytics store: {exc}") from exc
        self._inserted.inc(len(rows))
        if newest_enriched:
            FRESHNESS.set(max(0.0, time.time() - newest_enriched / 1000))

    def _new_events(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per (customer, event id): a client's retry that reached Kafka twice, or a history file
        imported twice, is stored once (the event id is the client's deduplication key everywhere in plg)."""
        seen = self.store.existing_ids([r["customer_id"] for r in rows], [r["event_id"] for r in rows])
        fresh = []
        for row in rows:
            key = (row["customer_id"], row["event_id"])
            if key in seen:
                self._duplicates.inc()
                continue
            seen.add(key)
            fresh.append(row)
        return fresh

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Mapping[tuple[str, int], int]:
        wanted = {(tp.topic, tp.partition) for tp in partitions}
        try:
            found = self.store.resume_offsets(self.group, sorted({t for t, _ in wanted}))
        except StoreError as exc:
            raise RetryBatch(f"analytics store: {exc}") from exc
        return {key: offset for key, offset in found.items() if key in wanted}
