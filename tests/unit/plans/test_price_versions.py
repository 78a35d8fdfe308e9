"""Price versions: effective dates, grandfathering, defaults from the top level, all errors at once."""

from __future__ import annotations

import copy
from datetime import date
from decimal import Decimal

import pytest

from services.plans import ConfigError, parse_config
from services.plans.model import Rounding

DOC = {
    "version": 3,
    "effective_date": "2025-01-01",
    "currency": "EUR",
    "rounding": "floor",
    "tax": {"stripe_tax": False, "default_rate": "0.19", "exempt_regions": ["DE-BE"]},
    "meters": [{"slug": "api_requests", "event": "api_call_made", "aggregation": "COUNT", "unit": "request"}],
    "plans": [
        {
            "slug": "free",
            "name": "Free",
            "upgrade_to": "pro",
            "meters": {"api_requests": {"limit": 1000, "hard_limit": True}},
        },
        {
            "slug": "pro",
            "name": "Pro",
            "meters": {"api_requests": {"limit": 50000}},
            "prices": [
                {
                    "version": "pro-1",
                    "effective_date": "2025-01-01",
                    "base_price": "39",
                    "meters": {"api_requests": {"included": 50000, "overage_unit_price": "0.001"}},
                },
                {
                    "version": "pro-2",
                    "effective_date": "2025-06-01",
                    "base_price": "49",
                    "currency": "JPY",
                    "rounding": "nearest",
                    "meters": {
                        "api_requests": {"included": 50000, "package": {"size": 1000, "unit_price": "1"}}
                    },
                },
            ],
        },
    ],
}


def test_the_version_in_effect_at_the_period_start_applies_to_new_customers():
    config = parse_config(DOC)
    assert config.price_for("pro", date(2025, 5, 31)).version == "pro-1"  # type: ignore[union-attr]
    assert config.price_for("pro", date(2025, 6, 1)).version == "pro-2"  # type: ignore[union-attr]
    # Before the first version, the first one (a customer cannot be on no price at all).
    assert config.price_for("pro", date(2024, 1, 1)).version == "pro-1"  # type: ignore[union-attr]
    assert config.price_for("platinum", date(2025, 6, 1)) is None


def test_a_grandfathered_customer_keeps_their_version_until_moved():
    config = parse_config(DOC)
    kept = config.price_for("pro", date(2026, 1, 1), pinned_version="pro-1")
    assert kept is not None
    assert (kept.version, kept.base_price) == ("pro-1", Decimal(39))
    # A pin to another plan's version (the customer changed plan) does not apply.
    moved = config.price_for("pro", date(2026, 1, 1), pinned_version="free-v3")
    assert moved is not None
    assert moved.version == "pro-2"


def test_unset_currency_rounding_and_tax_come_from_the_top_level():
    config = parse_config(DOC)
    one, two = config.price_versions("pro")
    assert (one.currency, one.minor_unit, one.rounding) == ("EUR", 2, Rounding.FLOOR)
    assert (two.currency, two.minor_unit, two.rounding) == ("JPY", 0, Rounding.NEAREST)
    assert one.tax.default_rate == Decimal("0.19")
    assert one.tax.exempt("DE-BE")
    assert not one.tax.exempt("DE-BY")
    assert not one.tax.exempt(None)


def test_a_plan_without_prices_is_its_own_single_version():
    config = parse_config(DOC)
    (free,) = config.price_versions("free")
    assert (free.version, free.effective_date, free.base_price) == ("free-v3", date(2025, 1, 1), 0)
    assert free.meters["api_requests"].overage_unit_price is None


def test_every_pricing_error_is_reported_at_once():
    bad = copy.deepcopy(DOC)
    pro = bad["plans"][1]
    pro["base_price"] = "10"  # pricing given twice
    pro["prices"][0]["currency"] = "XXX"
    pro["prices"][1]["version"] = "pro-1"  # duplicate version id
    pro["prices"][1]["effective_date"] = "2024-01-01"  # out of order
    pro["prices"][1]["meters"]["nope"] = {}
    pro["prices"][1]["rounding"] = "bankers"
    pro["prices"][0]["meters"]["api_requests"]["tiers"] = [{"unit_price": "1"}]  # and overage
    bad["tax"]["exempt_regions"] = ["delaware"]
    bad["plans"][0]["prices"] = [
        {
            "version": "free-1",
            "effective_date": "2025-01-01",
            "meters": {"api_requests": {"package": {"size": 0, "unit_price": "1"}}},
        }
    ]
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    text = "\n".join(info.value.errors)
    for expected in (
        "tax.exempt_regions",
        "plans[1] (pro)",
        "rounding",
        "either tiers or overage_unit_price",
        "package.size",
    ):
        assert expected in text, f"{expected!r} missing from:\n{text}"
    # A plan that failed is not also an "unknown plan" for the plans upgrading to it.
    assert "unknown plan" not in text


def test_cross_reference_errors_of_prices_are_all_reported():
    bad = copy.deepcopy(DOC)
    pro = bad["plans"][1]
    pro["prices"][0]["currency"] = "XXX"
    pro["prices"][1]["version"] = "pro-1"
    pro["prices"][1]["meters"]["nope"] = {}
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    text = "\n".join(info.value.errors)
    assert "'XXX' has no known minor unit" in text
    assert "already used by plan 'pro'" in text
    assert "meters.nope: the plan does not list this meter" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda pro: pro.update(base_price="10"), "give its pricing only there, not also in base_price"),
        (
            lambda pro: pro["meters"]["api_requests"].update(overage_unit_price="1"),
            "not also in meters.api_requests",
        ),
        (
            lambda pro: pro["prices"][1].update(effective_date="2024-01-01"),
            "strictly increasing effective_date",
        ),
        (
            lambda pro: pro["prices"][0]["meters"]["api_requests"].update(
                package={"size": 10, "unit_price": "1"}
            ),
            "package pricing excludes",
        ),
    ],
)
def test_inconsistent_prices_are_refused(change, message):
    bad = copy.deepcopy(DOC)
    change(bad["plans"][1])
    with pytest.raises(ConfigError, match=message):
        parse_config(bad)
