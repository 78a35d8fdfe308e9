"""Every aggregation counts unique events exactly, into minute, hour, day and billing-period windows."""

from __future__ import annotations

from decimal import Decimal

from services.metering_aggregator.model import (
    DUPLICATE,
    FUTURE_EVENT,
    INVALID_METER_VALUE,
    LATE_EVENT,
    UNKNOWN_CUSTOMER,
    UNMETERED,
    PartitionState,
    Rules,
)
from services.metering_aggregator.values import nanounits_to_decimal
from services.plans.periods import DAY_MS, HOUR_MS, MINUTE_MS, Granularity

from .conftest import NOW, customer, event


def totals(
    state: PartitionState, meter: str, granularity: Granularity = Granularity.BILLING_PERIOD, group: str = ""
) -> dict[int, tuple[Decimal, int]]:
    return {
        w.start_ms: (nanounits_to_decimal(w.value), w.event_count)
        for w in state.windows()
        if w.series.meter.slug == meter and w.granularity is granularity and w.series.group == group
    }


def test_count_counts_each_event_once_in_every_granularity(state):
    acme = customer()
    for i in range(5):
        assert state.apply(event(ts=NOW + i * 1000), NOW, acme) is None
    for g in Granularity:
        assert list(totals(state, "api_requests", g).values()) == [(Decimal(5), 5)]


def test_a_duplicate_event_id_is_counted_once_even_much_later(state):
    acme = customer()
    first = event(event_id="e-1")
    assert state.apply(first, NOW, acme) is None
    rejection = state.apply(dict(first), NOW + 10 * MINUTE_MS, acme)
    assert rejection is not None
    assert rejection.code == DUPLICATE
    assert not rejection.dead_letter
    assert list(totals(state, "api_requests").values()) == [(Decimal(1), 1)]
    assert state.duplicates == 1


def test_the_same_event_id_from_two_customers_is_two_events(state):
    assert state.apply(event(event_id="same"), NOW, customer("a")) is None
    assert state.apply(event(event_id="same", customer_id="b"), NOW, customer("b")) is None


def test_sum_is_exact_and_grouped_series_keep_the_total_too(state):
    acme = customer()
    for region, seconds in (("eu", 0.1), ("eu", 0.2), ("us", 1), ("us", "2.5")):
        assert state.apply(event("job_completed", duration_seconds=seconds, region=region), NOW, acme) is None
    assert list(totals(state, "compute_seconds").values()) == [(Decimal("3.8"), 4)]
    assert list(totals(state, "compute_seconds", group="region=eu").values()) == [(Decimal("0.3"), 2)]
    assert list(totals(state, "compute_seconds", group="region=us").values()) == [(Decimal("3.5"), 2)]
    w = next(w for w in state.windows() if w.series.group == "region=us")
    assert w.series.group_values == {"region": "us"}


def test_max_keeps_the_peak(state):
    acme = customer()
    for gb in (3, 7.5, 2):
        state.apply(event("storage_measured", gb=gb), NOW, acme)
    assert list(totals(state, "storage_gb").values()) == [(Decimal("7.5"), 3)]


def test_max_of_negative_values_is_not_zero(state):
    state.apply(event("storage_measured", gb=-4), NOW, customer())
    assert list(totals(state, "storage_gb").values()) == [(Decimal(-4), 1)]


def test_latest_takes_the_value_with_the_latest_event_time_not_the_last_arrival(state):
    acme = customer()
    state.apply(event("seats_changed", seats=5, ts=NOW + 2000), NOW, acme)
    state.apply(event("seats_changed", seats=9, ts=NOW + 4000), NOW, acme)
    state.apply(event("seats_changed", seats=4, ts=NOW + 3000), NOW, acme)  # arrives last, older
    assert list(totals(state, "seats").values()) == [(Decimal(9), 3)]
    assert list(totals(state, "seats", Granularity.MINUTE).values()) == [(Decimal(9), 3)]


def test_unique_count_counts_distinct_values(state):
    acme = customer()
    for user in ("u1", "u2", "u1", "u3", "u2"):
        state.apply(event(user_id=user), NOW, acme)
    assert list(totals(state, "api_users").values()) == [(Decimal(3), 5)]
    assert list(totals(state, "api_requests").values()) == [(Decimal(5), 5)]


def test_events_roll_up_from_minutes_to_hours_days_and_the_billing_period(state):
    acme = customer(anchor_day=15)
    times = [NOW, NOW + MINUTE_MS, NOW + HOUR_MS, NOW + DAY_MS - HOUR_MS]
    for ts in times:
        state.apply(event(ts=ts), ts, acme)
    assert len(totals(state, "api_requests", Granularity.MINUTE)) == 4
    assert len(totals(state, "api_requests", Granularity.HOUR)) == 3
    assert sorted(c for _, c in totals(state, "api_requests", Granularity.DAY).values()) == [1, 3]
    assert list(totals(state, "api_requests").values()) == [(Decimal(4), 4)]


