"""Validation of events against the tracking plan, compiled once so the per-event path is a few dict look-ups.

:func:`compile_plan` turns a :class:`~services.enrichment.plan.TrackingPlan` into one
:class:`CompiledEvent` per planned event (type sets, enum sets, bounds, required names, renames), and
:meth:`CompiledPlan.check` maps an event's properties to the current names and returns its violations —
Segment/RudderStack's violation types plus the property path, like Snowplow's bad rows. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from services.enrichment.plan import Mode, PropertyType, TrackingPlan, Unplanned

# Violation codes (machine-readable: the DLQ reason, the `violations` of the enriched record).
UNPLANNED_EVENT = "unplanned_event"
REQUIRED_MISSING = "required_missing"
DATATYPE_MISMATCH = "datatype_mismatch"
ADDITIONAL_PROPERTY = "additional_property"
ENUM_MISMATCH = "enum_mismatch"
OUT_OF_RANGE = "out_of_range"
UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"

VIOLATION_CODES = (
    UNPLANNED_EVENT,
    REQUIRED_MISSING,
    DATATYPE_MISMATCH,
    ADDITIONAL_PROPERTY,
    ENUM_MISMATCH,
    OUT_OF_RANGE,
    UNSUPPORTED_SCHEMA_VERSION,
)


class Violation(NamedTuple):
    """One problem with an event: its code, where (``name``, ``properties.<key>``) and a short why."""

    code: str
    path: str
    message: str

    def to_avro(self) -> dict[str, str]:
        return {"code": self.code, "path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.code} at {self.path}: {self.message}"


_TYPES: dict[PropertyType, frozenset[type]] = {
    PropertyType.STRING: frozenset({str}),
    PropertyType.INTEGER: frozenset({int}),
    # bool is a subclass of int, but type() tells them apart, which is why the sets hold exact types.
    PropertyType.NUMBER: frozenset({int, float}),
    PropertyType.BOOLEAN: frozenset({bool}),
}

_JSON_TYPE = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True, slots=True)
class CompiledProperty:
    types: frozenset[type]
    type_name: str
    enum: frozenset[Any] | None
    min: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class CompiledEvent:
    name: str
    enforce: bool
    metered: bool
    additional_ok: bool
    properties: Mapping[str, CompiledProperty]
    required: frozenset[str]
    pii: frozenset[str]
    current_version: int
    default_version: int
    accepted: frozenset[int]
    renames: Mapping[int, Mapping[str, str]]


class CheckResult(NamedTuple):
    properties: dict[str, Any]
    schema_version: int | None
    violations: list[Violation]
    enforce: bool
    #: The event carried no version: ``schema_version`` is its default_version, assumed, not stated (the
    #: enriched record says so in ``schema_version_missing`` rather than passing the default off as sent).
    version_missing: bool = False


def _parse_version(raw: Any) -> int | None:
    """``2``, ``"2"`` and ``"2.1.0"`` (semver: the major counts) are version 2; anything else is None."""
    if type(raw) is int:
        return raw if raw >= 1 else None
    if type(raw) is str:
        major = raw.split(".", 1)[0]
        if major.isdigit() and major.isascii():
            value = int(major)
            return value if value >= 1 else None
    return None


class CompiledPlan:
    """The tracking plan ready for the hot path."""

    __slots__ = ("_unplanned_enforce", "events", "metered", "mode", "plan", "unplanned", "version_property")

    def __init__(self, plan: TrackingPlan, metered_events: frozenset[str] = frozenset()) -> None:
        self.plan = plan
        self.mode = plan.mode
        self.unplanned = plan.unplanned_events
        self.version_property = plan.version_property
        self.metered = metered_events
        self.events: dict[str, CompiledEvent] = {}
        for name, spec in plan.events.items():
            props = {
                prop: CompiledProperty(
                    types=_TYPES[p.type],
                    type_name=p.type.value,
                    enum=frozenset(p.enum) if p.enum is not None else None,
                    min=p.min,
                    max=p.max,
                )
                for prop, p in spec.properties.items()
            }
            metered = name in metered_events
            self.events[name] = CompiledEvent(
                name=name,
                # Billing is decided by metering, not by the plan: a metered event is only ever flagged.
                enforce=(spec.mode or plan.mode) is Mode.ENFORCE and not metered,
                metered=metered,
                additional_ok=spec.additional_properties,
                properties=props,
                required=frozenset(p for p, s in spec.properties.items() if s.required),
                pii=frozenset(p for p, s in spec.properties.items() if s.pii),
                current_version=spec.schema_version,
                default_version=spec.default_version or spec.schema_version,
                accepted=frozenset(spec.versions),
                renames={v: dict(r) for v, r in spec.renames.items()},
            )

    def pii_properties(self, name: str) -> frozenset[str]:
        event = self.events.get(name)
        return event.pii if event is not None else frozenset()

    def check(self, name: str, properties: Mapping[str, Any]) -> CheckResult:
        """Map ``properties`` to the current names and judge them. Returns the mapped properties (a new
        dict without the version property), the event's schema version, its violations and whether they
        are enforced (dead-letter) or only flagged."""
        event = self.events.get(name)
        version_property = self.version_property
        raw_version = properties.get(version_property)
        props = dict(properties)
        if raw_version is not None or version_property in props:
            del props[version_property]
        unversioned = raw_version is None
        if event is None:
            version = _parse_version(raw_version)
            if self.unplanned is Unplanned.ALLOW:
                return CheckResult(props, version, [], False, unversioned)
            violation = Violation(
                UNPLANNED_EVENT, "name", f"event {name[:100]!r} is not in the tracking plan"
            )
            enforce = self.unplanned is Unplanned.REJECT and name not in self.metered
            return CheckResult(props, version, [violation], enforce, unversioned)

        violations: list[Violation] = []
        if raw_version is None:
            version = event.default_version
        else:
            parsed = _parse_version(raw_version)
            if parsed is None or parsed not in event.accepted:
                violations.append(
                    Violation(
                        UNSUPPORTED_SCHEMA_VERSION,
                        f"properties.{version_property}",
                        f"not one of the accepted versions {sorted(event.accepted)}",
                    )
                )
                version = event.current_version
            else:
                version = parsed
        if version != event.current_version:
            renames = event.renames.get(version)
            if renames:
                for old, new in renames.items():
                    # The current name wins when an event carries both; the old one is then an extra.
                    if old in props and new not in props:
                        props[new] = props.pop(old)

        specs = event.properties
        for key, value in props.items():
            spec = specs.get(key)
            if spec is None:
                if not event.additional_ok:
                    violations.append(
                        Violation(ADDITIONAL_PROPERTY, f"properties.{key}", "not in the tracking plan")
                    )
                continue
            if value is None:
                continue  # null is "absent": required_missing below if the property is required
            kind = type(value)
            if kind not in spec.types:
                violations.append(
                    Violation(
                        DATATYPE_MISMATCH,
                        f"properties.{key}",
                        f"expected {spec.type_name}, got {_JSON_TYPE.get(kind, kind.__name__)}",
                    )
                )
                continue
            if spec.enum is not None and value not in spec.enum:
                # Never a value in a message: it may be PII (the properties are scrubbed, not the messages).
                violations.append(
                    Violation(ENUM_MISMATCH, f"properties.{key}", "not one of the allowed values")
                )
            if spec.min is not None and value < spec.min:
                violations.append(
                    Violation(OUT_OF_RANGE, f"properties.{key}", f"below the minimum {spec.min}")
                )
            elif spec.max is not None and value > spec.max:
                violations.append(
                    Violation(OUT_OF_RANGE, f"properties.{key}", f"above the maximum {spec.max}")
                )
        if event.required:
            missing = [k for k in event.required if props.get(k) is None]
            for key in sorted(missing):
                violations.append(
                    Violation(REQUIRED_MISSING, f"properties.{key}", "required property missing")
                )
        return CheckResult(props, version, violations, event.enforce and bool(violations), unversioned)


def compile_plan(plan: TrackingPlan, metered_events: frozenset[str] = frozenset()) -> CompiledPlan:
    return CompiledPlan(plan, metered_events)


def describe(violations: list[Violation]) -> str:
    """The dead letter's message: every violation as ``code at path: why``, ``; ``-separated."""
    return "; ".join(map(str, violations))
