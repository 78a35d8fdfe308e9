"""Property tests (hypothesis) of the invoice maths: tiers, packages, rounding once per line."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.plans.invoice import calculate_invoice, round_money
from services.plans.model import MeterPrice, Package, ResolvedPrice, Rounding, TaxRule, Tier
from services.plans.periods import Period
from services.plans.pricing import explain_charge, usage_charge

settings.register_profile("plg", max_examples=200, deadline=None)
settings.load_profile("plg")

quantities = st.decimals(min_value=0, max_value=10**9, places=3, allow_nan=False, allow_infinity=False)
prices = st.decimals(min_value=0, max_value=100, places=6, allow_nan=False, allow_infinity=False)
amounts = st.decimals(min_value=0, max_value=10**7, places=9, allow_nan=False, allow_infinity=False)


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.sets(st.integers(min_value=1, max_value=10**8), min_size=0, max_size=4)))
    ups: list[Decimal | None] = [Decimal(b) for b in bounds]
    ups.append(None)
    return tuple(
        Tier(up_to=u, unit_price=draw(prices), flat_price=draw(st.sampled_from([Decimal(0), Decimal(5)])))
        for u in ups
    )


@given(tier_lists(), quantities, quantities)
def test_graduated_charge_never_falls_as_usage_grows(tiers, a, b):
    price = MeterPrice(tiers=tiers)
    low, high = sorted((a, b))
    assert usage_charge(price, low) <= usage_charge(price, high)


@given(tier_lists(), quantities)
def test_graduated_tiers_slice_the_usage_exactly(tiers, usage):
    charge = explain_charge(MeterPrice(tiers=tiers), usage)
    assert sum((t.quantity for t in charge.tiers), Decimal(0)) == usage
    assert charge.amount == sum((t.quantity * t.unit_price + t.flat_price for t in charge.tiers), Decimal(0))
    for t in charge.tiers:
        assert t.quantity > 0
        assert t.up_to is None or t.first_unit + t.quantity <= t.up_to


@given(tier_lists(), quantities)
def test_volume_tiers_price_every_unit_at_one_rate(tiers, usage):
    charge = explain_charge(MeterPrice(tiers=tiers, tiers_mode="volume"), usage)
    if usage == 0:
        assert charge.amount == 0
        return
    (tier,) = charge.tiers
    source = tiers[tier.index]
    assert source.up_to is None or usage <= source.up_to
    assert tier.index == 0 or usage > tiers[tier.index - 1].up_to  # type: ignore[operator]
    assert charge.amount == usage * source.unit_price + source.flat_price


@given(prices, quantities)
def test_graduated_tiers_at_one_rate_equal_a_flat_rate(rate, usage):
    tiers = (
        Tier(up_to=Decimal(100), unit_price=rate),
        Tier(up_to=Decimal(10_000), unit_price=rate),
        Tier(unit_price=rate),
    )
    assert usage_charge(MeterPrice(tiers=tiers), usage) == usage * rate


@given(quantities, quantities, st.integers(min_value=1, max_value=10**6), prices)
def test_packages_are_started_blocks_of_the_billable_usage(usage, included, size, unit_price):
    price = MeterPrice(included=included, package=Package(size=Decimal(size), unit_price=unit_price))
    charge = explain_charge(price, usage)
    billable = max(usage - included, Decimal(0))
    assert charge.packages is not None
    assert (
        charge.packages - 1
    ) * size < billable <= charge.packages * size or billable == charge.packages == 0
    assert charge.amount == charge.packages * unit_price


@given(quantities, quantities, prices)
def test_overage_is_only_beyond_the_included_usage(usage, included, rate):
    charge = explain_charge(MeterPrice(included=included, overage_unit_price=rate), usage)
    assert charge.billable == max(usage - included, 0)
    assert charge.amount == charge.billable * rate


@given(amounts, st.sampled_from([0, 2, 3]))
def test_rounding_rules_bracket_the_exact_amount(exact, minor_unit):
    unit = Decimal(1).scaleb(-minor_unit)
    floor = round_money(exact, minor_unit, Rounding.FLOOR)
    ceil = round_money(exact, minor_unit, Rounding.CEIL)
    nearest = round_money(exact, minor_unit, Rounding.NEAREST)
    for r in (floor, ceil, nearest):
        assert r == r.quantize(unit)  # whole minor units
        assert abs(r - exact) < unit
    assert floor <= exact <= ceil
    assert floor <= nearest <= ceil
    assert abs(nearest - exact) <= unit / 2


def _price(rounding: Rounding, meters: dict[str, MeterPrice], base: Decimal, rate: Decimal) -> ResolvedPrice:
    return ResolvedPrice(
        plan="p",
        version="p-1",
        effective_date=date(2025, 1, 1),
        currency="USD",
        minor_unit=2,
        base_price=base,
        rounding=rounding,
        tax=TaxRule(default_rate=rate),
        meters=meters,
    )


@given(
    st.sampled_from(list(Rounding)),
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), quantities, max_size=4),
    prices,
    tier_lists(),
    st.decimals(min_value=0, max_value=Decimal("0.3"), places=4),
)
def test_an_invoice_adds_up_and_each_line_is_rounded_once(rounding, usage, rate, tiers, tax_rate):
    meters = {
        "a": MeterPrice(included=Decimal(10), overage_unit_price=rate),
        "b": MeterPrice(tiers=tiers),
        "c": MeterPrice(package=Package(size=Decimal(7), unit_price=rate)),
    }
    price = _price(rounding, meters, Decimal("19.99"), tax_rate)
    inv = calculate_invoice(customer_id="x", period=Period(0, 1), price=price, usage=usage)
    assert inv.subtotal == sum((ln.amount for ln in inv.lines), Decimal(0))
    assert inv.total == inv.subtotal + inv.tax.amount
    for line in inv.lines:
        assert line.amount == round_money(line.exact_amount, 2, rounding)
    again = calculate_invoice(customer_id="x", period=Period(0, 1), price=price, usage=dict(usage))
    assert again == inv
