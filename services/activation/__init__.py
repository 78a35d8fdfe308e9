"""Activation thresholds as configured in ``deploy/config/activation.yaml``: the shared domain model that
growth (which counts and fires crossings) and analytics (which measures them and suggests new ones) both
read, so neither imports the other (docs/growth.md "Activation").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.kernel.config import ConfigFileError, config_path, load_yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ACTIVATION_FILE = REPO / "deploy" / "config" / "activation.yaml"
SCOPES = ("person", "customer")


WHAT = "activation config"
#: The one config error of every service (services.kernel.config), under this module's old name.
ActivationConfigError = ConfigFileError


@dataclass(frozen=True)
class Threshold:
    name: str
    event: str
    count: int
    window_days: int | None
    scopes: tuple[str, ...]
    north_star: bool = False


@dataclass(frozen=True)
class ActivationConfig:
    version: int
    plans: frozenset[str]
    thresholds: tuple[Threshold, ...]
    north_star: str | None
    #: Events counted without a threshold of their own (the onboarding conditions' counts).
    extra_events: frozenset[str] = frozenset()
    by_event: Mapping[str, tuple[Threshold, ...]] = field(default_factory=dict)
    #: Longest window per event (days kept), 0 for events no windowed threshold counts.
    days_kept: Mapping[str, int] = field(default_factory=dict)

    @property
    def events(self) -> frozenset[str]:
        return frozenset(self.by_event) | self.extra_events

    def with_events(self, events: Iterable[str]) -> ActivationConfig:
        return build_config(self.version, self.plans, self.thresholds, self.north_star, frozenset(events))


def build_config(
    version: int,
    plans: frozenset[str],
    thresholds: tuple[Threshold, ...],
    north_star: str | None,
    extra_events: frozenset[str] = frozenset(),
) -> ActivationConfig:
    by_event: dict[str, list[Threshold]] = {}
    days: dict[str, int] = {}
    for t in thresholds:
        by_event.setdefault(t.event, []).append(t)
        days[t.event] = max(days.get(t.event, 0), t.window_days or 0)
    for e in extra_events:
        days.setdefault(e, 0)
    return ActivationConfig(
        version,
        plans,
        thresholds,
        north_star,
        frozenset(extra_events),
        {e: tuple(ts) for e, ts in by_event.items()},
        days,
    )


def activation_path(path: Path | None = None) -> Path:
    return config_path(path, "PLG_ACTIVATION_CONFIG", DEFAULT_ACTIVATION_FILE)


def load_activation(path: Path | None = None) -> ActivationConfig:
    """The activation config of ``path``, every error at once (:class:`ActivationConfigError`)."""
    source = activation_path(path)
    doc = load_yaml(source, WHAT)
    return parse_activation(doc, str(source))


def parse_activation(doc: Any, source: str | None = None) -> ActivationConfig:
    errors: list[str] = []
    if not isinstance(doc, Mapping):
        raise ConfigFileError(source, ["the file must be a mapping with plans and thresholds"], WHAT)
    unknown = set(doc) - {"version", "plans", "north_star", "thresholds"}
    if unknown:
        errors.append(f"unknown keys {sorted(unknown)}")
    version = doc.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        errors.append("version: a whole number")
        version = 1
    plans = doc.get("plans")
    if not isinstance(plans, list) or not plans or not all(isinstance(p, str) and p for p in plans):
        errors.append("plans: a non-empty list of plan names (crossings fire only for these plans)")
        plans = []
    thresholds: list[Threshold] = []
    names: set[str] = set()
    raw = doc.get("thresholds")
    if not isinstance(raw, list) or not raw:
        errors.append("thresholds: a non-empty list")
        raw = []
    north_star = doc.get("north_star")
    for i, spec in enumerate(raw):
        at = f"thresholds[{i}]"
        if not isinstance(spec, Mapping):
            errors.append(f"{at}: a mapping with name, event, count")
            continue
        extra = set(spec) - {"name", "event", "count", "window_days", "scopes", "description"}
        if extra:
            errors.append(f"{at}: unknown keys {sorted(extra)}")
        name, event, count = spec.get("name"), spec.get("event"), spec.get("count")
        window, scopes = spec.get("window_days"), spec.get("scopes", list(SCOPES))
        ok = True
        if not isinstance(name, str) or not name or "|" in name:
            errors.append(f"{at}.name: a non-empty name without '|'")
            ok = False
        elif name in names:
            errors.append(f"{at}.name: {name!r} is used twice")
        else:
            names.add(name)
        if not isinstance(event, str) or not event:
            errors.append(f"{at}.event: the event name to count")
            ok = False
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            errors.append(f"{at}.count: a whole number >= 1, got {count!r}")
            ok = False
        if window is not None and (
            not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 400
        ):
            errors.append(
                f"{at}.window_days: whole days from 1 to 400 (or leave it out: since the first event)"
            )
            ok = False
        if (
            not isinstance(scopes, list)
            or not scopes
            or not set(scopes) <= set(SCOPES)
            or len(set(scopes)) != len(scopes)
        ):
            errors.append(f"{at}.scopes: a list of {list(SCOPES)}")
            ok = False
        if ok:
            thresholds.append(
                Threshold(str(name), str(event), int(str(count)), window, tuple(scopes), name == north_star)
            )
    if north_star is not None and north_star not in names:
        errors.append(f"north_star: {north_star!r} is not a threshold's name")
    if errors:
        raise ConfigFileError(source, errors, WHAT)
    return build_config(version, frozenset(plans), tuple(thresholds), north_star)
