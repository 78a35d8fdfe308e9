"""Which plan prices an ended period: the one in force at its end, from the recorded changes (migration
0163), not the one the customer has when the period closes."""

from __future__ import annotations

from services.billing_reporter.accounts import PlanChange, Terms, terms_at

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
