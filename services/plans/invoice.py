"""The invoice calculator: one customer's usage per meter for one billing period and a price version in,
an invoice that explains itself line by line out. Pure and deterministic (no clock, no I/O, ``Decimal``
throughout), so the running invoice, the final one and a re-computation months later agree to the cent.

Each line's exact amount is rounded once, to the currency's minor unit, with the price's rule; the
subtotal is the sum of the rounded lines (so the lines add up on paper), and the tax is computed on the
subtotal and rounded to the nearest minor unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any, Literal

from services.plans.model import MeterPrice, ResolvedPrice, Rounding
from services.plans.periods import Period
from services.plans.pricing import TierCharge, explain_charge

ZERO = Decimal(0)
_MODES = {Rounding.CEIL: ROUND_CEILING, Rounding.FLOOR: ROUND_FLOOR, Rounding.NEAREST: ROUND_HALF_UP}


def round_money(amount: Decimal, minor_unit: int, rule: Rounding) -> Decimal:
    """``amount`` rounded to ``minor_unit`` decimal places (2 for cents, 0 for yen) by ``rule``."""
    return amount.quantize(Decimal(1).scaleb(-minor_unit), rounding=_MODES[rule])


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A late correction of a closed period's usage line, billed on a later invoice: a final invoice never
    changes. ``amount`` is the re-rated line less what was billed for it (both rounded), so it can be
    negative (a credit)."""

    meter: str
    corrects: Period
    usage_before: Decimal
    usage_after: Decimal
    amount: Decimal


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    kind: Literal["base", "usage", "adjustment"]
    description: str
    exact_amount: Decimal
    amount: Decimal  # rounded once
    meter: str | None = None
    usage: Decimal = ZERO
    included: Decimal = ZERO
    billable: Decimal = ZERO
    unit_price: Decimal | None = None
    package_size: Decimal | None = None
    package_price: Decimal | None = None
    packages: Decimal | None = None
    tiers_mode: str | None = None
    tiers: tuple[TierCharge, ...] = ()
    credited: Decimal = ZERO  # top-up units used before anything else is priced
    corrects: Period | None = None  # an adjustment: the closed period it corrects
    usage_before: Decimal = ZERO  # an adjustment: the usage billed before the correction


@dataclass(frozen=True, slots=True)
class TaxLine:
    rate: Decimal
    amount: Decimal
    behavior: str  # exclusive: added on top; inclusive: part of the subtotal
    exempt: bool
    calculated_by: Literal["plg", "stripe"]  # stripe: Stripe Tax decides, ours is the estimate
    # Whom the tax is judged for (customers' tax settings, `plg customers update --tax-...`): the region,
    # why it is exempt (the customer itself, or its region in the price book's exempt_regions) and the
    # customer's tax id (a VAT number, ...) as the invoice shows it.
    region: str | None = None
    exempt_by: Literal["customer", "region"] | None = None
    tax_id: str | None = None
    tax_id_type: str | None = None


