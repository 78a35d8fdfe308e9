"""Activation thresholds: the config (``deploy/config/activation.yaml``) and the pure counting model the
stream handler runs per partition — counts per person and per customer and event, in whole UTC days for
windowed thresholds, and each (subject, threshold) crossed once.

The state is a flat mapping of changelog keys to JSON-able values (what the changelog topic holds):

* ``c|<scope>|<customer>|<subject>|<event>`` → ``{"scope", "customer", "subject", "event", "n", "d", "r"}``:
  the count since the first event (``n``), per event-time day (``d``, only for events a windowed threshold
  counts, days older than the longest window dropped) and the last event ids counted (``r``: a duplicate
  of one of them — a client retry — is not counted again);
* ``f|<scope>|<customer>|<subject>|<threshold>`` → ``{"scope", "customer", "subject", "threshold", "at",
  "record"}``: the threshold was crossed, with the activation record written then.

``subject`` is the person id for scope ``person`` and empty for scope ``customer``. Values repeat the
key's parts so readers never parse keys (ids may contain ``|``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ACTIVATION_FILE = REPO / "deploy" / "config" / "activation.yaml"
DAY_MS = 86_400_000
SCOPES = ("person", "customer")
PROMPT = "show-upgrade-prompt"
#: Event ids remembered per counter to drop duplicates (client retries).
RECENT_IDS = 16


class ActivationConfigError(ValueError):
    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        super().__init__(
            f"invalid activation config {source or ''}:\n" + "\n".join(f"  - {e}" for e in errors)
        )


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
    return path or Path(os.environ.get("PLG_ACTIVATION_CONFIG", DEFAULT_ACTIVATION_FILE))


def load_activation(path: Path | None = None) -> ActivationConfig:
    """The activation config of ``path``, every error at once (:class:`ActivationConfigError`)."""
    source = activation_path(path)
    try:
        doc = yaml.safe_load(source.read_text())
    except yaml.YAMLError as exc:
        raise ActivationConfigError([f"not valid YAML: {exc}"], str(source)) from None
    return parse_activation(doc, str(source))


def parse_activation(doc: Any, source: str | None = None) -> ActivationConfig:
    errors: list[str] = []
    if not isinstance(doc, Mapping):
        raise ActivationConfigError(["the file must be a mapping with plans and thresholds"], source)
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
        raise ActivationConfigError(errors, source)
    return build_config(version, frozenset(plans), tuple(thresholds), north_star)


# -- the counting model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crossing:
    threshold: Threshold
    scope: str
    customer: str
    person: str | None
    count: int
    plan: str | None
    crossed_at: int
    trigger_event_id: str


def counter_key(scope: str, customer: str, subject: str, event: str) -> str:
    return f"c|{scope}|{customer}|{subject}|{event}"


def fired_key(scope: str, customer: str, subject: str, threshold: str) -> str:
    return f"f|{scope}|{customer}|{subject}|{threshold}"


def in_window(days: Mapping[str, int], today: int, window_days: int) -> int:
    """Events of the ``window_days`` whole days ending with ``today`` (day numbers since the epoch)."""
    first = today - window_days + 1
    return sum(n for d, n in days.items() if first <= int(d) <= today)


def person_of(event: Mapping[str, Any]) -> str | None:
    """Who did it: enrichment's canonical person, else the identified user, else the raw ids."""
    for name in ("person_id", "resolved_user_id", "user_id", "anonymous_id"):
        v = event.get(name)
        if isinstance(v, str) and v:
            return v
    return None


def plan_of(event: Mapping[str, Any]) -> str | None:
    plan = event.get("plan")
    if isinstance(plan, str) and plan:
        return plan
    tenant = event.get("tenant")
    if isinstance(tenant, Mapping) and isinstance(tenant.get("plan"), str):
        return str(tenant["plan"])
    return None


