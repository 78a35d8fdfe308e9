"""The meters-and-plans configuration model: what is metered, and what each plan includes and costs.

Pure data with validation. One file (``deploy/config/metering.yaml`` by default) is the single source of
truth, read by the metering aggregator, the entitlement API, billing and the ``plg`` CLI. Amounts are
``Decimal``; limits and included quantities are in the meter's unit.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SLUG_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_SLUG = re.compile(SLUG_PATTERN)

# Top-level event fields a meter can read as its value, besides the event's properties.
EVENT_FIELD_PREFIX = "$"
EVENT_FIELDS = frozenset({"$user_id", "$anonymous_id", "$session_id"})

THRESHOLD_PERCENTS = (80, 90, 100)

VERSION_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"

# Decimal places of each currency's minor unit (ISO 4217), the unit every invoice line is rounded to
# once. A currency missing here is a configuration error, not a silent 2.
CURRENCY_MINOR_UNITS: dict[str, int] = {
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "NZD": 2, "SEK": 2, "NOK": 2, "DKK": 2,
    "PLN": 2, "CZK": 2, "BRL": 2, "MXN": 2, "INR": 2, "SGD": 2, "HKD": 2, "CNY": 2, "ZAR": 2,
    "JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "HUF": 2,
    "KWD": 3, "BHD": 3, "JOD": 3, "OMR": 3, "TND": 3,
}  # fmt: skip


class Rounding(StrEnum):
    """How a line's exact amount becomes money: to the currency's minor unit, once per line."""

    CEIL = "ceil"
    FLOOR = "floor"
    NEAREST = "nearest"  # half away from zero (0.005 -> 0.01), the way card networks and Stripe round


class Aggregation(StrEnum):
    """How a meter folds events into a value (the Avro ``Aggregation`` symbols)."""

    SUM = "SUM"
    COUNT = "COUNT"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    MAX = "MAX"
    LATEST = "LATEST"


class _Strict(BaseModel):
    # Unknown keys are errors: a typo such as ``hard_limt`` must not silently mean "soft limit".
    model_config = ConfigDict(extra="forbid", frozen=True)


class Meter(_Strict):
    """One meter: which events it counts and how."""

    slug: str = Field(pattern=SLUG_PATTERN)
    event: str = Field(min_length=1, max_length=200, description="The event `name` this meter counts.")
    aggregation: Aggregation
    value_property: str | None = Field(
        default=None,
        description="Property holding the value (SUM, MAX, LATEST, UNIQUE_COUNT); $user_id, $anonymous_id "
        "and $session_id read the event's own fields.",
    )
    group_by: tuple[str, ...] = ()
    unit: str = Field(min_length=1, max_length=40)
    description: str = ""

    @model_validator(mode="after")
    def _value_property_matches_aggregation(self) -> Meter:
        if self.aggregation is Aggregation.COUNT:
            if self.value_property is not None:
                raise ValueError("a COUNT meter counts events and takes no value_property")
        elif not self.value_property:
            raise ValueError(f"a {self.aggregation.value} meter needs a value_property")
        elif self.value_property.startswith(EVENT_FIELD_PREFIX) and self.value_property not in EVENT_FIELDS:
            raise ValueError(f"value_property {self.value_property!r} is not one of {sorted(EVENT_FIELDS)}")
        if self.aggregation is not Aggregation.UNIQUE_COUNT and self.value_property in EVENT_FIELDS:
            raise ValueError(f"{self.value_property} is a string: only UNIQUE_COUNT can meter it")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by lists a property twice")
        if any(not g for g in self.group_by):
            raise ValueError("group_by names must not be empty")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.aggregation in (Aggregation.SUM, Aggregation.MAX, Aggregation.LATEST)


class Tier(_Strict):
    """One price tier: units up to ``up_to`` (inclusive; null = no upper bound) cost ``unit_price`` each."""

    up_to: Decimal | None = Field(default=None, gt=0)
    unit_price: Decimal = Field(ge=0)
    flat_price: Decimal = Field(default=Decimal(0), ge=0)


class Package(_Strict):
    """Package pricing: ``unit_price`` per started block of ``size`` billable units (Stripe's
    ``transform_quantity`` with ``round: up``): 1 001 units at size 1 000 are two packages."""

    size: Decimal = Field(gt=0)
    unit_price: Decimal = Field(ge=0)


class MeterPrice(_Strict):
    """How one meter's usage in one billing period is charged: included usage, then exactly one of an
    overage unit price, tiers (graduated or volume) or packages. No price at all means no charge."""

    included: Decimal = Field(default=Decimal(0), ge=0, description="Usage included in the base price.")
    overage_unit_price: Decimal | None = Field(
        default=None, ge=0, description="Price per unit above the included usage."
    )
    tiers: tuple[Tier, ...] = ()
    tiers_mode: Literal["graduated", "volume"] = "graduated"
    package: Package | None = None

    @model_validator(mode="after")
    def _one_price_model(self) -> MeterPrice:
        if self.tiers and self.overage_unit_price is not None:
            raise ValueError("give either tiers or overage_unit_price, not both")
        if self.package is not None and (self.tiers or self.overage_unit_price is not None):
            raise ValueError("package pricing excludes tiers and overage_unit_price")
        if self.tiers and self.included:
            raise ValueError("with tiers, express included usage as a first tier at unit_price 0")
        if self.tiers:
            bounds = [t.up_to for t in self.tiers]
            if bounds[-1] is not None:
                raise ValueError("the last tier must have up_to: null (no upper bound)")
            finite = [b for b in bounds[:-1] if b is not None]
            if len(finite) != len(bounds) - 1 or finite != sorted(set(finite)):
                raise ValueError("tier up_to bounds must be strictly increasing, only the last one null")
        return self

    @property
    def priced(self) -> bool:
        return bool(self.tiers) or self.overage_unit_price is not None or self.package is not None

    def price_only(self) -> MeterPrice:
        """The pricing part alone (a plan meter also carries limits)."""
        return MeterPrice.model_validate(self.model_dump(include=set(MeterPrice.model_fields)))


class PlanMeter(MeterPrice):
    """What a plan allows for one meter in one billing period, and (in a plan without ``prices``, the
    short form) what it charges."""

    limit: Decimal | None = Field(
        default=None, ge=0, description="Usage the plan allows per period; null = unlimited."
    )
    hard_limit: bool = Field(default=False, description="Refuse usage beyond the limit (else bill overage).")

    @model_validator(mode="after")
    def _limit_consistent(self) -> PlanMeter:
        if self.hard_limit and self.limit is None:
            raise ValueError("hard_limit needs a limit")
        return self

    @property
    def unlimited(self) -> bool:
        return self.limit is None


class TaxRule(_Strict):
    """Tax behaviour: Stripe Tax on (Stripe computes the tax on its invoice; ours shows
    ``default_rate`` as an estimate) or off (``default_rate`` applies), and regions exempt from tax
    (ISO 3166-2 codes like ``US-DE`` or countries like ``DE``)."""

    stripe_tax: bool = False
    default_rate: Decimal = Field(default=Decimal(0), ge=0, lt=1)
    # Whether prices include the tax (``inclusive``) or it is added on top (``exclusive``, Stripe's
    # default for usage prices).
    behavior: Literal["exclusive", "inclusive"] = "exclusive"
    exempt_regions: tuple[str, ...] = ()

    @field_validator("exempt_regions")
    @classmethod
    def _region_codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [r for r in value if not re.fullmatch(r"[A-Z]{2}(-[A-Z0-9]{1,3})?", r)]
        if bad:
            raise ValueError(f"exempt regions must be ISO 3166 codes like 'US-DE' or 'DE': {bad}")
        return value

    def exempt(self, region: str | None) -> bool:
        """A customer in ``US-DE`` is exempt when ``US-DE`` or ``US`` is listed."""
        if region is None:
            return False
        return region in self.exempt_regions or region.split("-", 1)[0] in self.exempt_regions


BillingWindow = Literal["monthly", "annual", "custom"]
UsageBilling = Literal["monthly", "per_period"]
#: Stripe's longest recurring interval (``interval_count`` up to three years).
MAX_INTERVAL_MONTHS = 36


class PriceVersion(_Strict):
    """One version of a plan's price, in effect from ``effective_date`` (UTC) for new subscriptions.
    Customers subscribed under an older version keep it (grandfathering) until moved. Unset
    ``currency``, ``rounding`` and ``tax`` come from the file's top level.

    The billing window (seed 003 ``meteringWindow: monthly | annual | custom``): the base price is charged
    once per billing period of 1 (``monthly``), 12 (``annual``) or ``interval_months`` (``custom``) months,
    anchored on the customer's anchor day; usage (included usage, overage, tiers) is billed per month
    (``usage_billing: monthly``) or over the whole billing period (``per_period``)."""

    version: str = Field(pattern=VERSION_PATTERN, description="Unique in the file, e.g. pro-2025-06.")
    effective_date: date
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    base_price: Decimal = Field(default=Decimal(0), ge=0)
    rounding: Rounding | None = None
    tax: TaxRule | None = None
    meters: dict[str, MeterPrice] = Field(default_factory=dict)
    billing_window: BillingWindow = "monthly"
    interval_months: int | None = Field(default=None, ge=1, le=MAX_INTERVAL_MONTHS)
    usage_billing: UsageBilling = "monthly"

    @model_validator(mode="after")
    def _window_consistent(self) -> PriceVersion:
        implied = {"monthly": 1, "annual": 12}.get(self.billing_window)
        if implied is None and self.interval_months is None:
            raise ValueError("billing_window custom needs interval_months (1-36)")
        if implied is not None and self.interval_months not in (None, implied):
            raise ValueError(
                f"billing_window {self.billing_window} is {implied} month(s): leave interval_months out or "
                "use billing_window custom"
            )
        return self

    @property
    def period_months(self) -> int:
        return self.interval_months or {"monthly": 1, "annual": 12}[self.billing_window]


class ResolvedPrice(_Strict):
    """A price version with every default filled in: what the invoice calculator takes."""

    plan: str
    version: str
    effective_date: date
    currency: str
    minor_unit: int
    base_price: Decimal
    rounding: Rounding
    tax: TaxRule
    meters: dict[str, MeterPrice]
    billing_window: BillingWindow = "monthly"
    # The billing period's length (the base price's cycle) and the usage period's (1 with usage billed
    # monthly, else the billing period's): docs/billing.md "Billing windows".
    period_months: int = 1
    usage_billing: UsageBilling = "monthly"

    @property
    def usage_months(self) -> int:
        return 1 if self.usage_billing == "monthly" else self.period_months

    @property
    def stripe_interval(self) -> tuple[str, int]:
        """Stripe's ``recurring[interval]`` and ``interval_count`` of the base price."""
        if self.period_months % 12 == 0:
            return "year", self.period_months // 12
        return "month", self.period_months


