"""Billing periods anchored on a day of the month, in UTC, across month ends and leap years."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.plans.periods import (
    DAY_MS,
    Granularity,
    billing_period,
    datetime_to_ms,
    ms_to_datetime,
    window,
)


def ms(*args: int) -> int:
    return datetime_to_ms(datetime(*args, tzinfo=UTC))  # type: ignore[misc]


def period(at: int, anchor: int) -> tuple[datetime, datetime]:
    p = billing_period(at, anchor)
    return ms_to_datetime(p.start_ms), ms_to_datetime(p.end_ms)


def d(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_anchor_on_the_first_gives_calendar_months():
    assert period(ms(2025, 3, 15, 12), 1) == (d(2025, 3, 1), d(2025, 4, 1))


def test_the_period_starts_at_midnight_utc_on_the_anchor_day():
    assert period(ms(2025, 3, 15, 0, 0, 0), 15) == (d(2025, 3, 15), d(2025, 4, 15))
    # One millisecond earlier still belongs to the previous period (half-open intervals).
    assert period(ms(2025, 3, 15) - 1, 15) == (d(2025, 2, 15), d(2025, 3, 15))


def test_anchor_31_clamps_to_short_months_and_returns_to_31():
    assert period(ms(2025, 2, 10), 31) == (d(2025, 1, 31), d(2025, 2, 28))
    assert period(ms(2025, 2, 28), 31) == (d(2025, 2, 28), d(2025, 3, 31))
    assert period(ms(2025, 4, 30, 23), 31) == (d(2025, 4, 30), d(2025, 5, 31))


def test_leap_years_clamp_to_february_29():
    assert period(ms(2024, 2, 29, 5), 30) == (d(2024, 2, 29), d(2024, 3, 30))
    assert period(ms(2024, 2, 28, 23, 59), 29) == (d(2024, 1, 29), d(2024, 2, 29))
    assert period(ms(2024, 2, 29), 29) == (d(2024, 2, 29), d(2024, 3, 29))
    # 2100 is not a leap year (divisible by 100, not by 400); 2000 was.
    assert period(ms(2100, 2, 28, 1), 29) == (d(2100, 2, 28), d(2100, 3, 29))
    assert period(ms(2000, 2, 29, 1), 29) == (d(2000, 2, 29), d(2000, 3, 29))


def test_periods_cross_the_year_end():
    assert period(ms(2024, 12, 31, 23, 59, 59), 15) == (d(2024, 12, 15), d(2025, 1, 15))
    assert period(ms(2025, 1, 3), 15) == (d(2024, 12, 15), d(2025, 1, 15))


@pytest.mark.parametrize("anchor", [1, 15, 28, 29, 30, 31])
def test_consecutive_periods_tile_time_without_gaps_or_overlaps(anchor: int):
    at = ms(2023, 11, 1)
    previous = billing_period(at, anchor)
    for _ in range(30):
        nxt = billing_period(previous.end_ms, anchor)
        assert nxt.start_ms == previous.end_ms
        assert 28 * DAY_MS <= nxt.end_ms - nxt.start_ms <= 31 * DAY_MS
        assert billing_period(nxt.end_ms - 1, anchor) == nxt
        previous = nxt


def test_bad_anchor_days_are_refused():
    with pytest.raises(ValueError, match=r"1\.\.31"):
        billing_period(0, 0)
    with pytest.raises(ValueError, match=r"1\.\.31"):
        billing_period(0, 32)


def test_minute_hour_and_day_windows_nest_inside_the_billing_period():
    at = ms(2024, 2, 29, 23, 59, 30) + 123
    minute = window(at, Granularity.MINUTE)
    hour = window(at, Granularity.HOUR)
    day = window(at, Granularity.DAY)
    bp = window(at, Granularity.BILLING_PERIOD, anchor_day=10)
    assert (minute.start, minute.end) == (d(2024, 2, 29, 23, 59), d(2024, 3, 1))
    assert (hour.start, day.start) == (d(2024, 2, 29, 23), d(2024, 2, 29))
    assert bp.start_ms <= day.start_ms < day.end_ms <= bp.end_ms
    assert hour.start_ms <= minute.start_ms
    assert minute.end_ms <= hour.end_ms <= day.end_ms


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="naive"):
        datetime_to_ms(datetime(2025, 1, 1))
