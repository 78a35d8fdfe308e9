"""What a period's usage of one meter costs: overage beyond the included usage, tiers, or packages.

Exact ``Decimal`` maths, no rounding: the invoice calculator (``services.plans.invoice``) rounds each
line once, to the currency's minor unit, with the price's rounding rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from services.plans.model import MeterPrice

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class TierCharge:
    """The part of a tiered charge that one tier contributed (graduated: its slice; volume: all)."""

    index: int
    first_unit: Decimal  # exclusive lower bound: the tier prices units above this
    up_to: Decimal | None
    quantity: Decimal
    unit_price: Decimal
    flat_price: Decimal
    amount: Decimal


@dataclass(frozen=True, slots=True)
class UsageCharge:
    """One meter's charge, explained: usage, what is included, what is billed and how."""

    usage: Decimal
    included: Decimal
    billable: Decimal
    amount: Decimal  # exact, not rounded
    unit_price: Decimal | None = None  # overage pricing
    packages: Decimal | None = None  # package pricing: started packages billed
    tiers: tuple[TierCharge, ...] = ()


def usage_charge(price: MeterPrice, usage: Decimal) -> Decimal:
    """The exact charge for ``usage`` units in one billing period (the base price not included)."""
    return explain_charge(price, usage).amount


def explain_charge(price: MeterPrice, usage: Decimal) -> UsageCharge:
    """The charge for ``usage`` units with the arithmetic behind it, for invoice lines."""
    usage = max(usage, ZERO)
    if price.tiers:
        tiers = _tiered(price, usage)
        return UsageCharge(usage, ZERO, usage, sum((t.amount for t in tiers), ZERO), tiers=tiers)
    billable = max(usage - price.included, ZERO)
    if price.package is not None:
        packages = (billable / price.package.size).to_integral_value(rounding=ROUND_CEILING)
        return UsageCharge(
            usage, price.included, billable, packages * price.package.unit_price, packages=packages
        )
    if price.overage_unit_price is None:
        return UsageCharge(usage, price.included, billable, ZERO)
    return UsageCharge(
        usage, price.included, billable, billable * price.overage_unit_price, price.overage_unit_price
    )


def _tiered(price: MeterPrice, usage: Decimal) -> tuple[TierCharge, ...]:
    if usage <= 0:
        return ()
    if price.tiers_mode == "volume":
        # Every unit is priced at the rate of the tier the total falls into (plus that tier's flat fee).
        floor = ZERO
        for i, tier in enumerate(price.tiers):
            if tier.up_to is None or usage <= tier.up_to:
                amount = usage * tier.unit_price + tier.flat_price
                return (TierCharge(i, floor, tier.up_to, usage, tier.unit_price, tier.flat_price, amount),)
            floor = tier.up_to
        return ()  # unreachable: validation makes the last tier unbounded
    charges: list[TierCharge] = []
    floor = ZERO
    for i, tier in enumerate(price.tiers):
        ceiling = usage if tier.up_to is None else min(usage, tier.up_to)
        if ceiling <= floor:
            break
        quantity = ceiling - floor
        amount = quantity * tier.unit_price + tier.flat_price
        charges.append(TierCharge(i, floor, tier.up_to, quantity, tier.unit_price, tier.flat_price, amount))
        floor = ceiling
    return tuple(charges)
