"""Billing windows on the real ledger (PostgreSQL) through the period closer: an annual customer across a
leap year (the base once a year, usage invoiced per month, February 2028 with its 29 days), a yearly
usage period anchored on February 29, and an upgrade from monthly to annual mid-period with the billing
issue's default proration (none: the period is billed on the plan at its end, so the month of the upgrade
is the annual period's first and carries the annual base instead of the monthly one)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from services.billing_reporter.closing import PeriodCloser
from services.billing_reporter.subscriptions import apply_plan
from services.cli.__main__ import main as plg
from services.customers.windows import start_cycle
from services.kernel.settings import DatabaseSettings
from services.plans.invoice import Invoice
from services.plans.loader import load_config
from services.plans.periods import Period, billing_period, datetime_to_ms, usage_periods
from tests.price_books import annual_plan, write_book

HOUR = 3_600_000


def ms(*args: int) -> int:
    return datetime_to_ms(datetime(*args, tzinfo=UTC))  # type: ignore[misc]


@pytest.fixture
def world(database_settings: DatabaseSettings, tmp_path: Path, monkeypatch) -> Iterator[dict[str, Any]]:
    book = write_book(tmp_path, annual_plan("pro_annual", "monthly"), annual_plan("pro_yearly", "per_period"))
    url = database_settings.url.get_secret_value()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PLG_METERING_CONFIG", str(book))
    ledger = f"windows-{uuid.uuid4().hex[:8]}"
    pool = ConnectionPool(url, min_size=1, max_size=2, open=True)
    closer = PeriodCloser(pool, load_config(book), ledger=ledger, report_granularity="MINUTE", grace_ms=HOUR)
    try:
        yield {"url": url, "ledger": ledger, "closer": closer}
    finally:
        pool.close()


def _customer(world: dict[str, Any], plan: str, anchor_day: int, cycle_at: int | None = None) -> str:
    customer = f"w-{uuid.uuid4().hex[:10]}"
    assert plg(["customers", "create", customer, "--plan", plan, "--anchor-day", str(anchor_day)]) == 0
    if cycle_at is not None:
        with psycopg.connect(world["url"], autocommit=True) as conn:
            start_cycle(conn, customer, anchor_day, cycle_at)
    return customer


def _usage(world: dict[str, Any], customer: str, month: Period, value: int) -> None:
    with psycopg.connect(world["url"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO billing_usage (ledger, customer_id, meter, granularity, window_start, window_end,"
            " value, event_count, updated_at, dirty)"
            " VALUES (%s, %s, 'api_requests', 'BILLING_PERIOD', %s, %s, %s, %s, 0, false)",
            (world["ledger"], customer, month.start_ms, month.end_ms, value, value),
        )


def _close(world: dict[str, Any], customer: str, period_end_ms: int) -> list[Invoice]:
    return [i for i in world["closer"].close_due(period_end_ms + HOUR + 1) if i.customer_id == customer]


def test_an_annual_customer_across_a_leap_year_pays_the_base_once_and_usage_monthly(world):
    customer = _customer(world, "pro_annual", 1, cycle_at=ms(2027, 3, 10))
    months = usage_periods(Period(ms(2027, 3, 1), ms(2028, 4, 1)), 1)
    invoices: list[Invoice] = []
    for month in months:
        _usage(world, customer, month, 51_000)
        [invoice] = _close(world, customer, month.end_ms)
        invoices.append(invoice)
    assert [i.lines[0].amount for i in invoices] == [Decimal("490.00")] + [Decimal("0.00")] * 11 + [
        Decimal("490.00")
    ]
    assert {i.line("api_requests").amount for i in invoices} == {Decimal("1.00")}  # type: ignore[union-attr]
    february = invoices[11]
    assert (february.period.start.date(), february.period.end.date()) == (date(2028, 2, 1), date(2028, 3, 1))
    first_year = {(i.billing_period.start.date(), i.billing_period.end.date()) for i in invoices[:12]}  # type: ignore[union-attr]
    assert first_year == {(date(2027, 3, 1), date(2028, 3, 1))}  # 366 days, Feb 29 inside
    assert invoices[12].to_dict()["billing_period"] == {
        "start": "2028-03-01T00:00:00Z", "end": "2029-03-01T00:00:00Z",
    }  # fmt: skip
    assert _close(world, customer, months[-1].end_ms) == []  # each period closes once


def test_usage_billed_per_year_on_a_february_29_anchor(world):
    customer = _customer(world, "pro_yearly", 29, cycle_at=ms(2028, 2, 29, 12))
    year = billing_period(ms(2028, 6, 1), 29, 12, 2028 * 12 + 1)
    assert (year.start.date(), year.end.date()) == (date(2028, 2, 29), date(2029, 2, 28))
    months = usage_periods(year, 29)
    for month in months:
        _usage(world, customer, month, 5_000)
    assert _close(world, customer, months[3].end_ms) == []  # mid-year: the usage period runs on
    [invoice] = _close(world, customer, year.end_ms)
    assert (invoice.period, invoice.billing_period) == (year, year)
    line = invoice.line("api_requests")
    assert line is not None
    assert (line.usage, line.amount) == (Decimal(60_000), Decimal("10.00"))  # 10 000 over the year's 50 000
    assert invoice.total == Decimal("500.00")


def test_an_upgrade_from_monthly_to_annual_mid_period_makes_that_month_the_first_of_the_year(world):
    now = int(datetime.now(UTC).timestamp() * 1000)
    customer = _customer(world, "pro", 1)
    month = billing_period(now, 1)
    with psycopg.connect(world["url"], autocommit=True) as conn, conn.transaction():
        assert apply_plan(conn, customer, "pro_annual", "upgrade", "active")
    _usage(world, customer, month, 52_000)
    [invoice] = _close(world, customer, month.end_ms)
    # Proration none (BILLING_PLAN_CHANGE_PRORATION's default): no monthly 49.00 for the month of the
    # upgrade, the annual base from its start, the month's usage on the annual price.
    assert (invoice.plan, invoice.lines[0].amount, invoice.line("api_requests").amount) == (  # type: ignore[union-attr]
        "pro_annual", Decimal("490.00"), Decimal("2.00"),
    )  # fmt: skip
    assert invoice.billing_period is not None
    assert invoice.billing_period.start_ms == month.start_ms
    a_year_later = date(month.start.year + 1, month.start.month, 1)
    assert invoice.billing_period.end.date() == a_year_later
    following = billing_period(month.end_ms, 1)
    _usage(world, customer, following, 10)
    [next_invoice] = _close(world, customer, following.end_ms)
    assert next_invoice.lines[0].amount == Decimal("0.00")