class AbusePolicy(_Strict):
    """The free-tier abuse guard of a plan (metering's detector, docs/metering.md#abuse-guard). Rates are
    per minute of arrival time; a spike is ``burst_factor`` times the customer's own baseline and above the
    floor; caps are absolute."""

    suspend_on_abuse: bool = Field(default=False, description="Suspend on a cap (and, if asked, a spike).")
    suspend_on_spike: bool = Field(default=False, description="Also suspend on a spike against the baseline.")
    burst_factor: float = Field(default=10.0, gt=1)
    expected_events_per_minute: float = Field(default=60.0, ge=0, description="Baseline of a new customer.")
    expected_persons_per_minute: float = Field(default=10.0, ge=0)
    min_events_per_minute: int = Field(default=600, ge=1, description="No spike below this many events/min.")
    min_persons_per_minute: int = Field(default=100, ge=1)
    max_events_per_minute: int | None = Field(default=None, ge=1, description="Hard cap on events/min.")
    hard_caps: dict[str, Decimal] = Field(
        default_factory=dict, description="Per meter: period usage beyond which the customer is abusing."
    )
    cool_down_hours: float | None = Field(
        default=24.0, gt=0, description="An automatic suspension ends after this; null: only by hand."
    )


DEFAULT_ABUSE = AbusePolicy()


