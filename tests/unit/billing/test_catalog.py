"""The price book as Stripe prices: every version's base and metered prices, with Stripe's rounding
turned into the version's own, so Stripe's line amount equals plg's for every usage."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.billing_reporter.catalog import (
    CatalogError,
    desired_prices,
    lookup_key,
    metered_params,
    package_meter,
    package_meters,
)
from services.plans.invoice import round_money
from services.plans.loader import load_config
from services.plans.model import MeterPrice, Rounding
from services.plans.pricing import usage_charge
from services.stripe_emulator.billing import price_amount, round_minor

CONFIG = load_config(None)
METERS = {m: f"mtr_{m}" for m in [x.slug for x in CONFIG.meters] + list(package_meters(CONFIG))}


def _as_emulator_price(params: dict) -> dict:
    """The Stripe price the emulator would store for these create parameters."""
    if params.get("billing_scheme") == "tiered":
        tiers = [
            {
                "up_to": None if t["up_to"] == "inf" else Decimal(t["up_to"]),
                "unit_amount_decimal": t["unit_amount_decimal"],
                "flat_amount_decimal": t["flat_amount_decimal"],
            }
            for t in params["tiers"]
        ]
        return {"billing_scheme": "tiered", "tiers_mode": params["tiers_mode"], "_tiers": tiers}
    return {
        "billing_scheme": "per_unit",
        "unit_amount_decimal": params["unit_amount_decimal"],
        "transform_quantity": params.get("transform_quantity"),
    }


def test_every_version_gets_a_base_price_and_one_metered_price_per_priced_meter():
    wanted = {d.lookup_key: d for d in desired_prices(CONFIG, METERS)}
    assert wanted["plg_pro-2025-01_base"].params["unit_amount_decimal"] == "3900"
    assert wanted["plg_pro-2025-06_base"].params["unit_amount_decimal"] == "4900"
    assert {d.meter for d in wanted.values() if d.version == "starter-2025-06"} == {
        None, "api_requests", "storage_gb"
    }  # fmt: skip
    api = wanted[lookup_key("pro-2025-06", "api_requests")].params
    assert api["recurring"] == {"interval": "month", "usage_type": "metered", "meter": "mtr_api_requests"}
    assert api["tiers"][0] == {"up_to": "50000", "unit_amount_decimal": "0", "flat_amount_decimal": "0"}
    # ceil with a tenth of a cent per request: the overage tier carries the bias.
    assert api["tiers"][1]["flat_amount_decimal"] == "0.499999999999"
    enterprise = wanted[lookup_key("enterprise-2025-01", "compute_seconds")].params
    assert enterprise["tiers_mode"] == "volume"
    assert all(t["flat_amount_decimal"] == "0" for t in enterprise["tiers"])  # nearest: no bias
    # Packages over included usage: priced on the derived package meter, exactly.
    assert package_meters(CONFIG) == {"compute_seconds_packages_3600": ("compute_seconds", Decimal(3600))}
    compute = wanted[lookup_key("growth-2025-06", "compute_seconds_packages_3600")]
    assert (compute.meter, compute.exact) == ("compute_seconds_packages_3600", True)
    assert compute.params["recurring"]["meter"] == "mtr_compute_seconds_packages_3600"
    assert [(t["up_to"], t["unit_amount_decimal"]) for t in compute.params["tiers"]] == [
        ("100", "0"),
        ("inf", "50"),
    ]
    assert lookup_key("growth-2025-06", "compute_seconds") not in wanted


def test_floor_with_sub_cent_prices_is_refused():
    price = CONFIG.price_for("pro", CONFIG.effective_date).model_copy(update={"rounding": Rounding.FLOOR})
    with pytest.raises(CatalogError, match="floor"):
        metered_params("api_requests", price.meters["api_requests"], price, "mtr")


@settings(max_examples=300, deadline=None)
@given(
    usage=st.integers(min_value=0, max_value=20_000_000),
    version=st.sampled_from(["pro-2025-06", "starter-2025-06", "enterprise-2025-01", "growth-2025-06"]),
    meter=st.sampled_from(["api_requests", "storage_gb", "compute_seconds"]),
)
def test_stripe_line_amount_equals_plgs_for_every_whole_usage(usage: int, version: str, meter: str):
    plan = version.split("-")[0]
    price = next(p for p in CONFIG.price_versions(plan) if p.version == version)
    mp: MeterPrice | None = price.meters.get(meter)
    if mp is None or not mp.priced:
        return
    derived = package_meter(meter, mp)
    params, exact = metered_params(meter, mp, price, "mtr", billed_meter=derived and derived[0])
    assert exact
    # A package meter holds the packages started (what the reporter sends it), not the units.
    quantity = (
        Decimal(usage)
        if derived is None
        else (Decimal(usage) / derived[1]).to_integral_value(rounding=ROUND_CEILING)
    )
    ours = round_money(usage_charge(mp, Decimal(usage)), price.minor_unit, price.rounding)
    stripes = round_minor(price_amount(_as_emulator_price(params), quantity))
    assert Decimal(stripes) / 100 == ours
