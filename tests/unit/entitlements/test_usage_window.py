"""Limits follow the customer's billing window (issue 20): a price billing usage ``per_period`` over an
annual or custom window is limited over that whole window (its months added up, as the invoice adds them),
any other price over the month; the answer's period is that usage period."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from services.customers import Customer
from services.entitlements.handlers import decide, decision_body, usage_window
from services.plans.periods import billing_period, datetime_to_ms, month_index
from services.plans.windows import combine_months
from tests.unit.plans.test_windows import book


def ms(*args: int) -> int:
    return datetime_to_ms(datetime(*args, tzinfo=UTC))  # type: ignore[misc]


def test_a_per_period_annual_price_limits_usage_over_its_year_on_the_cycle_month():
    config = book(usage_billing="per_period")
    cycle = month_index(date(2027, 3, 1))
    yearly = Customer("acme", "pro_annual", billing_anchor_day=15, billing_cycle_month=cycle)
    now = ms(2027, 11, 20, 12)
    period, months = usage_window(config, yearly, now)
    assert (period.start.date(), period.end.date()) == (date(2027, 3, 15), date(2028, 3, 15))
    assert len(months) == 12
    assert months[8] == billing_period(now, 15)
    # The plan's limit (50 000) over the year: 30 000 in April and 25 000 in November are over it.
    usage = combine_months(config, [{"api_requests": Decimal(30_000)}, {"api_requests": Decimal(25_000)}])
    d = decide(config, yearly, "api_requests", usage["api_requests"], now, "https://u", period=period)
    assert (d.usage, d.limit, d.remaining) == (Decimal(55_000), Decimal(50_000), Decimal(0))
    body = decision_body(d)
    assert (body["period_start"], body["period_end"]) == ("2027-03-15T00:00:00Z", "2028-03-15T00:00:00Z")


def test_monthly_usage_billing_and_monthly_prices_keep_the_month():
    monthly_usage = book()  # annual base, usage billed per month: limits per month, like the invoice
    annual = Customer(
        "acme", "pro_annual", billing_anchor_day=1, billing_cycle_month=month_index(date(2027, 3, 1))
    )
    pro = Customer("beta", "pro", billing_anchor_day=1)
    now = ms(2027, 11, 20)
    for config, customer in ((monthly_usage, annual), (book(usage_billing="per_period"), pro)):
        period, months = usage_window(config, customer, now)
        assert months == [period] == [billing_period(now, 1)]


def test_without_a_stored_cycle_month_the_year_counts_from_the_creation_month():
    config = book(usage_billing="per_period")
    created = datetime(2027, 6, 3, tzinfo=UTC)
    customer = Customer("acme", "pro_annual", billing_anchor_day=1, created_at=created)
    period, months = usage_window(config, customer, ms(2028, 2, 10))
    assert (period.start.date(), period.end.date(), len(months)) == (date(2027, 6, 1), date(2028, 6, 1), 12)