class Plan(_Strict):
    """A plan: its price, its meters' allowances and its boolean features."""

    slug: str = Field(pattern=SLUG_PATTERN)
    name: str = Field(min_length=1)
    base_price: Decimal = Field(default=Decimal(0), ge=0)
    upgrade_to: str | None = Field(default=None, description="The plan to suggest when this one runs out.")
    meters: dict[str, PlanMeter] = Field(default_factory=dict)
    features: dict[str, bool] = Field(default_factory=dict)
    # The long form: price versions by effective date. Without it the plan's own base_price and meter
    # prices are its one version (in effect from the file's effective_date).
    prices: tuple[PriceVersion, ...] = ()
    # Sales-negotiated plans (the seeds' enterprise): no self-serve checkout to them.
    custom_contract: bool = False
    # The abuse guard (metering): detection always runs; suspension only where configured.
    abuse: AbusePolicy = DEFAULT_ABUSE

    @model_validator(mode="after")
    def _prices_given_once(self) -> Plan:
        if not self.prices:
            return self
        twice = [slug for slug, m in self.meters.items() if m.priced or m.included]
        if self.base_price or twice:
            where = ", ".join(["base_price"] * bool(self.base_price) + [f"meters.{s}" for s in twice])
            raise ValueError(f"the plan has prices: give its pricing only there, not also in {where}")
        dates = [p.effective_date for p in self.prices]
        if dates != sorted(set(dates)):
            raise ValueError("prices must be listed by strictly increasing effective_date")
        return self

    @field_validator("features")
    @classmethod
    def _feature_names(cls, value: dict[str, bool]) -> dict[str, bool]:
        bad = [name for name in value if not _SLUG.match(name)]
        if bad:
            raise ValueError(f"feature names must match {SLUG_PATTERN}: {bad}")
        return value


