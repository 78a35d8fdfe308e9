"""Which plan prices an ended period: the one in force at its end, from the recorded changes (migration
0163), not the one the customer has when the period closes; its base: the plan at its start."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from services.billing_reporter.accounts import PlanChange, Terms, opening_price, terms_at, window_of
from services.plans.invoice import calculate_invoice
from services.plans.loader import load_config
from services.plans.model import ResolvedPrice
from services.plans.periods import billing_period, datetime_to_ms

END = 1_800_000_000_000
PRO = Terms("pro", "pro-2025-06", 24_300)
GROWTH = Terms("growth", "growth-2025-06", 24_301)
FREE = Terms("free", None, 24_301)


def test_without_a_change_after_the_end_the_current_terms_price_the_period() -> None:
    assert terms_at(GROWTH, [], END) == GROWTH
    # A change before the end (mid-period): the period is billed on the plan at its end, the current one.
    assert terms_at(GROWTH, [PlanChange(END - 1, 1, PRO)], END) == GROWTH


def test_a_change_in_the_close_grace_leaves_the_period_on_the_terms_it_replaced() -> None:
    assert terms_at(GROWTH, [PlanChange(END + 20 * 60_000, 1, PRO)], END) == PRO


def test_a_change_exactly_at_the_end_belongs_to_the_next_period() -> None:
    # A cancel at the period's end: Stripe's invoice of the period is written at its end, on the old plan.
    assert terms_at(FREE, [PlanChange(END, 1, PRO)], END) == PRO


def test_several_changes_after_the_end_the_earliest_one_tells_what_was_in_force() -> None:
    # A cancel in the grace, then a new checkout to growth: pro priced the period.
    changes = [PlanChange(END + 25 * 60_000, 8, FREE), PlanChange(END + 20 * 60_000, 7, PRO)]
    assert terms_at(GROWTH, changes, END) == PRO
    # Two changes at the same instant: in the order they were recorded.
    same = [PlanChange(END + 1, 9, FREE), PlanChange(END + 1, 8, PRO)]
    assert terms_at(GROWTH, same, END) == PRO


CONFIG = load_config()
PERIOD = billing_period(datetime_to_ms(datetime(2026, 12, 10, tzinfo=UTC)), 1)  # December 2026
GROWTH_NOW = Terms("growth", "growth-2025-06", 0)


def _price(plan: str) -> ResolvedPrice:
    found = window_of(CONFIG, plan, None, PERIOD.start_ms, 1, 0)
    assert found is not None
    return found[0]


def test_a_change_inside_the_period_leaves_its_base_on_the_plan_at_its_start() -> None:
    upgrade = [PlanChange(PERIOD.end_ms - 30 * 60_000, 1, Terms("pro", "pro-2025-06", 0))]
    opening = opening_price(CONFIG, GROWTH_NOW, upgrade, _price("growth"), PERIOD, 1)
    assert opening is not None
    assert (opening.plan, opening.base_price) == ("pro", Decimal("49.00"))
    invoice = calculate_invoice(
        customer_id="c", period=PERIOD, price=_price("growth"), usage={"api_requests": Decimal(60_000)},
        opening=opening,
    )  # fmt: skip
    base = next(ln for ln in invoice.lines if ln.kind == "base")
    assert (invoice.plan, base.amount, invoice.total) == ("growth", Decimal("49.00"), Decimal("49.00"))
    # A first checkout inside the period: the free plan's base (Stripe's partial first period is free).
    checkout = [PlanChange(PERIOD.start_ms + 86_400_000, 1, Terms("free", None, 0))]
    free = opening_price(CONFIG, GROWTH_NOW, checkout, _price("growth"), PERIOD, 1)
    assert free is not None
    assert (free.plan, free.base_price) == ("free", Decimal("0"))


def test_no_change_inside_the_period_or_one_at_its_very_start_bills_the_plan_at_its_end() -> None:
    assert opening_price(CONFIG, GROWTH_NOW, [], _price("growth"), PERIOD, 1) is None
    at_start = [PlanChange(PERIOD.start_ms, 1, Terms("pro", "pro-2025-06", 0))]  # a cancel at the last end
    assert opening_price(CONFIG, GROWTH_NOW, at_start, _price("growth"), PERIOD, 1) is None
