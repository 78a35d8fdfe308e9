"""Retention by window size on the real broker: the sweeper tombstones expired minute and hour windows of
usage-aggregates and leaves billing periods alone; the entitlement view's usage-periods topic carries only
the ungrouped billing-period totals."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from services.kernel.topics import USAGE_AGGREGATES, USAGE_PERIODS, topic
from services.metering_aggregator.retention import RetentionPolicy, RetentionSweeper
from services.plans.periods import DAY_MS, HOUR_MS, MINUTE_MS
from tests.integration.metering.harness import Metering, now_ms, usage_event, wait_for

pytestmark = pytest.mark.integration


def aggregate(customer: str, granularity: str, start: int, length: int) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "meter": "api_requests",
        "aggregation": "COUNT",
        "group": {},
        "granularity": granularity,
        "window_start": start,
        "window_end": start + length,
        "value": Decimal(3),
        "event_count": 3,
        "updated_at": now_ms(),
    }


def test_the_sweep_expires_minute_and_hour_windows_without_touching_billing_periods(metering: Metering):
    spec = topic(USAGE_AGGREGATES, metering.prefix)
    assert spec.schema_path is not None
    encoder = metering.sr.encoder(spec.value_subject, spec.schema_path, auto_register=False)
    now = now_ms()
    minute = now - now % MINUTE_MS
    hour = now - now % HOUR_MS
    windows = {
        "old minute": ("MINUTE", minute - 3 * DAY_MS, MINUTE_MS),
        "recent minute": ("MINUTE", minute - 2 * HOUR_MS, MINUTE_MS),
        "old hour": ("HOUR", hour - 100 * DAY_MS, HOUR_MS),
        "recent hour": ("HOUR", hour - 10 * DAY_MS, HOUR_MS),
        "old day": ("DAY", hour - hour % DAY_MS - 500 * DAY_MS, DAY_MS),
        "old period": ("BILLING_PERIOD", hour - hour % DAY_MS - 700 * DAY_MS, 31 * DAY_MS),
    }
    keys = {}
    for name, (granularity, start, length) in windows.items():
        key = f"acme|api_requests|{granularity}|{start}|".encode()
        keys[name] = key
        for _ in range(2):  # two records of one key, as before compaction
            value = encoder.encode(aggregate("acme", granularity, start, length))
            metering.producer.produce(spec.name, value, key)
    assert metering.producer.flush(30) == 0

    sweeper = RetentionSweeper(metering.kafka, spec.name, RetentionPolicy(), interval=3600)
    assert sweeper.sweep() == 2  # one tombstone per expired key, not one per record

    latest: dict[bytes, bytes | None] = {}
    for key, value in metering.read_all(USAGE_AGGREGATES):
        assert key is not None
        latest[key] = value
    assert latest[keys["old minute"]] is None
    assert latest[keys["old hour"]] is None
    for kept in ("recent minute", "recent hour", "old day", "old period"):
        assert latest[keys[kept]] is not None, kept
    # A second pass finds them tombstoned already and writes nothing.
    assert sweeper.sweep() == 0


def test_the_aggregator_writes_ungrouped_period_totals_to_usage_periods(metering: Metering):
    c = metering.customer("pro")
    metering.start()
    metering.send(usage_event(c) for _ in range(5))
    metering.send(usage_event(c, "job_completed", duration_seconds=2, region="eu") for _ in range(2))
    wait_for(lambda: metering.period_total(c) == (Decimal(5), 5), what="5 counted")
    wait_for(lambda: metering.period_total(c, "compute_seconds") == (Decimal(4), 2), what="4 s counted")

    def periods() -> dict[bytes, dict[str, Any]]:
        out = {}
        for key, value in metering.read_all(USAGE_PERIODS):
            assert key is not None
            assert value is not None
            out[key] = metering.decoder.decode(value)
        return out

    found = wait_for(lambda: len(p := periods()) == 2 and p, what="two period totals")
    assert all(v["group"] == {} for v in found.values())
    assert {(v["meter"], v["granularity"], v["value"]) for v in found.values()} == {
        ("api_requests", "BILLING_PERIOD", Decimal(5)),
        ("compute_seconds", "BILLING_PERIOD", Decimal(4)),
    }
    aggregates = metering.aggregates()
    for key, value in found.items():
        assert aggregates[key.decode()] == value  # the same record as on usage-aggregates
