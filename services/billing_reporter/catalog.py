"""The price book in Stripe: ``plg billing sync-catalog`` (and the reporter at start) makes one Stripe
Product per plan and, per price version, a licensed base Price and one metered Price per priced meter,
linked to that meter's Stripe meter. Idempotent: each Price has a lookup key derived from the version and
the meter (``plg_<version>_<base|meter>``), found before anything is created, and created under an
Idempotency-Key derived from it. Stripe prices are immutable: a new price version makes new prices; old
ones stay for the customers grandfathered on them.

Parity (docs/billing.md "Parity to the cent"): Stripe rounds a line's exact amount once, half up, to the
minor unit; plg rounds once per line with the version's rule. ``nearest`` is Stripe's rule. For ``ceil``,
the first tier that charges per unit carries a flat amount of half a minor unit less 10^-12, which turns
Stripe's half-up rounding into ceiling (exact while unit prices have at most 11 decimals in minor units;
the tier is entered only when something is charged). ``floor`` with sub-minor-unit prices cannot be
expressed and is refused. Package pricing on top of included usage cannot be one Stripe price on the
meter itself (``transform_quantity`` excludes tiers), so it is priced on a **derived package meter**
(``<meter>_packages_<size>``, a Stripe ``last`` meter): the reporter sends it the number of packages the
period has started so far, ``ceil(period total / size)``, and the price is graduated tiers over packages
(the included packages free, then the package price) — exact when the included usage is a whole number
of packages; otherwise it falls back to a per-unit rate, marked inexact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg

from services.billing_reporter.meters import adopt_legacy_ids, sync_meters
from services.billing_reporter.stripe_gateway import StripeGateway
from services.plans.model import MeterPrice, PlansConfig, ResolvedPrice, Rounding

# Half a minor unit less 10^-12 (Stripe's unit_amount_decimal and flat_amount_decimal take 12 places).
CEIL_BIAS = Decimal("0.499999999999")
MAX_PLACES = 12


class CatalogError(ValueError):
    """The price book holds something Stripe's prices cannot express exactly (every one listed)."""


