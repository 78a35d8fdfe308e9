"""The meters-and-plans file: the default loads, and every error in a bad file is reported at once."""

from __future__ import annotations

import copy
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from services.plans import Aggregation, ConfigError, load_config, parse_config
from services.plans.loader import DEFAULT_CONFIG_PATH

VALID = {
    "version": 2,
    "effective_date": "2025-03-01",
    "currency": "EUR",
    "meters": [
        {"slug": "api_requests", "event": "api_call_made", "aggregation": "COUNT", "unit": "request"},
        {"slug": "gb", "event": "stored", "aggregation": "MAX", "value_property": "gb", "unit": "GB"},
    ],
    "plans": [
        {
            "slug": "free",
            "name": "Free",
            "upgrade_to": "pro",
            "features": {"sso": False},
            "meters": {"api_requests": {"limit": 1000, "hard_limit": True}},
        },
        {
            "slug": "pro",
            "name": "Pro",
            "features": {"sso": True},
            "meters": {"api_requests": {"included": 50000, "limit": 50000, "overage_unit_price": "0.001"}},
        },
    ],
}


def test_default_config_mirrors_the_seed_plans():
    config = load_config(DEFAULT_CONFIG_PATH)
    api = config.meter("api_requests")
    assert api is not None
    assert api.event == "api_call_made"
    assert api.aggregation is Aggregation.COUNT
    free = config.plan("free")
    pro = config.plan("pro")
    assert free is not None
    assert pro is not None
    assert free.meters["api_requests"].limit == 1000
    assert free.meters["api_requests"].hard_limit
    assert (pro.meters["api_requests"].limit, pro.meters["api_requests"].hard_limit) == (50000, False)
    pro_price = config.price_for("pro", date(2025, 7, 1))
    assert pro_price is not None
    pro_api = pro_price.meters["api_requests"]
    assert (pro_api.included, pro_api.overage_unit_price) == (50000, Decimal("0.001"))
    # The seeds' pricing-config-v2 set, priced.
    for slug, base, included, rate in (
        ("starter", "29.00", 10000, "0.005"),
        ("growth", "99.00", 100000, "0.003"),
    ):
        price = config.price_for(slug, date(2025, 7, 1))
        assert price is not None
        assert price.base_price == Decimal(base)
        assert price.meters["api_requests"].included == included
        assert price.meters["api_requests"].overage_unit_price == Decimal(rate)
    assert config.tax.exempt_regions == ("US-DE", "US-OR")
    # Every aggregation is exercised by the default meters.
    assert {m.aggregation for m in config.meters} == set(Aggregation)


def test_a_valid_document_parses_with_exact_decimals():
    config = parse_config(VALID)
    assert config.version == 2
    assert str(config.effective_date) == "2025-03-01"
    pro = config.plan("pro")
    assert pro is not None
    assert pro.meters["api_requests"].overage_unit_price == Decimal("0.001")
    assert config.meters_for_event("api_call_made")[0].slug == "api_requests"


def test_every_error_in_the_file_is_reported_at_once():
    bad = copy.deepcopy(VALID)
    bad["currency"] = "euro"
    bad["meters"][0]["aggregation"] = "AVERAGE"
    bad["meters"][1]["value_property"] = None  # MAX needs a value
    bad["meters"].append({"slug": "Bad-Slug", "event": "x", "aggregation": "COUNT", "unit": "u"})
    bad["plans"][0]["meters"]["nope"] = {"limit": 1}
    bad["plans"][0]["upgrade_to"] = "platinum"
    bad["plans"][1]["meters"]["api_requests"]["hard_limt"] = True
    bad["extra"] = 1
    with pytest.raises(ConfigError) as info:
        parse_config(bad, "test.yaml")
    text = "\n".join(info.value.errors)
    for expected in (
        "extra: unknown key",
        "meters[0] (api_requests).aggregation",
        "meters[1] (gb)",
        "needs a value_property",
        "meters[2] (Bad-Slug).slug",
        "plans[1] (pro).meters.api_requests.hard_limt",
        "currency",
    ):
        assert expected in text, f"{expected!r} missing from:\n{text}"
    assert "test.yaml" in str(info.value)


def test_cross_reference_errors_are_all_reported():
    bad = copy.deepcopy(VALID)
    bad["plans"][0]["meters"]["nope"] = {"limit": 1}
    bad["plans"][0]["upgrade_to"] = "platinum"
    bad["plans"][1]["upgrade_to"] = "pro"
    bad["plans"][1]["features"]["api_requests"] = True
    bad["meters"].append(dict(bad["meters"][0]))
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    text = "\n".join(info.value.errors)
    assert "meters: duplicate slug(s) ['api_requests']" in text
    assert "plans[0] (free).meters.nope: no meter" in text
    assert "unknown plan 'platinum'" in text
    assert "cannot upgrade to itself" in text
    assert "cannot share a meter's slug" in text
    assert len(info.value.errors) == 5


@pytest.mark.parametrize(
    ("allowance", "message"),
    [
        ({"hard_limit": True}, "hard_limit needs a limit"),
        ({"overage_unit_price": "1", "tiers": [{"unit_price": "1"}]}, "either tiers or overage_unit_price"),
        ({"tiers": [{"up_to": 10, "unit_price": "1"}]}, "last tier must have up_to: null"),
        (
            {
                "tiers": [
                    {"up_to": 10, "unit_price": "1"},
                    {"up_to": 5, "unit_price": "1"},
                    {"unit_price": "0"},
                ]
            },
            "strictly increasing",
        ),
        ({"limit": -1}, "greater than or equal to 0"),
    ],
)
def test_inconsistent_plan_allowances_are_refused(allowance, message):
    bad = copy.deepcopy(VALID)
    bad["plans"][1]["meters"]["api_requests"] = allowance
    with pytest.raises(ConfigError, match=message):
        parse_config(bad)


def test_count_meters_take_no_value_and_event_fields_are_only_for_unique_counts():
    bad = copy.deepcopy(VALID)
    bad["meters"][0]["value_property"] = "n"
    bad["meters"][1]["value_property"] = "$user_id"
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    text = "\n".join(info.value.errors)
    assert "takes no value_property" in text
    assert "only UNIQUE_COUNT can meter it" in text


def test_unreadable_and_malformed_files_are_clear_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("meters: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(empty)


def test_the_path_comes_from_the_environment(tmp_path: Path, monkeypatch):
    custom = tmp_path / "custom.yaml"
    custom.write_text(yaml.safe_dump({**VALID, "version": 7}))
    monkeypatch.setenv("PLG_METERING_CONFIG", str(custom))
    assert load_config().version == 7
