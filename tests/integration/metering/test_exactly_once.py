"""The aggregator on the real stack: each unique event counted exactly once, into every window."""

from __future__ import annotations

from decimal import Decimal

from .harness import Metering, usage_event, wait_for


def test_duplicate_events_are_counted_once(metering: Metering):
    customer = metering.customer("pro")
    events = [usage_event(customer) for _ in range(50)]
    metering.send(events + events[:20])  # 20 duplicates in the same stream
    metering.start()
    wait_for(lambda: metering.period_total(customer) == (Decimal(50), 50), what="50 unique events")
    metering.send(events[10:30])  # re-sent later, after they were committed
    metering.send([usage_event(customer)])
    wait_for(lambda: metering.period_total(customer) == (Decimal(51), 51), what="51 unique events")
