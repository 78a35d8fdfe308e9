"""Threshold events at 80, 90 and 100 % of a plan limit fire once each, even across restarts."""

from __future__ import annotations

from decimal import Decimal

from tests.integration.metering.harness import Metering, usage_event, wait_for


def test_threshold_events_fire_once_each_per_period_even_after_a_restart(metering: Metering):
    c = metering.customer("free")  # api_requests: 1000 per period, hard limit
    other = metering.customer("free")
    first = metering.start(instance_id="agg-t1")
    metering.send(usage_event(c) for _ in range(799))
    wait_for(lambda: metering.period_total(c) == (Decimal(799), 799))
    assert metering.thresholds() == []
    metering.send(usage_event(c) for _ in range(2))  # crosses 80 %
    metering.send(usage_event(c) for _ in range(100))  # crosses 90 %
    wait_for(lambda: [t["threshold_percent"] for t in metering.thresholds()] == [80, 90])
    first.close()
    metering.start(instance_id="agg-t2")
    metering.send(usage_event(c) for _ in range(150))  # crosses 100 %, then more
    metering.send(usage_event(other) for _ in range(1000))  # 80, 90, 100 at once for the other one
    wait_for(lambda: metering.period_total(c) == (Decimal(1051), 1051))
    wait_for(lambda: metering.period_total(other) == (Decimal(1000), 1000))
    events = metering.thresholds()
    assert [t["threshold_percent"] for t in events if t["customer_id"] == c] == [80, 90, 100]
    assert [t["threshold_percent"] for t in events if t["customer_id"] == other] == [80, 90, 100]
    hundred = next(t for t in events if t["customer_id"] == c and t["threshold_percent"] == 100)
    assert hundred["plan"] == "free"
    assert hundred["hard_limit"] is True
    assert hundred["limit"] == Decimal(1000)
    assert hundred["usage"] >= Decimal(1000)
    assert hundred["upgrade"]["code"] == "usage_limit_exceeded"
    assert hundred["upgrade"]["suggested_plan"] == "pro"
    assert hundred["event_id"].endswith("|100")
