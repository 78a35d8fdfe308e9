"""Credit grants (top-ups): units of a meter a customer bought on top of their plan (pure).

A grant counts in the billing period it was bought in: it raises that period's allowance (the entitlement
API) and its included usage (the invoice: consumed before overage), until the period ends or the grant
expires, whichever comes first. Unused units do not roll over.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from services.plans.periods import Period

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
