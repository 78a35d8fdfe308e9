"""The usage totals the view keeps: period totals only, the last few periods, tombstones delete."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from services.entitlements.view import UsageTotals, is_period_total
from services.kernel.processing.messages import Message


class FakeRecord:
    """The few accessors of a consumed record that Message reads."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return "usage-aggregates"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


def message(customer: str, start: int, value: str | None) -> Message:
    key = f"{customer}|api_requests|BILLING_PERIOD|{start}|".encode()
    body: dict[str, Any] | None = None if value is None else {"value": Decimal(value), "updated_at": 0}
    return Message(FakeRecord(key), body)  # type: ignore[arg-type]


def test_only_ungrouped_period_totals_are_read() -> None:
    assert is_period_total(b"acme|api_requests|BILLING_PERIOD|100|")
    assert not is_period_total(b"acme|api_requests|MINUTE|100|")
    assert not is_period_total(b"acme|api_requests|BILLING_PERIOD|100|region=eu")
    assert not is_period_total(None)


def test_the_latest_total_of_each_period_is_kept_exactly() -> None:
    totals = UsageTotals(periods_kept=2)
    totals.apply(message("acme", 100, "1.5"))
    totals.apply(message("acme", 100, "0.001"))

    assert totals.usage("acme", "api_requests", 100) == Decimal("0.001")
    assert totals.usage("acme", "api_requests", 200) == 0
    assert totals.usage("other", "api_requests", 100) == 0


def test_older_periods_beyond_the_kept_ones_are_dropped() -> None:
    totals = UsageTotals(periods_kept=2)
    for start in (100, 200, 300):
        totals.apply(message("acme", start, "5"))

    assert totals.usage("acme", "api_requests", 100) == 0
    assert totals.usage("acme", "api_requests", 300) == 5


def test_a_tombstone_deletes_the_period_total() -> None:
    totals = UsageTotals()
    totals.apply(message("acme", 100, "5"))
    totals.apply(message("acme", 100, None))
    totals.apply(message("ghost", 100, None))  # a tombstone for a key never seen

    assert totals.usage("acme", "api_requests", 100) == 0
    assert len(totals) == 0
