"""Current billing-period usage of every customer, from ``usage-periods``, on the kernel's view reader.

The kernel's :class:`~services.kernel.processing.view.MaterializedView` reads the whole compacted topic
(``read_committed``, every partition, from the beginning) and follows it; this module keeps, per customer
and meter, the running total of the last few billing periods. Only ``BILLING_PERIOD`` records of the
ungrouped series matter here; the others are skipped by their key, without decoding. Until the view has
caught up, the API refuses meter checks rather than answer from a partial view.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal

from services.kernel import metrics
from services.kernel.processing.messages import Message
from services.kernel.processing.view import MaterializedView
from services.kernel.serde import ValueDecoder
from services.kernel.settings import KafkaSettings

VIEW_LAG = metrics.histogram(
    "plg_entitlements_view_lag_seconds",
    "From the aggregate's commit (updated_at) to it being visible in this replica's view.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

USAGE_SERIES = metrics.gauge(
    "plg_entitlements_usage_series",
    "(customer, meter) series whose period totals the view holds (at most ENTITLEMENTS_PERIODS_KEPT periods "
    "each; bounded by the customers table times the meters of the plans file).",
)

# Keys are ``customer|meter|granularity|window_start|group key``; the ungrouped series has an empty group
# key, so its keys end with "|".
_PERIOD_MARK = b"|BILLING_PERIOD|"
ZERO = Decimal(0)


def is_period_total(key: bytes | None) -> bool:
    """The key of an ungrouped billing-period total (the only records the view needs)."""
    return key is not None and key.endswith(b"|") and _PERIOD_MARK in key


class UsageTotals:
    """(customer, meter) → {period start: total}, the last ``periods_kept`` periods of each."""

    def __init__(self, periods_kept: int = 3, clock: Callable[[], float] = time.time) -> None:
        self.periods_kept = periods_kept
        self.clock = clock
        self._usage: dict[tuple[str, str], dict[int, Decimal]] = {}
        metrics.track_size(USAGE_SERIES, self, len)

    def __len__(self) -> int:
        return len(self._usage)

    def usage(self, customer_id: str, meter: str, period_start_ms: int) -> Decimal:
        """The meter's total in that period (0 when nothing was metered in it yet)."""
        periods = self._usage.get((customer_id, meter))
        if periods is None:
            return ZERO
        return periods.get(period_start_ms, ZERO)

    def recorded(self, customer_id: str, meter: str, period_starts: list[int]) -> list[Decimal]:
        """The meter's totals of those periods that have one, in the given order (a multi-month usage
        period's months: LATEST takes the last month that had usage, as the invoice does)."""
        periods = self._usage.get((customer_id, meter))
        if periods is None:
            return []
        return [periods[start] for start in period_starts if start in periods]

    def apply(self, message: Message) -> None:
        """Fold one period total in; a tombstone (the aggregator dropped the key) removes it."""
        key = message.key
        assert key is not None  # the view's key filter lets only period totals through
        customer, meter, _, start = key[:-1].decode().split("|")
        series = (customer, meter)
        period_start = int(start)
        record = message.value
        if record is None:
            periods = self._usage.get(series)
            if periods is not None:
                periods.pop(period_start, None)
                if not periods:
                    del self._usage[series]
            return
        periods = self._usage.get(series)
        if periods is None:
            periods = self._usage[series] = {}
        periods[period_start] = record["value"]
        if len(periods) > self.periods_kept:
            del periods[min(periods)]
        VIEW_LAG.observe(max(0.0, self.clock() - record["updated_at"] / 1000))


class UsageView:
    """The usage totals, kept current from the topic by the kernel's view reader."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        decoder: ValueDecoder,
        periods_kept: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.totals = UsageTotals(periods_kept, clock)
        self.reader = MaterializedView(
            kafka, topic, decoder, self.totals.apply, name="usage-view", key_filter=is_period_total
        )
        self.usage = self.totals.usage
        self.recorded = self.totals.recorded

    @property
    def ready(self) -> threading.Event:
        return self.reader.ready

    def healthy(self) -> bool:
        return self.reader.healthy()

    def start(self) -> UsageView:
        self.reader.start()
        return self

    def close(self) -> None:
        self.reader.close()
