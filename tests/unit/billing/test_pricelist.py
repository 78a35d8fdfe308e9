"""The price list document (``GET /v1/plans``): every plan of the book with the version in effect on the
day, money as the book's decimal strings, contract plans without prices; its ETag follows the bytes."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import orjson
import yaml

from services.billing_reporter.pricelist import etag_matches, etag_of, price_list
from services.plans.loader import config_path, load_config, parse_config

CONFIG = load_config(None)


def _plan(doc: dict, slug: str) -> dict:
    return next(p for p in doc["plans"] if p["slug"] == slug)


def test_every_plan_of_the_book_is_listed_with_its_current_version_as_the_book_says():
    doc = price_list(CONFIG, date(2026, 12, 5))
    assert [p["slug"] for p in doc["plans"]] == [p.slug for p in CONFIG.plans]
    assert doc["currency"] == "USD"
    assert doc["price_book_version"] == CONFIG.version
    pro = _plan(doc, "pro")
    assert pro["price"]["version"] == "pro-2025-06"  # the 39.00 version is grandfathered only
    assert pro["price"]["base_price"] == "49.00"
    assert pro["price"]["meters"]["api_requests"] == {
        "unit": "request", "pricing": "overage", "included": "50000", "overage_unit_price": "0.001",
        "tiers_mode": None, "tiers": [], "package": None,
    }  # fmt: skip
    assert pro["features"] == {"api_access": True, "sso": True, "audit_log": False, "priority_support": False}
    assert pro["limits"]["seats"] == {"limit": "50", "hard_limit": True, "unit": "seat"}
    assert pro["limits"]["active_users"] == {"limit": None, "hard_limit": False, "unit": "user"}
    growth = _plan(doc, "growth")["price"]["meters"]["compute_seconds"]
    assert growth["pricing"] == "package"
    assert growth["included"] == "360000"
    assert growth["package"] == {"size": "3600", "unit_price": "0.50"}
    free = _plan(doc, "free")
    assert free["price"]["base_price"] == "0"
    assert free["price"]["meters"] == {}
    assert free["limits"]["api_requests"] == {"limit": "1000", "hard_limit": True, "unit": "request"}
    # Before pro-2025-06 took effect the older version was the current one.
    assert _plan(price_list(CONFIG, date(2025, 5, 31)), "pro")["price"]["base_price"] == "39.00"


def test_a_contract_plan_says_contact_sales_and_shows_no_price():
    enterprise = _plan(price_list(CONFIG, date(2026, 12, 5)), "enterprise")
    assert enterprise["contact_sales"] is True
    assert enterprise["price"] is None
    assert enterprise["features"]["audit_log"] is True
    assert "999" not in orjson.dumps(enterprise).decode()


def test_tiers_are_listed_as_the_book_has_them(tmp_path: Path):
    raw = yaml.safe_load(config_path(None).read_text())
    enterprise = next(p for p in raw["plans"] if p["slug"] == "enterprise")
    enterprise["custom_contract"] = False  # a tiered plan sold self-serve
    config = parse_config(raw)
    meters = _plan(price_list(config, date(2026, 1, 1)), "enterprise")["price"]["meters"]
    assert meters["api_requests"]["pricing"] == "tiers"
    assert meters["api_requests"]["tiers_mode"] == "graduated"
    assert meters["api_requests"]["tiers"] == [
        {"up_to": "1000000", "unit_price": "0", "flat_price": "0"},
        {"up_to": "10000000", "unit_price": "0.0005", "flat_price": "0"},
        {"up_to": None, "unit_price": "0.0002", "flat_price": "0"},
    ]
    assert meters["compute_seconds"]["tiers_mode"] == "volume"


def test_the_etag_is_strong_and_if_none_match_compares_weakly():
    body = orjson.dumps(price_list(CONFIG, date(2026, 12, 5)))
    etag = etag_of(body)
    assert etag.startswith('"')
    assert not etag.startswith("W/")
    assert etag_of(body) == etag
    assert etag != etag_of(orjson.dumps(price_list(CONFIG, date(2025, 5, 31))))
    assert etag_matches(etag, etag)
    assert etag_matches(f"W/{etag}", etag)
    assert etag_matches(f'"other", {etag}', etag)
    assert etag_matches("*", etag)
    assert not etag_matches('"other"', etag)
    assert not etag_matches(None, etag)
