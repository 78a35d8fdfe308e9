"""``GET /v1/plans`` on a running billing reporter: public (no credential), the book's current prices as
exact decimal strings, a strong ETag that ``If-None-Match`` turns into a 304, readable from any origin,
and its schema in the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

from services.billing_reporter.pricelist import price_list
from services.plans.loader import config_path, load_config
from tests.integration.billing.harness import Billing


def test_the_price_list_is_public_current_exact_and_cacheable(billing: Billing, tmp_path: Path):
    # A book where pro has a version that takes effect only in 2999: the list shows today's, not it.
    raw = yaml.safe_load(config_path().read_text())
    pro = next(p for p in raw["plans"] if p["slug"] == "pro")
    pro["prices"].append({**pro["prices"][-1], "version": "pro-2999-01", "effective_date": "2999-01-01",
                          "base_price": "59.00"})  # fmt: skip
    book = tmp_path / "metering.yaml"
    book.write_text(yaml.safe_dump(raw))
    reporter = billing.start_reporter(config_path=book)

    answer = httpx.get(f"{reporter.url}/v1/plans", timeout=10)  # no credential at all
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body == price_list(load_config(book), datetime.now(UTC).date())
    listed = {p["slug"]: p for p in body["plans"]}
    assert listed["pro"]["price"]["version"] == "pro-2025-06"
    assert listed["pro"]["price"]["base_price"] == "49.00"
    assert listed["starter"]["price"]["meters"]["storage_gb"]["overage_unit_price"] == "2.00"
    assert listed["enterprise"]["contact_sales"] is True
    assert listed["enterprise"]["price"] is None

    etag = answer.headers["etag"]
    assert etag.startswith('"')
    assert "public" in answer.headers["cache-control"]
    again = httpx.get(f"{reporter.url}/v1/plans", headers={"If-None-Match": etag}, timeout=10)
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    weak = httpx.get(f"{reporter.url}/v1/plans", headers={"If-None-Match": f'"x", W/{etag}'}, timeout=10)
    assert weak.status_code == 304
    stale = httpx.get(f"{reporter.url}/v1/plans", headers={"If-None-Match": '"stale"'}, timeout=10)
    assert (stale.status_code, stale.json()) == (200, body)

    # A pricing page on another origin may read it, ETag included.
    page = httpx.get(f"{reporter.url}/v1/plans", headers={"Origin": "https://www.example.com"}, timeout=10)
    assert page.headers["access-control-allow-origin"] == "https://www.example.com"
    assert "etag" in page.headers["access-control-expose-headers"].lower()

    spec = httpx.get(f"{reporter.url}/openapi.json", timeout=10).json()
    ok = spec["paths"]["/v1/plans"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/PriceListDoc"}
    schemas = spec["components"]["schemas"]
    assert schemas["PlanDoc"]["properties"]["contact_sales"]["type"] == "boolean"
    assert "304" in spec["paths"]["/v1/plans"]["get"]["responses"]
