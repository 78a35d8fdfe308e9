"""What a period's usage of one meter costs under a plan: overage beyond the included usage, or tiers.

Exact ``Decimal`` maths, no rounding: billing decides when and how to round to the currency's minor unit.
"""

from __future__ import annotations

from decimal import Decimal

from services.plans.model import PlanMeter

ZERO = Decimal(0)


def usage_charge(allowance: PlanMeter, usage: Decimal) -> Decimal:
    """The charge for ``usage`` units in one billing period (the plan's base price not included)."""
    if usage <= 0:
        return ZERO
    if allowance.tiers:
        return _tiered(allowance, usage)
    if allowance.overage_unit_price is None:
        return ZERO
    return max(usage - allowance.included, ZERO) * allowance.overage_unit_price


def _tiered(allowance: PlanMeter, usage: Decimal) -> Decimal:
    if allowance.tiers_mode == "volume":
        # Every unit is priced at the rate of the tier the total falls into.
        for tier in allowance.tiers:
            if tier.up_to is None or usage <= tier.up_to:
                return usage * tier.unit_price + tier.flat_price
    total = ZERO
    floor = ZERO
    for tier in allowance.tiers:
        ceiling = usage if tier.up_to is None else min(usage, tier.up_to)
        if ceiling <= floor:
            break
        total += (ceiling - floor) * tier.unit_price + tier.flat_price
        floor = ceiling
    return total
