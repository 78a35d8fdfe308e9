"""Every aggregation of the default config, group-by series, and billing periods on the real stack."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from services.plans.periods import datetime_to_ms
from tests.integration.metering.harness import Metering, now_ms, usage_event, wait_for


def windows(
    metering: Metering, customer: str, meter: str, granularity: str
) -> dict[tuple[int, int, str], tuple]:
    return {
        (v["window_start"], v["window_end"], ",".join(f"{k}={x}" for k, x in sorted(v["group"].items()))): (
            v["value"],
            v["event_count"],
        )
        for v in metering.aggregates().values()
        if v["customer_id"] == customer and v["meter"] == meter and v["granularity"] == granularity
    }


def test_every_aggregation_is_exact(metering: Metering):
    c = metering.customer("pro")
    t = now_ms() - 1000
    metering.send(
        [
            usage_event(c, user_id="ann", ts=t),
            usage_event(c, user_id="bob", ts=t),
            usage_event(c, user_id="ann", ts=t),
            usage_event(c, "job_completed", duration_seconds=0.1, region="eu", ts=t),
            usage_event(c, "job_completed", duration_seconds=0.2, region="eu", ts=t),
            usage_event(c, "job_completed", duration_seconds=3, region="us", ts=t),
            usage_event(c, "storage_measured", gb=12.5, ts=t),
            usage_event(c, "storage_measured", gb=40, ts=t),
            usage_event(c, "storage_measured", gb=7, ts=t),
            usage_event(c, "seats_changed", seats=5, ts=t - 500),
            usage_event(c, "seats_changed", seats=8, ts=t),
            usage_event(c, "seats_changed", seats=6, ts=t - 200),  # arrives last but is older
            usage_event(c, "user_signed_in", user_id="ann", ts=t),
            usage_event(c, "user_signed_in", user_id="cy", ts=t),
            usage_event(c, "user_signed_in", user_id="ann", ts=t),
            usage_event(c, "page_viewed", ts=t),  # no meter counts it
        ]
    )
    metering.start()
    wait_for(lambda: metering.period_total(c, "active_users") is not None)
    wait_for(lambda: metering.period_total(c, "seats") == (Decimal(8), 3))
    assert metering.period_total(c) == (Decimal(3), 3)
    assert metering.period_total(c, "compute_seconds") == (Decimal("3.3"), 3)
    assert metering.period_total(c, "storage_gb") == (Decimal(40), 3)
    assert metering.period_total(c, "active_users") == (Decimal(2), 3)
    by_region = windows(metering, c, "compute_seconds", "DAY")
    assert {g: v for (_, _, g), v in by_region.items()} == {
        "": (Decimal("3.3"), 3),
        "region=eu": (Decimal("0.3"), 2),
        "region=us": (Decimal(3), 1),
    }
    for granularity in ("MINUTE", "HOUR", "DAY", "BILLING_PERIOD"):
        (((start, end, _), value),) = windows(metering, c, "api_requests", granularity).items()
        assert value == (Decimal(3), 3)
        assert start <= t < end
    metered = {v["meter"] for v in metering.aggregates().values() if v["customer_id"] == c}
    assert metered == {"api_requests", "compute_seconds", "storage_gb", "seats", "active_users"}


def ms(*args: int) -> int:
    return datetime_to_ms(datetime(*args, tzinfo=UTC))  # type: ignore[misc]


def test_billing_periods_follow_anchors_across_month_ends_and_leap_years(metering: Metering):
    # A grace of ten years lets the test write events in 2024 (leap year) and 2025.
    metering.start(grace_seconds=3650 * 86400, dedup_horizon_seconds=3650 * 86400)
    first = metering.customer("pro", anchor_day=1)
    last = metering.customer("pro", anchor_day=31)
    leap = metering.customer("pro", anchor_day=29)
    stamps = {
        first: [ms(2024, 2, 29, 23, 59, 59) + 999, ms(2024, 3, 1)],
        last: [ms(2024, 2, 28), ms(2024, 2, 29, 12), ms(2024, 3, 30, 23), ms(2024, 3, 31)],
        leap: [ms(2025, 2, 28, 12), ms(2025, 3, 28), ms(2025, 3, 29)],
    }
    metering.send(usage_event(c, ts=ts) for c, times in stamps.items() for ts in times)
    expected = {
        first: {(ms(2024, 2, 1), ms(2024, 3, 1)): 1, (ms(2024, 3, 1), ms(2024, 4, 1)): 1},
        last: {
            (ms(2024, 1, 31), ms(2024, 2, 29)): 1,
            (ms(2024, 2, 29), ms(2024, 3, 31)): 2,
            (ms(2024, 3, 31), ms(2024, 4, 30)): 1,
        },
        leap: {(ms(2025, 2, 28), ms(2025, 3, 29)): 2, (ms(2025, 3, 29), ms(2025, 4, 29)): 1},
    }

    def periods(c: str) -> dict[tuple[int, int], int]:
        found = windows(metering, c, "api_requests", "BILLING_PERIOD")
        return {(s, e): v[1] for (s, e, _), v in found.items()}

    wait_for(
        lambda: all(periods(c) == want for c, want in expected.items()), what="billing periods", timeout=30
    )
    days = windows(metering, first, "api_requests", "DAY")
    assert {(s, e) for s, e, _ in days} == {
        (ms(2024, 2, 29), ms(2024, 3, 1)),
        (ms(2024, 3, 1), ms(2024, 3, 2)),
    }