class TopUp(_Strict):
    """A pack of one meter's units a customer can buy on top of their plan (a credit grant): ``units``
    for ``price`` (in ``currency``, the file's by default), added to the allowance and to the included
    usage of the billing period it is bought in, consumed before overage, gone at the period's end or
    ``expires_after_days`` after purchase, whichever comes first."""

    slug: str = Field(pattern=SLUG_PATTERN)
    meter: str
    units: Decimal = Field(gt=0)
    price: Decimal = Field(ge=0)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    expires_after_days: int | None = Field(default=None, ge=1)


class PlansConfig(_Strict):
    """The whole file: a versioned set of meters and plans."""

    version: int = Field(ge=1)
    effective_date: date
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    rounding: Rounding = Rounding.NEAREST
    tax: TaxRule = Field(default_factory=TaxRule)
    meters: tuple[Meter, ...]
    plans: tuple[Plan, ...]
    # Packs of units sold on top of any paid plan (``POST /v1/checkout/{customer}/top-up``).
    top_ups: tuple[TopUp, ...] = ()

    def meter(self, slug: str) -> Meter | None:
        return next((m for m in self.meters if m.slug == slug), None)

    def plan(self, slug: str) -> Plan | None:
        return next((p for p in self.plans if p.slug == slug), None)

    def top_up(self, meter: str, slug: str | None = None) -> TopUp | None:
        """The pack named ``slug``, or the first pack of ``meter``."""
        return next((t for t in self.top_ups if t.meter == meter and slug in (None, t.slug)), None)

    def meters_for_event(self, event_name: str) -> tuple[Meter, ...]:
        return tuple(m for m in self.meters if m.event == event_name)

    @property
    def feature_names(self) -> frozenset[str]:
        return frozenset(name for p in self.plans for name in p.features)

    @cached_property
    def longest_usage_months(self) -> int:
        """The longest usage period of any price version, in months (1 unless a version bills usage
        ``per_period`` over an annual or custom window): how many monthly totals a limit may add up.
        Computed once per (immutable) book: the entitlement check asks it on every meter check."""
        return max(
            (price.usage_months for plan in self.plans for price in self.price_versions(plan.slug)),
            default=1,
        )

    def price_versions(self, plan_slug: str) -> tuple[ResolvedPrice, ...]:
        """The plan's price versions, oldest first, defaults resolved (unknown plan: empty)."""
        plan = self.plan(plan_slug)
        if plan is None:
            return ()
        if plan.prices:
            versions = plan.prices
        else:
            short = PriceVersion(
                version=f"{plan.slug}-v{self.version}",
                effective_date=self.effective_date,
                base_price=plan.base_price,
                meters={slug: m.price_only() for slug, m in plan.meters.items()},
            )
            versions = (short,)
        return tuple(self._resolve(plan.slug, v) for v in versions)

    def _resolve(self, plan_slug: str, v: PriceVersion) -> ResolvedPrice:
        currency = v.currency or self.currency
        return ResolvedPrice(
            plan=plan_slug,
            version=v.version,
            effective_date=v.effective_date,
            currency=currency,
            minor_unit=CURRENCY_MINOR_UNITS.get(currency, 2),
            base_price=v.base_price,
            rounding=v.rounding or self.rounding,
            tax=v.tax or self.tax,
            meters=dict(v.meters),
            billing_window=v.billing_window,
            period_months=v.period_months,
            usage_billing=v.usage_billing,
        )

    def price_for(self, plan_slug: str, on: date, pinned_version: str | None = None) -> ResolvedPrice | None:
        """The price a customer of ``plan_slug`` pays for a period starting ``on``: the version they are
        pinned to (grandfathered) if it belongs to the plan, else the newest one in effect by ``on``
        (before the first version: the first). None for an unknown plan."""
        versions = self.price_versions(plan_slug)
        if not versions:
            return None
        if pinned_version is not None:
            for v in versions:
                if v.version == pinned_version:
                    return v
        in_effect = [v for v in versions if v.effective_date <= on]
        return in_effect[-1] if in_effect else versions[0]


