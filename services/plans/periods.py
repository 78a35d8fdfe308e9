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


def billing_period(at_ms: int, anchor_day: int, months: int = 1, cycle_month: int = 0) -> Period:
    """The billing period of a customer anchored on ``anchor_day`` that contains ``at_ms``: one month, or
    ``months`` months (an annual or custom billing window) counted from ``cycle_month`` (a
    :func:`month_index`: the month one of the customer's periods started in). A multi-month period is
    exactly ``months`` consecutive monthly periods, so anchor 29 in February gives 2028-02-29 ->
    2029-02-28 -> 2030-02-28 ... -> 2032-02-29, the way Stripe anchors a yearly subscription."""
    if not 1 <= anchor_day <= 31:
        raise ValueError(f"billing anchor day must be 1..31, got {anchor_day}")
    monthly = _period_for_day(at_ms // DAY_MS, anchor_day)
    if months == 1:
        return monthly
    if not 1 <= months <= 36:
        raise ValueError(f"a billing period is 1..36 months, got {months}")
    return _multi_month(monthly.start_ms // DAY_MS, anchor_day, months, cycle_month)


def month_index(day: date) -> int:
    """Months since year 0 (``year * 12 + month - 1``): how multi-month periods are counted."""
    return day.year * 12 + day.month - 1


def _month_start(index: int, anchor_day: int) -> date:
    return period_start_in_month(index // 12, index % 12 + 1, anchor_day)


@lru_cache(maxsize=65_536)
def _multi_month(month_start_day: int, anchor_day: int, months: int, cycle_month: int) -> Period:
    # A monthly period starts inside the month it is named after (the anchor day, clamped), so its start
    # date's month is the period's month.
    index = month_index(_EPOCH + timedelta(days=month_start_day))
    first = index - (index - cycle_month) % months
    start, end = _month_start(first, anchor_day), _month_start(first + months, anchor_day)
    return Period(_date_to_ms(start), _date_to_ms(end))


def usage_periods(period: Period, anchor_day: int) -> list[Period]:
    """The monthly periods a (multi-month) billing period is made of, in order."""
    out: list[Period] = []
    at = period.start_ms
    while at < period.end_ms:
        month = billing_period(at, anchor_day)
        out.append(month)
        at = month.end_ms
    return out


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
