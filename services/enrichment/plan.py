"""The tracking plan as code: which events exist, their properties, versions, PII and how strictly to judge.

One YAML file (``deploy/config/tracking-plan.yaml`` by default, ``$PLG_TRACKING_PLAN`` overrides) is read
at start-up and validated with every error reported at once, like the meters-and-plans file
(services/plans/loader.py). The model is pure data; :mod:`services.enrichment.validation` compiles it into
the per-event checks the hot path runs. The format is described in docs/enrichment.md.
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.kernel.config import ConfigFileError, config_path, load_yaml
from services.plans.loader import _format
from services.plans.model import PlansConfig

DEFAULT_PLAN_PATH = Path(__file__).resolve().parents[2] / "deploy" / "config" / "tracking-plan.yaml"
PLAN_PATH_ENV = "PLG_TRACKING_PLAN"

_PROPERTY_NAME = re.compile(r"^[A-Za-z_$][A-Za-z0-9_.$-]{0,127}$")


class Mode(StrEnum):
    """What a violation does: ``enforce`` dead-letters the event, ``flag`` stamps it on the record."""

    ENFORCE = "enforce"
    FLAG = "flag"


class Unplanned(StrEnum):
    """What an event the plan does not list does: pass silently, pass flagged, or go to the DLQ."""

    ALLOW = "allow"
    FLAG = "flag"
    REJECT = "reject"


class PiiAction(StrEnum):
    """``pseudonymise``: replace by an HMAC-SHA-256 pseudonym (joins still work); ``drop``: remove."""

    PSEUDONYMISE = "pseudonymise"
    DROP = "drop"


class Detector(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    IP = "ip"
    CARD = "card"


class PropertyType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"


class _Strict(BaseModel):
    # Unknown keys are errors: a typo such as ``requried`` must not silently mean "optional".
    model_config = ConfigDict(extra="forbid", frozen=True)


class PropertySpec(_Strict):
    """One property of an event, under its current name."""

    type: PropertyType
    required: bool = False
    enum: tuple[str | int | float | bool, ...] | None = None
    min: float | None = None
    max: float | None = None
    pii: bool = Field(default=False, description="Scrubbed (pseudonymised or dropped) whatever its value.")
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> PropertySpec:
        numeric = self.type in (PropertyType.INTEGER, PropertyType.NUMBER)
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"min/max apply to integer and number properties, not {self.type.value}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.enum is not None:
            if not self.enum:
                raise ValueError("enum must list at least one value")
            bad = [v for v in self.enum if not _fits(self.type, v)]
            if bad:
                raise ValueError(f"enum values {bad!r} are not of type {self.type.value}")
        if self.pii and self.enum is not None:
            raise ValueError("a pii property cannot have an enum (its values would be in the plan)")
        return self


def _fits(kind: PropertyType, value: Any) -> bool:
    if kind is PropertyType.STRING:
        return isinstance(value, str)
    if kind is PropertyType.BOOLEAN:
        return isinstance(value, bool)
    if kind is PropertyType.INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


class EventSpec(_Strict):
    """One planned event: its properties (current names), versions and strictness."""

    description: str = ""
    mode: Mode | None = Field(default=None, description="Overrides the plan's default mode.")
    additional_properties: bool = Field(
        default=False, description="Accept properties the plan does not list (else additional_property)."
    )
    schema_version: int = Field(default=1, ge=1, description="The current version: properties use its names.")
    accepted_versions: tuple[int, ...] | None = Field(
        default=None, description="Versions accepted (default: only the current one)."
    )
    default_version: int | None = Field(
        default=None, ge=1, description="Version assumed when an event carries none (default: current)."
    )
    renames: dict[int, dict[str, str]] = Field(
        default_factory=dict, description="Per older version: old property name -> current name."
    )
    properties: dict[str, PropertySpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _versions(self) -> EventSpec:
        accepted = self.versions
        if self.schema_version not in accepted:
            raise ValueError(
                f"accepted_versions must include the current schema_version {self.schema_version}"
            )
        if len(set(accepted)) != len(accepted):
            raise ValueError("accepted_versions lists a version twice")
        if self.default_version is not None and self.default_version not in accepted:
            raise ValueError(f"default_version {self.default_version} is not an accepted version")
        for version, renames in self.renames.items():
            if version not in accepted or version == self.schema_version:
                raise ValueError(f"renames.{version}: only older accepted versions can rename properties")
            for old, new in renames.items():
                if new not in self.properties:
                    raise ValueError(f"renames.{version}.{old}: renamed to {new!r}, which is not a property")
                if old in self.properties:
                    raise ValueError(f"renames.{version}.{old}: the old name is also a current property")
            targets = list(renames.values())
            if len(set(targets)) != len(targets):
                raise ValueError(f"renames.{version}: two old names map to the same property")
        bad = [name for name in self.properties if not _PROPERTY_NAME.match(name)]
        if bad:
            raise ValueError(f"property names must match {_PROPERTY_NAME.pattern}: {bad}")
        return self

    @property
    def versions(self) -> tuple[int, ...]:
        return self.accepted_versions if self.accepted_versions is not None else (self.schema_version,)


class PiiRules(_Strict):
    """How PII is scrubbed: the action, and which value detectors run on every property."""

    action: PiiAction = PiiAction.PSEUDONYMISE
    detect: tuple[Detector, ...] = tuple(Detector)
    # Top-level id fields scanned with the same detectors (a user_id that is an e-mail address).
    scan_ids: bool = True


class Sampling(_Strict):
    """Keep ``rate`` of the events named ``event`` (deterministic by event_id)."""

    event: str = Field(min_length=1)
    rate: float = Field(gt=0, le=1)


class TrackingPlan(_Strict):
    """The whole file."""

    version: int = Field(ge=1)
    effective_date: date
    mode: Mode = Mode.FLAG
    unplanned_events: Unplanned = Unplanned.FLAG
    version_property: str = Field(
        default="schema_version", description="The property an event's schema version is read from."
    )
    pii: PiiRules = PiiRules()
    sampling: tuple[Sampling, ...] = ()
    events: dict[str, EventSpec]


WHAT = "tracking plan"
#: The one config error of every service (services.kernel.config), under this module's old name.
PlanError = ConfigFileError


def _plan_error(source: str, errors: list[str]) -> ConfigFileError:
    # pydantic prefixes the messages of our own validators; the location already says enough.
    return ConfigFileError(source, [e.lstrip(".").replace(": Value error, ", ": ", 1) for e in errors], WHAT)


def parse_plan(data: Any, metering: PlansConfig | None = None, source: str = "<plan>") -> TrackingPlan:
    """Validate a parsed document; raises :class:`PlanError` listing every problem.

    Each event is validated on its own so that one bad event does not hide the errors of the next; with
    ``metering``, the cross-checks against the meters are made too (a metered event cannot be sampled, and
    its plan must declare the properties its meters read).
    """
    if not isinstance(data, dict):
        raise _plan_error(source, [f"the document must be a mapping, got {type(data).__name__}"])
    errors: list[str] = []
    raw_events = data.get("events")
    events: dict[str, EventSpec] = {}
    if not isinstance(raw_events, dict) or not raw_events:
        errors.append("events: a non-empty mapping of event name -> event is required")
    else:
        for name, raw in raw_events.items():
            if not isinstance(name, str) or not name:
                errors.append(f"events.{name!r}: event names are non-empty strings")
                continue
            try:
                events[name] = EventSpec.model_validate(raw if raw is not None else {})
            except ValidationError as exc:
                errors.extend(_format(f"events.{name}", exc))
    header = {k: v for k, v in data.items() if k != "events"}
    plan: TrackingPlan | None = None
    try:
        plan = TrackingPlan.model_validate({**header, "events": events})
    except ValidationError as exc:
        errors.extend(_format("", exc))
    if plan is not None:
        errors.extend(_cross_errors(plan, metering))
    if errors:
        raise _plan_error(source, errors)
    assert plan is not None
    return plan


def _cross_errors(plan: TrackingPlan, metering: PlansConfig | None) -> list[str]:
    errors: list[str] = []
    sampled = [s.event for s in plan.sampling]
    dupes = sorted({e for e in sampled if sampled.count(e) > 1})
    if dupes:
        errors.append(f"sampling: event(s) {dupes} sampled twice")
    for name, spec in plan.events.items():
        if plan.version_property in spec.properties:
            errors.append(
                f"events.{name}.properties.{plan.version_property}: reserved for the schema version"
            )
    if metering is None:
        return errors
    metered = {m.event for m in metering.meters}
    for i, rule in enumerate(plan.sampling):
        if rule.event in metered:
            errors.append(f"sampling[{i}] ({rule.event}): a metered event is never sampled")
    for meter in metering.meters:
        metered_spec = plan.events.get(meter.event)
        if metered_spec is None or metered_spec.additional_properties:
            continue
        spec = metered_spec
        wanted = [p for p in (meter.value_property, *meter.group_by) if p and not p.startswith("$")]
        for prop in wanted:
            if prop not in spec.properties:
                errors.append(
                    f"events.{meter.event}.properties: meter {meter.slug} reads {prop!r}, "
                    "which the plan does not declare"
                )
            elif spec.properties[prop].pii:
                errors.append(f"events.{meter.event}.properties.{prop}: meter {meter.slug} reads it; not pii")
    return errors


def load_plan(path: str | Path | None = None, metering: PlansConfig | None = None) -> TrackingPlan:
    """Read the YAML file at ``path``, ``$PLG_TRACKING_PLAN`` or the default, and validate it."""
    resolved = config_path(path, PLAN_PATH_ENV, DEFAULT_PLAN_PATH)
    data = load_yaml(resolved, WHAT)
    return parse_plan(data, metering, str(resolved))
