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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.activation import (  # the config: a domain model shared with analytics
    SCOPES,
    ActivationConfig,
    Threshold,
)

DAY_MS = 86_400_000
PROMPT = "show-upgrade-prompt"
#: Event ids remembered per counter to drop duplicates (client retries).
RECENT_IDS = 16


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


#: Persons whose counters one partition keeps per customer (``GROWTH_ACTIVATION_MAX_PERSONS_PER_CUSTOMER``).
MAX_PERSONS_PER_CUSTOMER = 100_000


class Tracker:
    """One partition's activation state. ``apply`` changes it and returns the crossings; the keys changed
    since the last :meth:`take_dirty` are what the changelog must get (None: the key was deleted).

    Bounded: per customer at most ``max_persons`` persons are tracked; past that the least recently active
    person's counters and crossings are dropped (and tombstoned in the changelog), so a tenant sending
    made-up person ids only ever evicts its own least active persons. An evicted person who comes back
    counts from zero and may cross a threshold again (docs/growth.md#bounded-state)."""

    def __init__(
        self,
        config: ActivationConfig,
        state: dict[str, dict[str, Any]] | None = None,
        max_persons: int = MAX_PERSONS_PER_CUSTOMER,
    ) -> None:
        self.config = config
        self.state: dict[str, dict[str, Any]] = state if state is not None else {}
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()
        self.max_persons = max(1, max_persons)
        self.evicted = 0
        # customer -> its persons, least recently active first (a dict as an ordered set). Rebuilt from the
        # state in changelog order, which is the order of their last writes.
        self.persons: dict[str, dict[str, None]] = {}
        for value in self.state.values():
            if value.get("scope") == "person" and value.get("subject"):
                seen = self.persons.setdefault(str(value["customer"]), {})
                subject = str(value["subject"])
                seen.pop(subject, None)
                seen[subject] = None
        self._events = sorted({*config.by_event, *config.extra_events})
        self._thresholds = sorted({t.name for ts in config.by_event.values() for t in ts})

    def person_count(self) -> int:
        return sum(len(p) for p in self.persons.values())

    def take_dirty(self) -> list[tuple[str, dict[str, Any] | None]]:
        changed: list[tuple[str, dict[str, Any] | None]] = [(k, self.state[k]) for k in sorted(self.dirty)]
        changed += [(k, None) for k in sorted(self.deleted)]
        self.dirty.clear()
        self.deleted.clear()
        return changed

    def _touch(self, customer: str, person: str) -> None:
        """``person`` was active now; past the bound, the customer's least recently active one goes."""
        seen = self.persons.get(customer)
        if seen is None:
            seen = self.persons[customer] = {}
        elif person in seen:
            del seen[person]
        seen[person] = None
        while len(seen) > self.max_persons:
            oldest = next(iter(seen))
            del seen[oldest]
            self._drop_person(customer, oldest)

    def _drop_person(self, customer: str, person: str) -> None:
        keys = [counter_key("person", customer, person, e) for e in self._events]
        keys += [fired_key("person", customer, person, t) for t in self._thresholds]
        for key in keys:
            if self.state.pop(key, None) is not None:
                self.dirty.discard(key)
                self.deleted.add(key)
        self.evicted += 1

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
        if person is not None:
            self._touch(customer, person)
        for scope in SCOPES:
            subject = person if scope == "person" else ""
            if subject is None:
                continue
            key = counter_key(scope, customer, subject, str(name))
            counter = self.state.get(key)
            if counter is None:
                counter = {"scope": scope, "customer": customer, "subject": subject, "event": name, "n": 0}
                self.state[key] = counter
                self.deleted.discard(key)
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
                    self.deleted.discard(fkey)
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
