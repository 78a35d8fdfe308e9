"""The charge for a period's usage: overage beyond included usage, graduated and volume tiers."""

from __future__ import annotations

from decimal import Decimal

from services.plans.model import PlanMeter, Tier
from services.plans.pricing import usage_charge


def test_overage_is_charged_only_beyond_the_included_usage():
    pro = PlanMeter(included=Decimal(50000), limit=Decimal(50000), overage_unit_price=Decimal("0.001"))
    assert usage_charge(pro, Decimal(49999)) == 0
    assert usage_charge(pro, Decimal(50000)) == 0
    assert usage_charge(pro, Decimal(51234)) == Decimal("1.234")


def test_graduated_tiers_price_each_unit_at_its_tier():
    tiers = PlanMeter(
        tiers=(
            Tier(up_to=Decimal(100), unit_price=Decimal(0)),
            Tier(up_to=Decimal(200), unit_price=Decimal("0.5"), flat_price=Decimal(10)),
            Tier(unit_price=Decimal("0.1")),
        )
    )
    assert usage_charge(tiers, Decimal(100)) == 0
    assert usage_charge(tiers, Decimal(150)) == Decimal("35.0")
    assert usage_charge(tiers, Decimal(300)) == Decimal("70.0")


def test_volume_tiers_price_every_unit_at_the_tier_of_the_total():
    tiers = PlanMeter(
        tiers_mode="volume",
        tiers=(Tier(up_to=Decimal(100), unit_price=Decimal(1)), Tier(unit_price=Decimal("0.5"))),
    )
    assert usage_charge(tiers, Decimal(100)) == Decimal(100)
    assert usage_charge(tiers, Decimal(101)) == Decimal("50.5")


def test_no_price_means_no_charge():
    assert usage_charge(PlanMeter(limit=Decimal(10), hard_limit=True), Decimal(5)) == 0
    assert usage_charge(PlanMeter(overage_unit_price=Decimal(1)), Decimal(0)) == 0