def decimal_str(value: Decimal) -> str:
    """Plain notation (never ``1E+2``), no trailing zeros: what Stripe's ``*_decimal`` fields take."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def package_meter_name(meter: str, size: Decimal) -> str:
    """The derived Stripe meter that counts started packages of ``size`` units of ``meter``."""
    return f"{meter}_packages_{int(size)}"


def package_meter(meter: str, mp: MeterPrice) -> tuple[str, Decimal] | None:
    """(derived meter, package size) when ``mp`` is package pricing on top of included usage that a
    package meter prices exactly (whole-unit size, included usage a whole number of packages)."""
    package = mp.package
    if package is None or not mp.included or _fractional(package.size):
        return None
    if _fractional(mp.included / package.size):
        return None
    return package_meter_name(meter, package.size), package.size


def package_meters(config: PlansConfig) -> dict[str, tuple[str, Decimal]]:
    """derived meter → (plg meter, package size), for every price version that needs one."""
    out: dict[str, tuple[str, Decimal]] = {}
    for plan in config.plans:
        for price in config.price_versions(plan.slug):
            for meter, mp in price.meters.items():
                found = package_meter(meter, mp)
                if found is not None:
                    out[found[0]] = (meter, found[1])
    return out


def lookup_key(version: str, meter: str | None) -> str:
    return f"plg_{version}_{meter or 'base'}"


def product_id(plan: str) -> str:
    return f"plg_plan_{plan}"


@dataclass(frozen=True, slots=True)
class DesiredPrice:
    """One Stripe Price the price book needs: its lookup key and the parameters that create it."""

    lookup_key: str
    plan: str
    version: str
    meter: str | None
    params: dict[str, Any] = field(hash=False)
    exact: bool = True


def _minor(amount: Decimal, price: ResolvedPrice) -> Decimal:
    return amount * (Decimal(10) ** price.minor_unit)


def _fractional(value: Decimal) -> bool:
    return value != value.to_integral_value()


def _tier(up_to: Decimal | None, unit: Decimal, flat: Decimal = Decimal(0)) -> dict[str, str]:
    return {
        "up_to": "inf" if up_to is None else decimal_str(up_to),
        "unit_amount_decimal": decimal_str(unit),
        "flat_amount_decimal": decimal_str(flat),
    }


def recurring(price: ResolvedPrice, *, usage: bool) -> dict[str, Any]:
    """Stripe's ``recurring[interval]``/``[interval_count]`` of a version's base price (its billing window:
    month, year, or N months) or of its metered prices (the usage period: a month when usage is billed
    monthly). An annual base with monthly usage is a mixed-interval subscription at Stripe (flexible
    billing mode, :func:`mixed_intervals`)."""
    if usage and price.usage_billing == "monthly":
        return {"interval": "month"}
    interval, count = price.stripe_interval
    # interval_count 1 is Stripe's default: left out, so a monthly version's Prices are as before.
    return {"interval": interval} if count == 1 else {"interval": interval, "interval_count": count}


def mixed_intervals(price: ResolvedPrice) -> bool:
    """Base and metered prices bill on different intervals (Stripe: ``billing_mode[type]=flexible``)."""
    return (
        price.period_months > 1
        and price.usage_billing == "monthly"
        and any(m.priced for m in price.meters.values())
    )


def metered_params(
    meter: str, mp: MeterPrice, price: ResolvedPrice, stripe_meter_id: str, *, billed_meter: str | None = None
) -> tuple[dict[str, Any], bool]:
    """The Stripe Price parameters of one meter's pricing in one version, and whether Stripe's amount
    equals plg's for every usage (raises :class:`CatalogError` when it cannot be made to).
    ``billed_meter`` is the Stripe meter's plg name when it is not ``meter`` (a derived package meter)."""
    priced_as = billed_meter or meter
    common: dict[str, Any] = {
        "currency": price.currency.lower(),
        "product": product_id(price.plan),
        "recurring": {**recurring(price, usage=True), "usage_type": "metered", "meter": stripe_meter_id},
        "lookup_key": lookup_key(price.version, priced_as),
        "nickname": f"{price.version} {priced_as}",
        "metadata": {"plg_plan": price.plan, "plg_price_version": price.version, "plg_meter": priced_as},
    }
    exact = True
    tiers: list[dict[str, str]]
    mode = "graduated"
    if mp.package is not None and not mp.included:
        size = mp.package.size
        if _fractional(size):
            raise CatalogError(f"{price.version}.{meter}: a package size must be whole units at Stripe")
        return (
            common
            | {
                "unit_amount_decimal": decimal_str(_minor(mp.package.unit_price, price)),
                "transform_quantity": {"divide_by": str(int(size)), "round": "up"},
            }
        ), True
    if mp.package is not None and billed_meter is not None:
        # The derived meter holds started packages: the included ones free, then the package price.
        tiers = [
            _tier(mp.included / mp.package.size, Decimal(0)),
            _tier(None, _minor(mp.package.unit_price, price)),
        ]
    elif mp.package is not None:
        # Included usage, then packages, with no package meter (included usage not whole packages):
        # transform_quantity cannot be combined with tiers at Stripe, so a per-unit rate, inexact.
        rate = _minor(mp.package.unit_price, price) / mp.package.size
        tiers = [
            _tier(mp.included, Decimal(0)),
            _tier(None, rate.quantize(Decimal(1).scaleb(1 - MAX_PLACES))),
        ]
        exact = False
    elif mp.tiers:
        mode = mp.tiers_mode
        tiers = [_tier(t.up_to, _minor(t.unit_price, price), _minor(t.flat_price, price)) for t in mp.tiers]
    else:
        unit = _minor(mp.overage_unit_price or Decimal(0), price)
        tiers = ([_tier(mp.included, Decimal(0))] if mp.included else []) + [_tier(None, unit)]
    for t in tiers:
        if t["up_to"] != "inf" and _fractional(Decimal(t["up_to"])):
            raise CatalogError(f"{price.version}.{meter}: tier bounds must be whole units at Stripe")
        if len(t["unit_amount_decimal"].partition(".")[2]) > MAX_PLACES - 1:
            raise CatalogError(f"{price.version}.{meter}: a unit price has more decimals than Stripe keeps")
    fractional = any(_fractional(Decimal(t["unit_amount_decimal"])) for t in tiers)
    if fractional and exact and price.rounding is Rounding.FLOOR:
        raise CatalogError(
            f"{price.version}.{meter}: rounding 'floor' with prices below a minor unit cannot be expressed"
            " at Stripe (it rounds half up); use 'nearest' or 'ceil' for this version"
        )
    if fractional and exact and price.rounding is Rounding.CEIL:
        targets = [t for t in tiers if Decimal(t["unit_amount_decimal"]) > 0]
        for t in targets if mode == "volume" else targets[:1]:
            t["flat_amount_decimal"] = decimal_str(Decimal(t["flat_amount_decimal"]) + CEIL_BIAS)
    return common | {"billing_scheme": "tiered", "tiers_mode": mode, "tiers": tiers}, exact


