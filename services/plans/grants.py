"""Credit grants (top-ups): units of a meter a customer bought on top of their plan (pure).

A grant counts in the billing period it was bought in: it raises that period's allowance (the entitlement
API) and its included usage (the invoice: consumed before overage), until the period ends or the grant
expires, whichever comes first. Unused units do not roll over.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from services.plans.model import MeterPrice
from services.plans.periods import Period
from services.plans.pricing import usage_charge

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Grant:
    meter: str
    units: Decimal
    granted_at_ms: int
    expires_at_ms: int | None = None


def granted_units(grants: Iterable[Grant], meter: str, period: Period, now_ms: int | None = None) -> Decimal:
    """The units of ``meter`` granted in ``period`` (and, given ``now_ms``, not expired by then)."""
    return sum(
        (
            g.units
            for g in grants
            if g.meter == meter
            and period.contains(g.granted_at_ms)
            and (now_ms is None or g.expires_at_ms is None or now_ms < g.expires_at_ms)
        ),
        ZERO,
    )


def credits_for(grants: Iterable[Grant], period: Period) -> dict[str, Decimal]:
    """meter → units granted in ``period``: what the period's invoice takes as extra included usage."""
    out: dict[str, Decimal] = {}
    for g in grants:
        if period.contains(g.granted_at_ms):
            out[g.meter] = out.get(g.meter, ZERO) + g.units
    return out


def credit_value(price: MeterPrice, units: Decimal) -> tuple[Decimal, bool]:
    """What ``units`` granted of a meter are worth against its price (exact, not rounded): the charge of
    the first ``units`` above the included usage. And whether a money credit of that value, used against
    the period's charge for the meter, always leaves what plg charges for the usage less the units:
    true for a per-unit overage price, and for packages when the units are whole packages (a charge that
    is linear above the included usage); tiers are not (their rate changes with usage)."""
    if price.tiers:
        first = price.tiers[0]
        free = first.up_to is not None and not first.unit_price and not first.flat_price
        start = first.up_to if free and first.up_to is not None else ZERO
        return usage_charge(price, start + units) - usage_charge(price, start), False
    value = usage_charge(price, price.included + units) - usage_charge(price, price.included)
    exact = price.package is None or units % price.package.size == 0
    return value, exact