def cross_reference_errors(config: PlansConfig, unparsed_plans: set[str] | None = None) -> list[str]:
    """Errors that span several entries (unknown references, duplicates); empty when consistent.
    ``unparsed_plans``: plans that failed validation (already reported), not unknown upgrade targets."""
    errors: list[str] = []
    meter_slugs = [m.slug for m in config.meters]
    plan_slugs = [p.slug for p in config.plans]
    for kind, slugs in (("meter", meter_slugs), ("plan", plan_slugs)):
        dupes = sorted({s for s in slugs if slugs.count(s) > 1})
        if dupes:
            errors.append(f"{kind}s: duplicate slug(s) {dupes}")
    for i, plan in enumerate(config.plans):
        where = f"plans[{i}] ({plan.slug})"
        for slug in plan.meters:
            if slug not in meter_slugs:
                errors.append(f"{where}.meters.{slug}: no meter with this slug is defined")
        for slug in plan.abuse.hard_caps:
            if slug not in meter_slugs:
                errors.append(f"{where}.abuse.hard_caps.{slug}: no meter with this slug is defined")
        for name in plan.features:
            if name in meter_slugs:
                errors.append(f"{where}.features.{name}: a feature cannot share a meter's slug")
        if plan.upgrade_to is not None:
            if plan.upgrade_to == plan.slug:
                errors.append(f"{where}.upgrade_to: a plan cannot upgrade to itself")
            elif plan.upgrade_to not in plan_slugs and plan.upgrade_to not in (unparsed_plans or set()):
                errors.append(f"{where}.upgrade_to: unknown plan {plan.upgrade_to!r}")
    for i, meter in enumerate(config.meters):
        if meter.value_property is not None and meter.value_property in meter.group_by:
            errors.append(f"meters[{i}] ({meter.slug}): value_property is also a group_by property")
    for i, pack in enumerate(config.top_ups):
        if pack.meter not in meter_slugs:
            errors.append(f"top_ups[{i}] ({pack.slug}).meter: no meter {pack.meter!r} is defined")
        if [t.slug for t in config.top_ups].count(pack.slug) > 1:
            errors.append(f"top_ups[{i}] ({pack.slug}): slug used twice")
    errors.extend(_price_errors(config))
    return errors


def _price_errors(config: PlansConfig) -> list[str]:
    errors: list[str] = []
    if config.currency not in CURRENCY_MINOR_UNITS:
        errors.append(f"currency: {config.currency!r} has no known minor unit (see CURRENCY_MINOR_UNITS)")
    seen: dict[str, str] = {}
    for i, plan in enumerate(config.plans):
        for j, price in enumerate(plan.prices):
            where = f"plans[{i}] ({plan.slug}).prices[{j}] ({price.version})"
            if price.version in seen:
                errors.append(f"{where}.version: already used by plan {seen[price.version]!r}")
            seen[price.version] = plan.slug
            if price.currency is not None and price.currency not in CURRENCY_MINOR_UNITS:
                errors.append(f"{where}.currency: {price.currency!r} has no known minor unit")
            for slug in price.meters:
                if slug not in plan.meters:
                    errors.append(f"{where}.meters.{slug}: the plan does not list this meter")
                meter = config.meter(slug)
                if (
                    price.usage_billing == "per_period"
                    and price.period_months > 1
                    and meter is not None
                    and meter.aggregation is Aggregation.UNIQUE_COUNT
                ):
                    # Metering counts distinct values per month; months cannot be added into a longer period.
                    errors.append(
                        f"{where}.meters.{slug}: a UNIQUE_COUNT meter cannot be priced per_period over "
                        f"{price.period_months} months (metering counts it per month): use usage_billing:"
                        " monthly"
                    )
    return errors