@dataclass(frozen=True, slots=True)
class Invoice:
    customer_id: str
    plan: str
    price_version: str
    currency: str
    period: Period
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal
    tax: TaxLine
    total: Decimal
    status: Literal["draft", "final"] = "draft"
    # The billing period (the base price's cycle) the invoice belongs to: ``period`` itself for a monthly
    # price; the year (or custom interval) around it when usage is billed monthly under a longer window.
    billing_period: Period | None = None

    def line(self, meter: str) -> InvoiceLine | None:
        return next((ln for ln in self.lines if ln.meter == meter), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: amounts as strings (exact, no float), times as ISO 8601 UTC."""
        return {
            "customer_id": self.customer_id,
            "plan": self.plan,
            "price_version": self.price_version,
            "currency": self.currency,
            "status": self.status,
            "period": {
                "start": self.period.start.isoformat().replace("+00:00", "Z"),
                "end": self.period.end.isoformat().replace("+00:00", "Z"),
            },
            "billing_period": {
                "start": (self.billing_period or self.period).start.isoformat().replace("+00:00", "Z"),
                "end": (self.billing_period or self.period).end.isoformat().replace("+00:00", "Z"),
            },
            "lines": [_line_dict(ln) for ln in self.lines],
            "subtotal": str(self.subtotal),
            "tax": {
                "rate": str(self.tax.rate),
                "amount": str(self.tax.amount),
                "behavior": self.tax.behavior,
                "exempt": self.tax.exempt,
                "calculated_by": self.tax.calculated_by,
                "region": self.tax.region,
                "exempt_by": self.tax.exempt_by,
                "tax_id": self.tax.tax_id,
                "tax_id_type": self.tax.tax_id_type,
            },
            "total": str(self.total),
        }


def _iso(at: Any) -> str:
    return str(at.isoformat().replace("+00:00", "Z"))


def _line_dict(line: InvoiceLine) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": line.kind,
        "description": line.description,
        "amount": str(line.amount),
        "exact_amount": str(line.exact_amount),
    }
    if line.credited:
        out["credited"] = str(line.credited)
    if line.kind == "adjustment" and line.corrects is not None:
        out.update(
            meter=line.meter,
            corrects_period={"start": _iso(line.corrects.start), "end": _iso(line.corrects.end)},
            usage_before=str(line.usage_before),
            usage_after=str(line.usage),
        )
    if line.kind == "usage":
        out.update(
            meter=line.meter,
            usage=str(line.usage),
            included=str(line.included),
            billable=str(line.billable),
        )
        if line.unit_price is not None:
            out["unit_price"] = str(line.unit_price)
        if line.packages is not None:
            out["package"] = {"size": str(line.package_size), "unit_price": str(line.package_price)}
            out["packages"] = str(line.packages)
        if line.tiers_mode is not None:
            out["tiers_mode"] = line.tiers_mode
            out["tiers"] = [
                {
                    "from": str(t.first_unit),
                    "up_to": None if t.up_to is None else str(t.up_to),
                    "quantity": str(t.quantity),
                    "unit_price": str(t.unit_price),
                    "flat_price": str(t.flat_price),
                    "amount": str(t.amount),
                }
                for t in line.tiers
            ]
    return out


def _usage_line(
    meter: str, price: MeterPrice | None, usage: Decimal, resolved: ResolvedPrice, credit: Decimal = ZERO
) -> InvoiceLine:
    if price is None:
        # Metered but not priced by this version (e.g. seats): shown, never charged.
        return InvoiceLine("usage", f"{meter} (not billed)", ZERO, ZERO, meter=meter, usage=usage)
    # Top-up units are used first: what they cover is neither included usage nor overage.
    credited = min(max(credit, ZERO), max(usage, ZERO))
    charge = explain_charge(price, usage - credited)
    return InvoiceLine(
        "usage",
        meter,
        charge.amount,
        round_money(charge.amount, resolved.minor_unit, resolved.rounding),
        meter=meter,
        usage=max(usage, ZERO),
        included=charge.included,
        billable=charge.billable,
        unit_price=charge.unit_price,
        package_size=price.package.size if price.package is not None else None,
        package_price=price.package.unit_price if price.package is not None else None,
        packages=charge.packages,
        tiers_mode=price.tiers_mode if price.tiers else None,
        tiers=charge.tiers,
        credited=credited,
    )


def calculate_invoice(
    *,
    customer_id: str,
    period: Period,
    price: ResolvedPrice,
    usage: Mapping[str, Decimal],
    tax_region: str | None = None,
    status: Literal["draft", "final"] = "draft",
    credits: Mapping[str, Decimal] | None = None,
    tax_exempt: bool = False,
    tax_id: tuple[str, str] | None = None,
    adjustments: Sequence[Adjustment] = (),
    billing_period: Period | None = None,
    opening: ResolvedPrice | None = None,
) -> Invoice:
    """The invoice of ``customer_id`` for ``period`` under ``price``; ``usage`` is each meter's value for
    the period (a meter missing from it had no usage). The base price is charged per period, whatever
    the period's length (a 28-day February costs what a 31-day March does, as with Stripe).
    ``tax_exempt``: the customer itself is exempt; ``tax_id``: its ``(type, value)``, shown on the invoice.

    Billing windows: ``period`` is the usage period; under an annual or custom window with usage billed
    monthly, ``billing_period`` is the longer period around it, and the base price is on the invoice of
    its first month only (charged once per billing period, as Stripe charges a yearly licensed price at
    the start of its year); the other months' base line is 0 and says so.

    ``opening``: the price whose base the period pays when the plan changed inside it — the one in force
    at its start, which Stripe charged in advance then and does not revisit with ``proration_behavior``
    none (docs/billing.md "Period close"); usage is priced by ``price``, the plan at the period's end."""
    cycle = billing_period or period
    base = opening or price
    base_exact = base.base_price if cycle.start_ms == period.start_ms else ZERO
    what = f"{base.plan} base price ({base.version})"
    if opening is not None:
        what += ", the plan at the period's start"
    if price.period_months > 1:
        start, end = cycle.start.date().isoformat(), cycle.end.date().isoformat()
        what += f", {price.billing_window} from {start} to {end}"
        if not base_exact and price.base_price:
            what += ": billed with its first month"
    lines = [InvoiceLine("base", what, base_exact, round_money(base_exact, base.minor_unit, base.rounding))]
    # Sorted: the same inputs give the same invoice, whatever order the usage arrived in.
    for meter in sorted(set(price.meters) | set(usage)):
        credit = (credits or {}).get(meter, ZERO)
        lines.append(_usage_line(meter, price.meters.get(meter), usage.get(meter, ZERO), price, credit))
    # Corrections of closed periods: already money (differences of rounded lines), added as they are.
    for adj in sorted(adjustments, key=lambda a: (a.corrects.start_ms, a.meter)):
        lines.append(
            InvoiceLine(
                "adjustment",
                f"{adj.meter} correction of {adj.corrects.start.date().isoformat()}",
                adj.amount,
                adj.amount,
                meter=adj.meter,
                usage=adj.usage_after,
                corrects=adj.corrects,
                usage_before=adj.usage_before,
            )
        )
    subtotal = sum((ln.amount for ln in lines), ZERO)
    tax = _tax(price, subtotal, tax_region, tax_exempt, tax_id)
    total = subtotal + tax.amount if tax.behavior == "exclusive" else subtotal
    return Invoice(
        customer_id=customer_id,
        plan=price.plan,
        price_version=price.version,
        currency=price.currency,
        period=period,
        lines=tuple(lines),
        subtotal=subtotal,
        tax=tax,
        total=total,
        status=status,
        billing_period=billing_period,
    )


def line_difference(
    price: ResolvedPrice, meter: str, usage_before: Decimal, usage_after: Decimal, credit: Decimal = ZERO
) -> Decimal:
    """What re-rating ``meter``'s line from ``usage_before`` to ``usage_after`` changes, in money: the
    rounded line after less the rounded line before (so the closed invoice plus its adjustments always
    equals the invoice the corrected usage would have had, to the cent)."""
    mp = price.meters.get(meter)
    before = _usage_line(meter, mp, usage_before, price, credit)
    after = _usage_line(meter, mp, usage_after, price, credit)
    return after.amount - before.amount


def _tax(
    price: ResolvedPrice,
    subtotal: Decimal,
    region: str | None,
    customer_exempt: bool = False,
    tax_id: tuple[str, str] | None = None,
) -> TaxLine:
    rule = price.tax
    by: Literal["plg", "stripe"] = "stripe" if rule.stripe_tax else "plg"
    kind, number = tax_id if tax_id else (None, None)
    exempt_by: Literal["customer", "region"] | None = (
        "customer" if customer_exempt else "region" if rule.exempt(region) else None
    )
    rate = ZERO if exempt_by else rule.default_rate
    # Inclusive: the prices already contain the tax, so it is the part of the subtotal above net.
    exact = subtotal - subtotal / (1 + rate) if rule.behavior == "inclusive" else subtotal * rate
    return TaxLine(
        rate,
        round_money(exact, price.minor_unit, Rounding.NEAREST),
        rule.behavior,
        exempt_by is not None,
        by,
        region=region,
        exempt_by=exempt_by,
        tax_id=number,
        tax_id_type=kind,
    )
