"""Threshold events at 80, 90 and 100 % of a plan limit: each once per customer, meter and period."""

from __future__ import annotations

from decimal import Decimal

from services.metering_aggregator.changelog import encode_value, restore
from services.metering_aggregator.handlers import threshold_record
from services.metering_aggregator.model import PartitionState, ThresholdCrossing, crossed_thresholds
from services.metering_aggregator.values import SCALE, nanounits_to_decimal
from services.plans.periods import DAY_MS, billing_period

from .conftest import NOW, customer, event

UPGRADE = "https://app.example/upgrade"


def run(state: PartitionState, n: int, who, ts: int = NOW, seq: list[int] | None = None) -> list[int]:
    for _ in range(n):
        assert state.apply(event(customer_id=who.customer_id, ts=ts), ts, who) is None
    seq = seq if seq is not None else [0]
    seq[0] += 1
    return [c.percent for c in state.drain(seq[0], lambda _cid: who).thresholds]


def test_crossing_rules():
    assert crossed_thresholds(79, 100, 0) == []
    assert crossed_thresholds(80, 100, 0) == [80]
    assert crossed_thresholds(100, 100, 80) == [90, 100]
    assert crossed_thresholds(150, 100, 100) == []


def test_each_threshold_fires_once_as_usage_grows(state):
    free = customer()  # free: api_requests limit 10, hard
    seq = [0]
    assert run(state, 7, free, seq=seq) == []
    assert run(state, 1, free, seq=seq) == [80]
    assert run(state, 1, free, seq=seq) == [90]
    assert run(state, 1, free, seq=seq) == [100]
    assert run(state, 5, free, seq=seq) == []


def test_a_jump_past_several_thresholds_fires_each_of_them_once(state):
    assert run(state, 12, customer()) == [80, 90, 100]


def test_thresholds_fire_again_in_the_next_billing_period(state):
    free = customer()
    seq = [0]
    assert run(state, 10, free, seq=seq) == [80, 90, 100]
    next_period = billing_period(NOW, 1).end_ms + DAY_MS
    assert run(state, 10, free, ts=next_period, seq=seq) == [80, 90, 100]


def test_unlimited_plans_fire_nothing(state):
    assert run(state, 100, customer(plan="enterprise")) == []


def test_threshold_record_carries_usage_limit_plan_and_upgrade(state, config):
    free = customer()
    for _ in range(10):
        state.apply(event(), NOW, free)
    crossings = state.drain(1, lambda _cid: free).thresholds
    records = [threshold_record(c, NOW, config, UPGRADE) for c in crossings]
    last = records[-1]
    assert last["threshold_percent"] == 100
    assert (last["usage"], last["limit"], last["plan"], last["hard_limit"]) == (
        Decimal(10),
        Decimal(10),
        "free",
        True,
    )
    assert last["upgrade"]["code"] == "usage_limit_exceeded"
    assert last["upgrade"]["suggested_plan"] == "pro"
    assert last["upgrade"]["upgrade_url"].startswith(UPGRADE + "?")
    assert records[0]["upgrade"]["code"] == "usage_limit_approaching"
    assert len({r["event_id"] for r in records}) == 3
    assert last["period_start"] == billing_period(NOW, 1).start_ms


def test_after_an_upgrade_mid_period_the_new_plans_thresholds_fire_too(state, config):
    # seats (LATEST): free allows 3, pro 50. The customer hits free's limit, upgrades, then grows into pro's.
    written: list[tuple[bytes, bytes | None]] = []

    def seats(n: int, who, seq: int) -> list[tuple[int, Decimal]]:
        assert state.apply(event("seats_changed", seats=n), NOW, who) is None
        drained = state.drain(seq, lambda _cid: who)
        written.extend((k, None if v is None else encode_value(v)) for k, v in drained.changelog)
        return [(c.percent, nanounits_to_decimal(c.limit)) for c in drained.thresholds]

    free, pro = customer(plan="free"), customer(plan="pro")
    assert seats(3, free, 1) == [(80, 3), (90, 3), (100, 3)]
    assert seats(10, pro, 2) == []
    assert seats(40, pro, 3) == [(80, 50)]
    # What was fired, and of which limit, survives a restart in the middle.
    restored = PartitionState(0, config, state.rules)
    restore(restored, written)
    assert restored.thresholds == state.thresholds
    state = restored
    assert seats(50, pro, 4) == [(90, 50), (100, 50)]
    assert seats(50, pro, 5) == []  # still once each per limit


def test_threshold_events_of_two_limits_in_one_period_have_different_ids(config):
    def hundred(who, limit: int) -> str:
        crossing = ThresholdCrossing(who, "seats", 100, limit * SCALE, limit * SCALE, True, 0, 1)
        return threshold_record(crossing, NOW, config, UPGRADE)["event_id"]

    assert hundred(customer(plan="free"), 3) != hundred(customer(plan="pro"), 50)
    assert hundred(customer(plan="free"), 3) == hundred(customer(plan="free"), 3)