class Tracker:
    """One partition's activation state. ``apply`` changes it and returns the crossings; the keys changed
    since the last :meth:`take_dirty` are what the changelog must get."""

    def __init__(self, config: ActivationConfig, state: dict[str, dict[str, Any]] | None = None) -> None:
        self.config = config
        self.state: dict[str, dict[str, Any]] = state if state is not None else {}
        self.dirty: set[str] = set()

    def take_dirty(self) -> list[tuple[str, dict[str, Any]]]:
        changed = [(k, self.state[k]) for k in sorted(self.dirty)]
        self.dirty.clear()
        return changed

    def apply(self, event: Mapping[str, Any]) -> list[Crossing]:
        name = event.get("name")
        config = self.config
        if name not in config.by_event and name not in config.extra_events:
            return []
        customer = event.get("customer_id")
        if not isinstance(customer, str) or not customer:
            return []
        ts = int(event.get("timestamp") or 0)
        day = ts // DAY_MS
        person = person_of(event)
        plan = plan_of(event)
        keep = config.days_kept.get(str(name), 0)
        crossings: list[Crossing] = []
        thresholds = config.by_event.get(str(name), ())
        for scope in SCOPES:
            subject = person if scope == "person" else ""
            if subject is None:
                continue
            key = counter_key(scope, customer, subject, str(name))
            counter = self.state.get(key)
            if counter is None:
                counter = {"scope": scope, "customer": customer, "subject": subject, "event": name, "n": 0}
                self.state[key] = counter
            event_id = event.get("event_id")
            if event_id:
                # A client retry that reached Kafka twice carries the same event_id, moments apart: the last
                # few ids per counter (kept in the changelog, so across restarts too) catch it.
                recent: list[str] = counter.setdefault("r", [])
                if event_id in recent:
                    continue
                recent.append(str(event_id))
                if len(recent) > RECENT_IDS:
                    del recent[0]
            counter["n"] += 1
            latest = day
            if keep:
                days: dict[str, int] = counter.setdefault("d", {})
                # "In the last N days" of this subject: the window ends on the latest day it was active, so
                # a late event inside it still counts towards today's window.
                latest = max([day, *(int(d) for d in days)])
                if day > latest - keep:
                    days[str(day)] = days.get(str(day), 0) + 1
                for d in [d for d in days if int(d) <= latest - keep]:
                    del days[d]
            self.dirty.add(key)
            for t in thresholds:
                if scope not in t.scopes or plan not in config.plans:
                    continue
                fkey = fired_key(scope, customer, subject, t.name)
                if fkey in self.state:
                    continue
                count = (
                    counter["n"]
                    if t.window_days is None
                    else in_window(counter.get("d", {}), latest, t.window_days)
                )
                if count >= t.count:
                    crossing = Crossing(
                        t,
                        scope,
                        customer,
                        person if scope == "person" else None,
                        count,
                        plan,
                        ts,
                        str(event.get("event_id") or ""),
                    )
                    crossings.append(crossing)
                    self.state[fkey] = {
                        "scope": scope,
                        "customer": customer,
                        "subject": subject,
                        "threshold": t.name,
                        "at": ts,
                    }
                    self.dirty.add(fkey)
        return crossings


def activation_record(c: Crossing, now_ms: int) -> dict[str, Any]:
    """The ``activation-events`` record of a crossing (schemas/activation_event.avsc)."""
    return {
        "event_id": f"{c.scope}|{c.customer}|{c.person or ''}|{c.threshold.name}",
        "customer_id": c.customer,
        "person_id": c.person,
        "scope": c.scope,
        "threshold": c.threshold.name,
        "event": c.threshold.event,
        "count": c.count,
        "required": c.threshold.count,
        "window_days": c.threshold.window_days,
        "north_star": c.threshold.north_star,
        "plan": c.plan,
        "crossed_at": c.crossed_at,
        "occurred_at": now_ms,
        "trigger_event_id": c.trigger_event_id,
        "prompt": PROMPT,
    }
