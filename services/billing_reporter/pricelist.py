"""The public price list: ``GET /v1/plans`` — what a PLG app's pricing page and upgrade modal render.

Seed 003's quick start ("expose a read-only API for entitlement and billing calculators"): every plan of
the price book (``deploy/config/metering.yaml``, ``services/plans``) with the price version in effect
today, its base price, each meter's included usage and overage, tiers or packages, and the plan's
features and limits, exactly as the book says — money and quantities as the book's decimal strings, never
floats. A plan sold by contract (``custom_contract``) is listed with ``contact_sales: true`` and no price.

Public (no credential: it is what a pricing page shows to anyone) and cacheable: the body is a pure
function of the price book and the day (the day decides which version is current), so its strong ETag is
a hash of the bytes; ``If-None-Match`` with it answers 304 without a body.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header
from pydantic import BaseModel, Field
from starlette.responses import Response

from services.plans.model import MeterPrice, Plan, PlansConfig

_JSON = "application/json"
# Shared caches may keep it five minutes, then revalidate with the ETag (a price version taking effect at
# midnight UTC shows within five minutes of it).
CACHE_CONTROL = "public, max-age=300, must-revalidate"


def _dec(value: Decimal | None) -> str | None:
    # str() of a Decimal is the book's own spelling ("39.00" stays "39.00", 50000 stays "50000").
    return None if value is None else str(value)


def _meter_price(meter: MeterPrice, unit: str) -> dict[str, Any]:
    if meter.tiers:
        pricing = "tiers"
    elif meter.package is not None:
        pricing = "package"
    elif meter.overage_unit_price is not None:
        pricing = "overage"
    else:
        pricing = "included_only"
    return {
        "unit": unit,
        "pricing": pricing,
        "included": _dec(meter.included),
        "overage_unit_price": _dec(meter.overage_unit_price),
        "tiers_mode": meter.tiers_mode if meter.tiers else None,
        "tiers": [
            {"up_to": _dec(t.up_to), "unit_price": _dec(t.unit_price), "flat_price": _dec(t.flat_price)}
            for t in meter.tiers
        ],
        "package": (
            None
            if meter.package is None
            else {"size": _dec(meter.package.size), "unit_price": _dec(meter.package.unit_price)}
        ),
    }


def _plan(config: PlansConfig, plan: Plan, today: date) -> dict[str, Any]:
    units = {m.slug: m.unit for m in config.meters}
    entry: dict[str, Any] = {
        "slug": plan.slug,
        "name": plan.name,
        "upgrade_to": plan.upgrade_to,
        "contact_sales": plan.custom_contract,
        "features": dict(plan.features),
        "limits": {
            slug: {"limit": _dec(m.limit), "hard_limit": m.hard_limit, "unit": units.get(slug, "")}
            for slug, m in plan.meters.items()
        },
        "price": None,
    }
    if plan.custom_contract:
        # Negotiated per customer: the book's list price is the sales team's starting point, not an offer.
        return entry
    price = config.price_for(plan.slug, today)
    if price is None:
        return entry
    entry["price"] = {
        "version": price.version,
        "effective_date": price.effective_date.isoformat(),
        "currency": price.currency,
        "base_price": _dec(price.base_price),
        # Seed 003's meteringWindow: the base price is per billing period of interval_months months;
        # included usage, overage and tiers per month or per billing period (usage_billing).
        "billing_window": price.billing_window,
        "interval_months": price.period_months,
        "usage_billing": price.usage_billing,
        "rounding": price.rounding.value,
        "tax_behavior": price.tax.behavior,
        "meters": {slug: _meter_price(m, units.get(slug, "")) for slug, m in price.meters.items()},
    }
    return entry


def price_list(config: PlansConfig, today: date) -> dict[str, Any]:
    """The document ``GET /v1/plans`` serves on ``today`` (UTC): every plan in the book's order."""
    return {
        "price_book_version": config.version,
        "currency": config.currency,
        "plans": [_plan(config, plan, today) for plan in config.plans],
    }


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` uses the weak comparison (RFC 9110 §13.1.2): ``W/"x"`` matches ``"x"``."""
    if not header:
        return False
    return header.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in header.split(",")]


class _Rendered:
    """The body and ETag of one day, rendered once (the book is fixed for the process's life)."""

    def __init__(self, config: PlansConfig) -> None:
        self.config = config
        self.day: date | None = None
        self.body = b""
        self.etag = ""

    def on(self, today: date) -> tuple[bytes, str]:
        if today != self.day:
            body = orjson.dumps(price_list(self.config, today))
            self.day, self.body, self.etag = today, body, etag_of(body)
        return self.body, self.etag


# -- OpenAPI: the answer's shape (documentation; the handler writes the bytes itself) -----------------------


class TierDoc(BaseModel):
    up_to: str | None = Field(description="Units up to this bound (inclusive); null: no upper bound.")
    unit_price: str
    flat_price: str


class PackageDoc(BaseModel):
    size: str = Field(description="Units per package; each started package costs unit_price.")
    unit_price: str


class MeterPriceDoc(BaseModel):
    unit: str
    pricing: Literal["overage", "tiers", "package", "included_only"]
    included: str = Field(description="Usage included in the base price, per period.")
    overage_unit_price: str | None
    tiers_mode: Literal["graduated", "volume"] | None
    tiers: list[TierDoc]
    package: PackageDoc | None


class PriceDoc(BaseModel):
    version: str
    effective_date: str
    currency: str
    base_price: str = Field(description="Per billing period, a decimal string.")
    billing_window: Literal["monthly", "annual", "custom"]
    interval_months: int = Field(description="The billing period's length: 1, 12, or a custom interval.")
    usage_billing: Literal["monthly", "per_period"] = Field(
        description="Included usage, overage and tiers apply per month, or per billing period."
    )
    rounding: Literal["ceil", "floor", "nearest"]
    tax_behavior: Literal["exclusive", "inclusive"]
    meters: dict[str, MeterPriceDoc]


class LimitDoc(BaseModel):
    limit: str | None = Field(description="Usage allowed per period; null: unlimited.")
    hard_limit: bool
    unit: str


class PlanDoc(BaseModel):
    slug: str
    name: str
    upgrade_to: str | None
    contact_sales: bool = Field(description="Sold by contract: no price, talk to sales.")
    features: dict[str, bool]
    limits: dict[str, LimitDoc]
    price: PriceDoc | None = Field(description="The version in effect today; null when contact_sales.")


class PriceListDoc(BaseModel):
    price_book_version: int
    currency: str
    plans: list[PlanDoc]


def router(config: PlansConfig, public: Any, clock: Any = None) -> APIRouter:
    """The route, under ``public`` (the kernel's declared public policy); ``clock`` gives today (tests)."""
    rendered = _Rendered(config)
    today = clock or (lambda: datetime.now(UTC).date())
    api = APIRouter()

    @api.get(
        "/v1/plans",
        response_model=PriceListDoc,
        summary="The price list: every plan's current price, included usage, features and limits",
        responses={
            200: {"headers": {"ETag": {"schema": {"type": "string"}, "description": "Strong validator."}}},
            304: {"description": "Not modified since the ETag given in If-None-Match."},
        },
        dependencies=[Depends(public)],
    )
    async def plans(if_none_match: Annotated[str | None, Header()] = None) -> Response:
        """Every plan of the price book with the price version in effect today (UTC): base price, each
        meter's included usage, overage, tiers or packages, features and limits. Money is a decimal
        string. Plans sold by contract have `contact_sales: true` and no price. Send the `ETag` back in
        `If-None-Match`: an unchanged list answers 304 with no body."""
        body, etag = rendered.on(today())
        headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
        if etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=_JSON, headers=headers)

    return api