def desired_prices(config: PlansConfig, stripe_meters: dict[str, str]) -> list[DesiredPrice]:
    """Every Stripe Price the price book needs, oldest version first; every problem raised at once."""
    out: list[DesiredPrice] = []
    errors: list[str] = []
    for plan in config.plans:
        for price in config.price_versions(plan.slug):
            out.append(
                DesiredPrice(
                    lookup_key(price.version, None),
                    plan.slug,
                    price.version,
                    None,
                    {
                        "currency": price.currency.lower(),
                        "product": product_id(plan.slug),
                        "unit_amount_decimal": decimal_str(_minor(price.base_price, price)),
                        "recurring": {**recurring(price, usage=False), "usage_type": "licensed"},
                        "lookup_key": lookup_key(price.version, None),
                        "nickname": f"{price.version} base",
                        "metadata": {"plg_plan": plan.slug, "plg_price_version": price.version},
                    },
                )
            )
            for meter, mp in sorted(price.meters.items()):
                if not mp.priced:
                    continue
                derived = package_meter(meter, mp)
                billed = derived[0] if derived is not None else meter
                if billed not in stripe_meters:
                    errors.append(f"{price.version}.{billed}: no Stripe meter (run sync-meters)")
                    continue
                try:
                    params, exact = metered_params(
                        meter, mp, price, stripe_meters[billed], billed_meter=derived and derived[0]
                    )
                except CatalogError as exc:
                    errors.append(str(exc))
                    continue
                # A derived package meter's price is recorded under the derived meter's name: reconcile
                # reads its line's quantity as packages.
                out.append(
                    DesiredPrice(params["lookup_key"], plan.slug, price.version, billed, params, exact)
                )
    if errors:
        raise CatalogError("; ".join(errors))
    return out


@dataclass(frozen=True, slots=True)
class SyncedPrice:
    lookup_key: str
    plan: str
    version: str
    meter: str | None
    stripe_price_id: str
    action: str  # found | created
    exact: bool


def sync_catalog(
    gateway: StripeGateway,
    conn: psycopg.Connection[Any],
    config: PlansConfig,
    event_names: dict[str, str],
    levels: Iterable[str] = (),
) -> list[SyncedPrice]:
    """Meters, products and prices at Stripe for the whole price book; the price ids kept in
    ``billing_stripe_prices`` under the gateway's Stripe account. Safe to run again and from two processes
    at once."""
    account = gateway.account()
    meters = {s.meter: s.stripe_meter_id for s in sync_meters(gateway, conn, event_names, set(levels))}
    wanted = desired_prices(config, meters)
    for plan in config.plans:
        gateway.ensure_product(
            product_id(plan.slug), name=f"plg {plan.name}", metadata={"plg_plan": plan.slug}
        )
    found = gateway.prices_by_lookup_key([d.lookup_key for d in wanted])
    # Prices the book no longer needs (e.g. a version's inexact package price replaced by its package
    # meter's) stay at Stripe for the subscriptions that have them, but checkout stops using them.
    conn.execute(
        "DELETE FROM billing_stripe_prices WHERE stripe_account = %s AND lookup_key <> ALL(%s)",
        (account, [d.lookup_key for d in wanted]),
    )
    out = []
    for d in wanted:
        action = "found"
        price_id = found.get(d.lookup_key)
        if price_id is None:
            key = "plg_price_" + hashlib.sha256(d.lookup_key.encode()).hexdigest()[:40]
            price_id = gateway.create_price(d.params, idempotency_key=key)
            action = "created"
        conn.execute(
            "INSERT INTO billing_stripe_prices"
            " (stripe_account, lookup_key, plan, price_version, meter, stripe_price_id, exact)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (stripe_account, lookup_key) DO UPDATE SET"
            " stripe_price_id = EXCLUDED.stripe_price_id, exact = EXCLUDED.exact, synced_at = now()",
            (account, d.lookup_key, d.plan, d.version, d.meter, price_id, d.exact),
        )
        out.append(SyncedPrice(d.lookup_key, d.plan, d.version, d.meter, price_id, action, d.exact))
    return out


def version_prices(conn: psycopg.Connection[Any], version: str, account: str) -> dict[str | None, str]:
    """meter (None: the base) → Stripe price id of one price version in ``account``, as synced."""
    adopt_legacy_ids(conn, account)
    rows = conn.execute(
        "SELECT meter, stripe_price_id FROM billing_stripe_prices WHERE stripe_account = %s"
        " AND price_version = %s",
        (account, version),
    ).fetchall()
    return {meter: price_id for meter, price_id in rows}


def metered_prices(conn: psycopg.Connection[Any], account: str) -> dict[str, str]:
    """Stripe price id → the plg meter it bills, for every metered price synced in ``account``."""
    adopt_legacy_ids(conn, account)
    rows = conn.execute(
        "SELECT stripe_price_id, meter FROM billing_stripe_prices WHERE stripe_account = %s"
        " AND meter IS NOT NULL",
        (account,),
    ).fetchall()
    return {str(price_id): str(meter) for price_id, meter in rows}
