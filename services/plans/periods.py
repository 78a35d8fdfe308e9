"""Billing-period and window arithmetic in UTC: pure functions over epoch milliseconds.

A customer's billing period starts at 00:00 UTC on their anchor day (1-31) of each month; in a month that
is too short the period starts on its last day instead, and the next month returns to the anchor day
(anchor 31: Jan 31 -> Feb 29 -> Mar 31 -> Apr 30, the way Stripe anchors subscriptions). Periods are
half-open ``[start, end)`` intervals, so every instant belongs to exactly one period.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
_EPOCH = date(1970, 1, 1)


class Granularity(StrEnum):
    """Window sizes, finest first; the names are the Avro ``WindowGranularity`` symbols."""

    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    BILLING_PERIOD = "BILLING_PERIOD"


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open interval of epoch milliseconds."""

    start_ms: int
    end_ms: int

    def contains(self, at_ms: int) -> bool:
        return self.start_ms <= at_ms < self.end_ms

    @property
    def start(self) -> datetime:
        return ms_to_datetime(self.start_ms)

    @property
    def end(self) -> datetime:
        return ms_to_datetime(self.end_ms)


def ms_to_datetime(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def datetime_to_ms(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("naive datetime: billing maths is in UTC, pass an aware datetime")
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * DAY_MS) + (delta.seconds * 1000) + (delta.microseconds // 1000)


def _date_to_ms(d: date) -> int:
    return (d - _EPOCH).days * DAY_MS


def period_start_in_month(year: int, month: int, anchor_day: int) -> date:
    """The day a period starts in the given month: the anchor day, clamped to the month's last day."""
    return date(year, month, min(anchor_day, calendar.monthrange(year, month)[1]))


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


@lru_cache(maxsize=65_536)
def _period_for_day(day_index: int, anchor_day: int) -> Period:
    # Cached per (UTC day, anchor): the hot path asks for the same few days over and over.
    day = _EPOCH + timedelta(days=day_index)
    year, month = day.year, day.month
    start = period_start_in_month(year, month, anchor_day)
    if day < start:
        year, month = _previous_month(year, month)
        start = period_start_in_month(year, month, anchor_day)
    ny, nm = _next_month(year, month)
    end = period_start_in_month(ny, nm, anchor_day)
    return Period(_date_to_ms(start), _date_to_ms(end))


def billing_period(at_ms: int, anchor_day: int) -> Period:
    """The billing period of a customer anchored on ``anchor_day`` that contains ``at_ms``."""
    if not 1 <= anchor_day <= 31:
        raise ValueError(f"billing anchor day must be 1..31, got {anchor_day}")
    return _period_for_day(at_ms // DAY_MS, anchor_day)


def window(at_ms: int, granularity: Granularity, anchor_day: int = 1) -> Period:
    """The window of the given granularity containing ``at_ms`` (billing periods need the anchor day)."""
    if granularity is Granularity.MINUTE:
        start = at_ms - at_ms % MINUTE_MS
        return Period(start, start + MINUTE_MS)
    if granularity is Granularity.HOUR:
        start = at_ms - at_ms % HOUR_MS
        return Period(start, start + HOUR_MS)
    if granularity is Granularity.DAY:
        start = at_ms - at_ms % DAY_MS
        return Period(start, start + DAY_MS)
    return billing_period(at_ms, anchor_day)
