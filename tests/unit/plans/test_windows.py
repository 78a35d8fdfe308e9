"""Billing windows (seed 003 ``meteringWindow: monthly | annual | custom``): the price book's fields,
multi-month periods on the customer's anchor (leap years included), the base charged once per billing
period, usage per month or per period, and the Stripe intervals sync-catalog gives the prices."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import yaml

from services.billing_reporter.catalog import mixed_intervals, recurring
from services.plans.invoice import calculate_invoice
from services.plans.loader import ConfigError, config_path, parse_config
from services.plans.periods import billing_period, datetime_to_ms, month_index, usage_periods
from services.plans.windows import billing_cycle, combine_months, usage_period


def ms(*args: int) -> int:
    return datetime_to_ms(datetime(*args, tzinfo=UTC))  # type: ignore[misc]


def book(**pro_annual: Any) -> Any:
    raw = yaml.safe_load(config_path().read_text())
    raw["plans"].append({
        "slug": "pro_annual", "name": "Pro (annual)", "features": {"sso": True},
        "meters": {"api_requests": {"limit": 50000}, "storage_gb": {"limit": 100}, "active_users": {}},
        "prices": [{
            "version": "pro-annual-2025", "effective_date": "2025-01-01", "base_price": "490.00",
            "billing_window": "annual",
            "meters": {"api_requests": {"included": 50000, "overage_unit_price": "0.001"}},
            **pro_annual,
        }],
    })  # fmt: skip
    return parse_config(raw)


def test_the_window_fields_are_validated():
    price = book().price_for("pro_annual", date(2026, 1, 1))
    assert price is not None
    assert (price.billing_window, price.period_months, price.usage_months) == ("annual", 12, 1)
    custom = book(billing_window="custom", interval_months=3, usage_billing="per_period")
    quarterly = custom.price_for("pro_annual", date(2026, 1, 1))
    assert quarterly is not None
    assert (quarterly.period_months, quarterly.usage_months, quarterly.stripe_interval) == (
        3,
        3,
        ("month", 3),
    )
    with pytest.raises(ConfigError, match="custom needs interval_months"):
        book(billing_window="custom")
    with pytest.raises(ConfigError, match="leave interval_months out"):
        book(interval_months=6)
    with pytest.raises(ConfigError, match="UNIQUE_COUNT meter cannot be priced per_period"):
        book(usage_billing="per_period", meters={"active_users": {"included": 10, "overage_unit_price": "1"}})


def test_an_annual_period_on_a_february_29_anchor_follows_the_leap_years():
    cycle = month_index(date(2028, 2, 1))
    starts = [billing_period(ms(y, 6, 1), 29, 12, cycle).start.date() for y in range(2028, 2033)]
    assert starts == [
        date(2028, 2, 29),
        date(2029, 2, 28),
        date(2030, 2, 28),
        date(2031, 2, 28),
        date(2032, 2, 29),
    ]
    year = billing_period(ms(2027, 5, 1), 1, 12, month_index(date(2027, 3, 1)))
    assert (year.start.date(), year.end.date()) == (date(2027, 3, 1), date(2028, 3, 1))
    assert (year.end - year.start).days == 366  # it holds 2028-02-29
    months = usage_periods(year, 1)
    assert len(months) == 12
    assert [(m.end - m.start).days for m in months if m.start.month == 2] == [29]
    # Custom: every 5 months from the cycle month, across the year's end.
    five = billing_period(ms(2027, 1, 20), 15, 5, month_index(date(2026, 3, 1)))
    assert (five.start.date(), five.end.date()) == (date(2027, 1, 15), date(2027, 6, 15))


def test_the_base_is_charged_once_per_billing_period_and_usage_per_month():
    config = book()
    price = config.price_for("pro_annual", date(2027, 3, 1))
    assert price is not None
    cycle_month = month_index(date(2027, 3, 1))
    invoices = []
    for month in usage_periods(billing_cycle(price, ms(2027, 3, 1), 1, cycle_month), 1):
        assert usage_period(price, month.start_ms, 1, cycle_month) == month
        invoices.append(
            calculate_invoice(
                customer_id="c",
                period=month,
                price=price,
                usage={"api_requests": Decimal(51_000)},
                billing_period=billing_cycle(price, month.start_ms, 1, cycle_month),
            )
        )
    bases = [inv.lines[0].amount for inv in invoices]
    assert bases == [Decimal("490.00")] + [Decimal("0.00")] * 11
    assert all(inv.line("api_requests").amount == Decimal("1.00") for inv in invoices)  # type: ignore[union-attr]
    assert invoices[0].to_dict()["billing_period"] == {
        "start": "2027-03-01T00:00:00Z",
        "end": "2028-03-01T00:00:00Z",
    }
    assert "billed with its first month" in invoices[1].lines[0].description


def test_usage_per_period_adds_up_the_months_by_aggregation():
    config = book()
    months = [
        {"api_requests": Decimal(10), "storage_gb": Decimal(5), "seats": Decimal(3)},
        {"api_requests": Decimal(7), "storage_gb": Decimal(9), "seats": Decimal(2)},
        {"storage_gb": Decimal(4)},
    ]
    assert combine_months(config, months) == {
        "api_requests": Decimal(17), "storage_gb": Decimal(9), "seats": Decimal(2),
    }  # fmt: skip


def test_stripe_prices_carry_the_window_as_interval_and_interval_count():
    annual = book().price_for("pro_annual", date(2026, 1, 1))
    per_period = book(usage_billing="per_period").price_for("pro_annual", date(2026, 1, 1))
    two_years = book(billing_window="custom", interval_months=24).price_for("pro_annual", date(2026, 1, 1))
    monthly = book().price_for("pro", date(2026, 1, 1))
    assert annual is not None
    assert per_period is not None
    assert two_years is not None
    assert monthly is not None
    assert recurring(annual, usage=False) == {"interval": "year"}
    assert recurring(annual, usage=True) == {"interval": "month"}
    assert mixed_intervals(annual)  # Stripe: billing_mode flexible
    assert recurring(per_period, usage=True) == {"interval": "year"}
    assert not mixed_intervals(per_period)
    assert recurring(two_years, usage=False) == {"interval": "year", "interval_count": 2}
    assert recurring(monthly, usage=False) == {"interval": "month"}
    assert not mixed_intervals(monthly)