def test_billing_period_windows_follow_the_customer_anchor(state):
    from services.plans.periods import billing_period

    a15 = customer("a15", anchor_day=15)
    state.apply(event(customer_id="a15"), NOW, a15)
    (start,) = totals(state, "api_requests").keys()
    assert start == billing_period(NOW, 15).start_ms
    w = next(w for w in state.windows() if w.granularity is Granularity.BILLING_PERIOD)
    assert w.end_ms == billing_period(NOW, 15).end_ms


def test_late_events_within_grace_count_and_beyond_grace_are_dead_lettered(config):
    state = PartitionState(0, config, Rules(grace_ms=HOUR_MS, dedup_horizon_ms=DAY_MS))
    acme = customer()
    assert state.apply(event(ts=NOW - HOUR_MS + 1000), NOW, acme) is None
    late = state.apply(event(ts=NOW - HOUR_MS - 1), NOW, acme)
    assert late is not None
    assert late.code == LATE_EVENT
    assert late.dead_letter
    assert "grace" in late.message


def test_events_from_the_far_future_are_dead_lettered(state):
    rejection = state.apply(event(ts=NOW + 10 * MINUTE_MS), NOW, customer())
    assert rejection is not None
    assert rejection.code == FUTURE_EVENT


def test_a_late_duplicate_of_a_counted_event_is_a_duplicate_not_a_dead_letter(state):
    acme = customer()
    state.apply(event(event_id="x", ts=NOW), NOW, acme)
    again = state.apply(event(event_id="x", ts=NOW), NOW + 2 * HOUR_MS, acme)
    assert again is not None
    assert again.code == DUPLICATE


def test_unknown_customers_and_bad_values_are_dead_lettered_and_nothing_is_counted(state):
    r = state.apply(event(), NOW, None)
    assert r is not None
    assert r.code == UNKNOWN_CUSTOMER
    r = state.apply(event("job_completed", duration_seconds="lots"), NOW, customer())
    assert r is not None
    assert r.code == INVALID_METER_VALUE
    assert "compute_seconds" in r.message
    # api_call_made without a user: the UNIQUE_COUNT meter has no value, so the COUNT is not applied either.
    r = state.apply(event(user_id=None, event_id="no-user"), NOW, customer())
    assert r is not None
    assert r.code == INVALID_METER_VALUE
    assert state.window_count() == 0
    # Not remembered as seen: a corrected resend with the same id counts.
    assert state.apply(event(event_id="no-user"), NOW, customer()) is None


def test_events_no_meter_counts_are_ignored_and_counted_in_a_metric(state):
    r = state.apply(event("page_viewed"), NOW, customer())
    assert r is not None
    assert r.code == UNMETERED
    assert not r.dead_letter
    assert state.unmetered == 1
    assert state.window_count() == 0


def test_lateness_is_judged_on_arrival_in_kafka_so_a_backlog_counts_as_it_would_have_live(config):
    # The aggregator was down for three hours: the events arrived in Kafka on time, and are counted now.
    state = PartitionState(0, config, Rules(grace_ms=HOUR_MS, dedup_horizon_ms=DAY_MS))
    acme = customer()
    arrived = NOW - 3 * HOUR_MS
    assert state.apply(event(ts=arrived - 10 * MINUTE_MS), arrived, acme) is None
    late = state.apply(event(ts=arrived - 2 * HOUR_MS), arrived, acme)
    assert late is not None
    assert late.code == LATE_EVENT
    assert "arrival" in late.message


def test_the_clock_never_goes_back_so_an_old_arrival_cannot_smuggle_in_a_late_event(config):
    state = PartitionState(0, config, Rules(grace_ms=HOUR_MS, dedup_horizon_ms=DAY_MS))
    acme = customer()
    assert state.apply(event(ts=NOW), NOW, acme) is None
    # A producer whose clock is three hours behind: its record does not move the partition's clock back.
    late = state.apply(event(ts=NOW - 3 * HOUR_MS), NOW - 3 * HOUR_MS, acme)
    assert late is not None
    assert late.code == LATE_EVENT
    assert state.clock_ms == NOW


def test_dedup_stays_exact_when_a_duplicate_arrives_after_its_id_was_evicted(config):
    rules = Rules(grace_ms=HOUR_MS, dedup_horizon_ms=2 * HOUR_MS)
    state = PartitionState(0, config, rules)
    acme = customer()
    assert state.apply(event(event_id="e1", ts=NOW), NOW, acme) is None
    state.advance_clock(NOW + 2 * HOUR_MS + 5 * MINUTE_MS)
    state.evict()
    assert not state.dedup.seen  # forgotten ...
    # ... so a re-send, even one whose record carries an old timestamp, is judged late, never counted again.
    again = state.apply(event(event_id="e1", ts=NOW), NOW + MINUTE_MS, acme)
    assert again is not None
    assert again.code == LATE_EVENT
    assert list(totals(state, "api_requests").values()) == [(Decimal(1), 1)]


def test_eviction_follows_the_partitions_clock_not_the_processing_hosts(config):
    state = PartitionState(0, config, Rules(grace_ms=HOUR_MS, dedup_horizon_ms=DAY_MS))
    assert state.apply(event(event_id="e1", ts=NOW), NOW, customer()) is None
    assert state.evict() == []  # however late the host thinks it is, no record has arrived since
    assert state.window_count() == 8
    assert state.dedup.contains("acme", "e1")
