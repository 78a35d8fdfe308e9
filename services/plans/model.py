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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SLUG_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_SLUG = re.compile(SLUG_PATTERN)

# Top-level event fields a meter can read as its value, besides the event's properties.
EVENT_FIELD_PREFIX = "$"
EVENT_FIELDS = frozenset({"$user_id", "$anonymous_id", "$session_id"})

THRESHOLD_PERCENTS = (80, 90, 100)


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


class PlanMeter(_Strict):
    """What a plan allows and charges for one meter in one billing period."""

    included: Decimal = Field(default=Decimal(0), ge=0, description="Usage included in the base price.")
    limit: Decimal | None = Field(
        default=None, ge=0, description="Usage the plan allows per period; null = unlimited."
    )
    hard_limit: bool = Field(default=False, description="Refuse usage beyond the limit (else bill overage).")
    overage_unit_price: Decimal | None = Field(
        default=None, ge=0, description="Price per unit above the included usage."
    )
    tiers: tuple[Tier, ...] = ()
    tiers_mode: Literal["graduated", "volume"] = "graduated"

    @model_validator(mode="after")
    def _consistent(self) -> PlanMeter:
        if self.hard_limit and self.limit is None:
            raise ValueError("hard_limit needs a limit")
        if self.tiers and self.overage_unit_price is not None:
            raise ValueError("give either tiers or overage_unit_price, not both")
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
    def unlimited(self) -> bool:
        return self.limit is None


class Plan(_Strict):
    """A plan: its price, its meters' allowances and its boolean features."""

    slug: str = Field(pattern=SLUG_PATTERN)
    name: str = Field(min_length=1)
    base_price: Decimal = Field(default=Decimal(0), ge=0)
    upgrade_to: str | None = Field(default=None, description="The plan to suggest when this one runs out.")
    meters: dict[str, PlanMeter] = Field(default_factory=dict)
    features: dict[str, bool] = Field(default_factory=dict)

    @field_validator("features")
    @classmethod
    def _feature_names(cls, value: dict[str, bool]) -> dict[str, bool]:
        bad = [name for name in value if not _SLUG.match(name)]
        if bad:
            raise ValueError(f"feature names must match {SLUG_PATTERN}: {bad}")
        return value


class PlansConfig(_Strict):
    """The whole file: a versioned set of meters and plans."""

    version: int = Field(ge=1)
    effective_date: date
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    meters: tuple[Meter, ...]
    plans: tuple[Plan, ...]

    def meter(self, slug: str) -> Meter | None:
        return next((m for m in self.meters if m.slug == slug), None)

    def plan(self, slug: str) -> Plan | None:
        return next((p for p in self.plans if p.slug == slug), None)

    def meters_for_event(self, event_name: str) -> tuple[Meter, ...]:
        return tuple(m for m in self.meters if m.event == event_name)

    @property
    def feature_names(self) -> frozenset[str]:
        return frozenset(name for p in self.plans for name in p.features)


def cross_reference_errors(config: PlansConfig) -> list[str]:
    """Errors that span several entries (unknown references, duplicates); empty when consistent."""
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
        for name in plan.features:
            if name in meter_slugs:
                errors.append(f"{where}.features.{name}: a feature cannot share a meter's slug")
        if plan.upgrade_to is not None:
            if plan.upgrade_to == plan.slug:
                errors.append(f"{where}.upgrade_to: a plan cannot upgrade to itself")
            elif plan.upgrade_to not in plan_slugs:
                errors.append(f"{where}.upgrade_to: unknown plan {plan.upgrade_to!r}")
    for i, meter in enumerate(config.meters):
        if meter.value_property is not None and meter.value_property in meter.group_by:
            errors.append(f"meters[{i}] ({meter.slug}): value_property is also a group_by property")
    return errors
