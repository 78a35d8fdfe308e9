"""Retention by window size: which usage-aggregates keys the sweeper tombstones, and the settings' floor."""

from __future__ import annotations

from services.metering_aggregator.config import MeteringSettings
from services.metering_aggregator.retention import RetentionPolicy
from services.plans.periods import DAY_MS, HOUR_MS, MINUTE_MS

NOW = 1_800_000_000_000


def key(granularity: str, start: int, customer: str = "acme", group: str = "") -> bytes:
    return f"{customer}|api_requests|{granularity}|{start}|{group}".encode()


def test_minute_windows_expire_after_their_retention_counted_from_the_window_end():
    policy = RetentionPolicy(minute_ms=48 * HOUR_MS)
    just_kept = NOW - 48 * HOUR_MS - MINUTE_MS  # ends exactly 48 h ago: kept
    assert policy.expired(key("MINUTE", just_kept), NOW) is None
    assert policy.expired(key("MINUTE", just_kept - 1), NOW) == b"MINUTE"
    assert policy.expired(key("MINUTE", NOW - 5 * MINUTE_MS, group="region=eu"), NOW) is None


def test_hours_expire_later_and_days_and_billing_periods_are_kept_by_default():
    policy = RetentionPolicy()
    assert policy.expired(key("HOUR", NOW - 3 * DAY_MS), NOW) is None
    assert policy.expired(key("HOUR", NOW - 91 * DAY_MS), NOW) == b"HOUR"
    assert policy.expired(key("DAY", NOW - 5000 * DAY_MS), NOW) is None
    assert policy.expired(key("BILLING_PERIOD", NOW - 5000 * DAY_MS), NOW) is None


def test_a_configured_period_retention_counts_from_the_longest_possible_period_end():
    policy = RetentionPolicy(period_ms=400 * DAY_MS)
    assert policy.expired(key("BILLING_PERIOD", NOW - 420 * DAY_MS), NOW) is None  # may have ended 389 d ago
    assert policy.expired(key("BILLING_PERIOD", NOW - 432 * DAY_MS), NOW) == b"BILLING_PERIOD"


def test_keys_that_are_not_windows_are_never_expired():
    policy = RetentionPolicy(minute_ms=1)
    assert policy.expired(b"garbage", NOW) is None
    assert policy.expired(b"a|b|MINUTE|notanumber|", NOW) is None
    assert policy.expired(b"a|b|WEEK|0|", NOW) is None
    # A customer id holding "|" still parses from the right.
    assert policy.expired(key("MINUTE", 0, customer="we|ird"), NOW) == b"MINUTE"


def test_a_retention_shorter_than_the_grace_is_raised_to_it():
    policy = MeteringSettings(grace_seconds=7200, minute_retention_hours=0.5).retention()
    assert policy.minute_ms == 7200 * 1000 + MINUTE_MS
    settings = MeteringSettings(minute_retention_hours=None, hour_retention_days=30)
    assert settings.retention() == RetentionPolicy(minute_ms=None, hour_ms=30 * DAY_MS)
