"""The subscription state machine: active, past_due with a grace during which access stays, canceled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.billing_reporter.subscriptions import Subscription, effective_plan, minor_units, transition

NOW = datetime(2025, 7, 1, 12, tzinfo=UTC)
GRACE = timedelta(days=3)
ACTIVE = Subscription("acme", "pro", "active", "cus_1", "sub_1")


def test_a_failed_payment_starts_the_grace_and_access_stays_until_it_ends():
    due = transition(ACTIVE, "past_due", NOW, GRACE)
    assert (due.status, due.past_due_since, due.grace_until) == ("past_due", NOW, NOW + GRACE)
    assert effective_plan(due, NOW + GRACE - timedelta(seconds=1), "free") == "pro"
    assert effective_plan(due, NOW + GRACE, "free") == "free"


def test_a_second_failure_does_not_extend_the_grace():
    due = transition(ACTIVE, "past_due", NOW, GRACE)
    again = transition(due, "past_due", NOW + timedelta(days=2), GRACE)
    assert again.grace_until == NOW + GRACE


def test_paying_restores_the_plan_and_clears_the_grace():
    due = transition(ACTIVE, "past_due", NOW, GRACE)
    paid = transition(due, "active", NOW + timedelta(days=5), GRACE)
    assert (paid.status, paid.grace_until) == ("active", None)
    assert effective_plan(paid, NOW + timedelta(days=5), "free") == "pro"


def test_canceled_is_the_free_plan_and_no_subscription_changes_nothing():
    assert effective_plan(transition(ACTIVE, "canceled", NOW, GRACE), NOW, "free") == "free"
    assert effective_plan(None, NOW, "free") is None


def test_a_plan_change_from_stripe_keeps_the_ids():
    moved = transition(ACTIVE, "active", NOW, GRACE, plan="growth")
    assert (moved.plan, moved.stripe_subscription_id) == ("growth", "sub_1")


def test_checkout_amounts_are_in_minor_units():
    assert minor_units(Decimal("49.00"), 2) == 4900
    assert minor_units(Decimal("999"), 0) == 999
