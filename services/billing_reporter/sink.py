"""The reporter's sink on the kernel's at-least-once loop: ``usage-aggregates`` (read_committed) into the
ledger, with the consumed offsets in the same PostgreSQL transaction (``stored_offsets``), so every
aggregate's effect happens once although Kafka delivers at least once."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from decimal import Decimal

import psycopg

from services.billing_reporter.ledger import Ledger, UsageRow
from services.kernel.kafka import TopicPartition
from services.kernel.processing import Batch, Emit, RetryBatch, SinkHandler

log = logging.getLogger(__name__)

# Besides the reporting window, the period totals are kept: the running invoice reads them.
PERIOD = "BILLING_PERIOD"


class AggregateSink(SinkHandler):
    def __init__(self, ledger: Ledger, plan_interval: float) -> None:
        self.ledger = ledger
        self.tick_interval = plan_interval
        self.keep = {ledger.report_granularity, PERIOD}

    def process(self, batch: Batch, out: Emit) -> None:
        usage: dict[tuple[str, str, str, int], UsageRow] = {}
        for message in batch:
            value = message.value
            # Grouped series (per region...) are parts of the ungrouped one, which carries the total.
            if value is None or value["group"] or value["granularity"] not in self.keep:
                continue
            row = UsageRow(
                customer_id=value["customer_id"],
                meter=value["meter"],
                granularity=value["granularity"],
                window_start=int(value["window_start"]),
                window_end=int(value["window_end"]),
                value=Decimal(value["value"]),
                event_count=int(value["event_count"]),
                updated_at=int(value["updated_at"]),
            )
            # A batch may hold several totals of one window: the last is the latest.
            usage[(row.customer_id, row.meter, row.granularity, row.window_start)] = row
        try:
            self.ledger.apply(list(usage.values()), batch.next_offsets)
        except psycopg.Error as exc:
            raise RetryBatch(f"ledger unavailable: {exc}") from exc

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Mapping[tuple[str, int], int]:
        return self.ledger.stored_offsets((tp.topic, tp.partition) for tp in partitions)

    def tick(self, out: Emit) -> None:
        try:
            self.ledger.plan()
        except psycopg.Error:
            log.exception("planning closed windows failed; next tick retries")
