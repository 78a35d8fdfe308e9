"""Consumer lag in seconds, estimated from a table of (end offset, time) samples."""

from __future__ import annotations

import pytest

from services.kernel.lag import OffsetHistory, compute_partition_lag, estimate_lag_seconds


def test_a_caught_up_consumer_has_no_lag() -> None:
    samples = [(100, 10.0), (150, 20.0)]

    assert estimate_lag_seconds(samples, 150, now=30.0) == 0.0
    assert estimate_lag_seconds(samples, 160, now=30.0) == 0.0


def test_no_samples_means_no_estimate() -> None:
    assert estimate_lag_seconds([], 5, now=100.0) == 0.0


def test_lag_is_interpolated_between_the_samples_around_the_position() -> None:
    # End offset went 100 -> 200 between t=10 and t=20: the record at 149 (end offset 150) appeared at t=15.
    samples = [(100, 10.0), (200, 20.0)]

    assert estimate_lag_seconds(samples, 149, now=30.0) == pytest.approx(15.0)


def test_a_burst_after_an_idle_period_dates_from_the_end_of_the_idle_period() -> None:
    # Idle at end offset 100 from t=0 to t=50, then 10 records appeared before t=60.
    samples = [(100, 0.0), (100, 50.0), (110, 60.0)]

    lag = estimate_lag_seconds(samples, 100, now=70.0)

    # The record at 100 was written after t=50 and by t=60; interpolation puts it at t=51.
    assert lag == pytest.approx(19.0)
    assert 10.0 <= lag <= 20.0


def test_a_position_older_than_the_table_is_extrapolated_at_the_observed_rate() -> None:
    # 10 records/s observed; the record at 49 (end offset 50) is 50 records before the table starts.
    samples = [(100, 100.0), (200, 110.0)]

    assert estimate_lag_seconds(samples, 49, now=110.0) == pytest.approx(15.0)


def test_a_position_older_than_an_idle_table_is_at_least_as_old_as_the_table() -> None:
    samples = [(100, 100.0), (100, 130.0)]

    assert estimate_lag_seconds(samples, 40, now=140.0) == pytest.approx(40.0)


def test_lag_seconds_grow_while_the_consumer_stands_still() -> None:
    samples = [(0, 0.0), (10, 1.0)]

    assert estimate_lag_seconds(samples, 0, now=5.0) < estimate_lag_seconds(samples, 0, now=9.0)


def test_history_keeps_only_the_ends_of_an_idle_run() -> None:
    history = OffsetHistory()
    for t in range(10):
        history.add(100, float(t))
    history.add(120, 10.0)

    assert history.samples == [(100, 0.0), (100, 9.0), (120, 10.0)]


def test_history_is_bounded() -> None:
    history = OffsetHistory(capacity=5)
    for i in range(20):
        history.add(i, float(i))

    assert history.samples == [(i, float(i)) for i in range(15, 20)]


def test_history_restarts_when_the_end_offset_goes_backwards() -> None:
    history = OffsetHistory()
    history.add(100, 1.0)
    history.add(5, 2.0)  # topic deleted and recreated

    assert history.samples == [(5, 2.0)]


def test_partition_lag_counts_messages_and_seconds() -> None:
    lag = compute_partition_lag(
        "t", 0, position=90, end_offset=100, low_offset=0, history=[(80, 0.0), (100, 10.0)], now=20.0
    )

    assert (lag.lag_messages, lag.position) == (10, 90)
    assert lag.lag_seconds == pytest.approx(14.5)


def test_a_consumer_without_position_counts_from_the_log_start_when_reading_from_earliest() -> None:
    lag = compute_partition_lag(
        "t",
        0,
        position=-1001,
        end_offset=30,
        low_offset=10,
        history=[(30, 0.0)],
        now=5.0,
        reset_to_earliest=True,
    )

    assert lag.lag_messages == 20
    assert lag.lag_seconds == pytest.approx(5.0)


def test_a_consumer_without_position_reading_from_latest_has_no_lag() -> None:
    lag = compute_partition_lag(
        "t",
        0,
        position=-1001,
        end_offset=30,
        low_offset=10,
        history=[(30, 0.0)],
        now=5.0,
        reset_to_earliest=False,
    )

    assert (lag.lag_messages, lag.lag_seconds) == (0, 0.0)
