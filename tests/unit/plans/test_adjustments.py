"""Adjustments of closed periods (late usage): the re-rated line less the billed one, to the cent, and
the next invoice carries them as lines of their own."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from services.plans.invoice import Adjustment, calculate_invoice, line_difference
from services.plans.loader import load_config
from services.plans.periods import billing_period

CONFIG = load_config()
PRO = CONFIG.price_for("pro", date(2026, 1, 1))
GROWTH = CONFIG.price_for("growth", date(2026, 1, 1))


def test_late_requests_cost_what_the_invoice_would_have_charged_for_them():
    assert PRO is not None
    assert line_difference(PRO, "api_requests", Decimal(51_000), Decimal(52_000)) == Decimal("1.00")
    assert line_difference(PRO, "api_requests", Decimal(52_000), Decimal(51_500)) == Decimal("-0.50")
    # Within the included usage nothing changes; across it only the part above counts.
    assert line_difference(PRO, "api_requests", Decimal(10), Decimal(49_999)) == 0
    assert line_difference(PRO, "api_requests", Decimal(49_000), Decimal(50_001)) == Decimal("0.01")
    # Top-up units are used first, before and after the correction alike.
    assert line_difference(PRO, "api_requests", Decimal(55_000), Decimal(61_000), Decimal(10_000)) == Decimal(
        "1.00"
    )
    assert line_difference(PRO, "seats", Decimal(3), Decimal(9)) == 0  # not priced


@given(
    st.integers(min_value=0, max_value=2_000_000),
    st.lists(st.integers(min_value=-50_000, max_value=50_000), min_size=1, max_size=5),
)
def test_the_invoice_plus_its_adjustments_equals_the_invoice_of_the_corrected_usage(start, changes):
    assert GROWTH is not None
    usage = Decimal(start)
    billed = line_difference(GROWTH, "compute_seconds", Decimal(0), usage)
    for change in changes:
        after = max(Decimal(0), usage + change)
        billed += line_difference(GROWTH, "compute_seconds", usage, after)
        usage = after
    assert billed == line_difference(GROWTH, "compute_seconds", Decimal(0), usage)


def test_the_next_invoice_carries_adjustments_as_lines_and_in_its_total():
    assert PRO is not None
    closed = billing_period(1_767_225_600_000, 1)  # 2026-01
    following = billing_period(closed.end_ms, 1)
    adjustments = [
        Adjustment("api_requests", closed, Decimal(51_000), Decimal(52_000), Decimal("1.00")),
        Adjustment("api_requests", closed, Decimal(52_000), Decimal(51_500), Decimal("-0.50")),
    ]
    invoice = calculate_invoice(
        customer_id="acme", period=following, price=PRO, usage={}, adjustments=adjustments
    )
    lines = [ln for ln in invoice.to_dict()["lines"] if ln["kind"] == "adjustment"]
    assert [(ln["amount"], ln["usage_before"], ln["usage_after"]) for ln in lines] == [
        ("1.00", "51000", "52000"),
        ("-0.50", "52000", "51500"),
    ]
    assert lines[0]["corrects_period"] == {"start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"}
    assert invoice.total == Decimal("49.50")


def test_a_top_ups_value_at_stripe_is_the_charge_of_its_units_above_the_included_usage():
    from services.plans.grants import credit_value

    assert PRO is not None
    assert GROWTH is not None
    assert credit_value(PRO.meters["api_requests"], Decimal(10_000)) == (Decimal("10.000"), True)
    assert credit_value(GROWTH.meters["compute_seconds"], Decimal(360_000)) == (Decimal("50.00"), True)
    # Not whole packages: a credit cannot follow the started-package rounding.
    assert credit_value(GROWTH.meters["compute_seconds"], Decimal(1_800))[1] is False
