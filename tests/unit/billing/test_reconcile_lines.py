"""Reconciliation's verdict per customer and meter, and the period ``--period YYYY-MM`` names."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from services.billing_reporter.reconcile import Line, period_of
from services.plans.periods import Period, datetime_to_ms

P = Period(0, 1)


def test_a_linked_customer_agrees_only_when_all_four_match_and_nothing_is_pending():
    assert Line("c", "api", P, Decimal(5), Decimal(5), Decimal(5), Decimal(0), Decimal(5)).agrees
    assert not Line(
        "c", "api", P, Decimal(5), Decimal(5), Decimal(5), Decimal(0), Decimal(8)
    ).agrees  # Stripe
    assert not Line(
        "c", "api", P, Decimal(5), Decimal(5), Decimal(3), Decimal(2), Decimal(3)
    ).agrees  # pending
    assert not Line(
        "c", "api", P, Decimal(6), Decimal(5), Decimal(5), Decimal(0), None
    ).agrees  # ledger behind


def test_an_unlinked_customer_must_have_reported_nothing():
    assert Line("c", "api", P, Decimal(5), Decimal(5), linked=False).agrees
    assert not Line("c", "api", P, Decimal(5), Decimal(5), Decimal(1), linked=False).agrees


def test_the_period_named_by_month_follows_the_anchor_day():
    now = datetime_to_ms(datetime(2025, 7, 20, tzinfo=UTC))
    feb = period_of("2025-02", 31, now)
    assert (feb.start, feb.end) == (datetime(2025, 2, 28, tzinfo=UTC), datetime(2025, 3, 31, tzinfo=UTC))
    current = period_of(None, 15, now)
    assert current.start == datetime(2025, 7, 15, tzinfo=UTC)
