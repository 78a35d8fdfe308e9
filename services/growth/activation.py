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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from services.activation import (  # the config: a domain model shared with analytics
    SCOPES,
    ActivationConfig,
    Threshold,
)
from services.kernel.processing.spill import SpillMap
from services.kernel.processing.store import FOLD_BATCH, LocalStore, StoreFold

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


#: Persons one partition tracks per customer (``GROWTH_ACTIVATION_MAX_PERSONS_PER_CUSTOMER``): an abuse guard
#: on disk and changelog size, not a memory bound (memory is bounded by ``GROWTH_STATE_MEMORY_KEYS``).
MAX_PERSONS_PER_CUSTOMER = 1_000_000
#: State entries (counters, crossings) one partition keeps in memory when it has a local store.
MEMORY_KEYS = 1_000_000
#: Prefix of the state's entries in the local store (the kernel's SpillMap; the seal has its own key). A
#: changelog replay folds the records straight under it (their bytes are the map's encoding).
STATE_PREFIX = b"S"
#: Scratch keys of a replay's person count, one per (customer, person) with a counter (RocksDB keeps one of
#: each, however many counters the person has); deleted once counted.
REPLAY_PERSONS = b"P"


def _json(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)


def _unjson(raw: bytes) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(raw)
    return value


def state_map(store: LocalStore | None, memory_keys: int) -> SpillMap[str, dict[str, Any]]:
    """The activation state as the kernel's memory-bounded map: changelog key -> value."""
    return SpillMap(
        store,
        prefix=STATE_PREFIX,
        memory=memory_keys,
        encode_key=str.encode,
        decode_key=bytes.decode,
        encode_value=_json,
        decode_value=_unjson,
    )


def person_counted(value: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (customer, person) a state entry makes tracked (a person-scope counter), else None."""
    if value.get("scope") == "person" and "event" in value and value.get("subject"):
        return str(value["customer"]), str(value["subject"])
    return None


def count_persons(values: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Persons with a counter, per customer (the cap's count, rebuilt from a replayed state)."""
    seen: dict[str, set[str]] = {}
    for value in values:
        who = person_counted(value)
        if who is not None:
            seen.setdefault(who[0], set()).add(who[1])
    return {customer: len(subjects) for customer, subjects in seen.items()}


def count_folded(fold: StoreFold) -> tuple[int, dict[str, int]]:
    """The entries and the persons per customer of a changelog partition folded into its store under
    :data:`STATE_PREFIX` (checkpoint removed), in one scan holding one entry at a time: each person is a
    scratch key in the store (:data:`REPLAY_PERSONS`, dropped after), so the count needs memory per
    customer, not per person — what :func:`count_persons` gives for the same entries."""
    store = fold.store
    entries = 0
    batch = store.batch()
    last: tuple[str, str] | None = None
    for _, raw in fold.scan():
        entries += 1
        who = person_counted(_unjson(raw))
        if who is not None and who != last:  # a person's counters are mostly adjacent: fewer writes
            last = who
            batch.put(REPLAY_PERSONS + orjson.dumps(who), b"")
            if len(batch) >= FOLD_BATCH:
                store.write(batch)
                batch = store.batch()
    store.write(batch)
    persons: dict[str, int] = {}
    for key, _ in store.items(REPLAY_PERSONS):
        customer = orjson.loads(key[len(REPLAY_PERSONS) :])[0]
        persons[customer] = persons.get(customer, 0) + 1
    batch = store.batch()
    batch.delete_range(REPLAY_PERSONS, bytes([REPLAY_PERSONS[0] + 1]))
    store.write(batch)
    return entries, persons


class Tracker:
    """One partition's activation state. ``apply`` changes it and returns the crossings; the keys changed
    since the last :meth:`take_dirty` are what the changelog must get (None: the key was deleted).

    Memory is bounded by the kernel's :class:`~services.kernel.processing.spill.SpillMap`: with a local
    store, at most ``memory_keys`` entries stay in memory after each :meth:`spill` (the handler calls it
    after a commit) and the rest is on disk, read back when a person is active again — nothing is evicted,
    a person's counts are exact however many persons there are (docs/growth.md#bounded-state).

    An abuse guard, not a memory bound: per customer at most ``max_persons`` persons are tracked; a new
    person past it is not counted in the person scope (the customer scope still is) and ``refused`` grows,
    so a tenant sending made-up person ids cannot grow the changelog and the store without end."""

    def __init__(
        self,
        config: ActivationConfig,
        state: dict[str, dict[str, Any]] | None = None,
        max_persons: int = MAX_PERSONS_PER_CUSTOMER,
        *,
        store: LocalStore | None = None,
        memory_keys: int = MEMORY_KEYS,
        persons: dict[str, int] | None = None,
    ) -> None:
        """``state``: entries replayed from the changelog (in memory until the first spill); ``persons``:
        the per-customer person counts of a state already in ``store`` (a sealed store being reused)."""
        self.config = config
        self.state = state_map(store, memory_keys)
        if state is not None:
            for key, value in state.items():
                self.state.insert(key, value)
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()
        self.max_persons = max(1, max_persons)
        self.refused = 0
        self.persons: dict[str, int] = (
            dict(persons) if persons is not None else count_persons(self.state.mem.values())
        )
        self._events = sorted({*config.by_event, *config.extra_events})
        self._thresholds = sorted({t.name for ts in config.by_event.values() for t in ts})

    def person_count(self) -> int:
        return sum(self.persons.values())

    def take_dirty(self) -> list[tuple[str, dict[str, Any] | None]]:
        changed: list[tuple[str, dict[str, Any] | None]] = [(k, self.state[k]) for k in sorted(self.dirty)]
        changed += [(k, None) for k in sorted(self.deleted)]
        self.dirty.clear()
        self.deleted.clear()
        return changed

    def spill(self, memory_keys: int | None = None) -> int:
        """After a commit: entries beyond the memory bound go to the local store (only committed state)."""
        if memory_keys is not None:
            self.state.memory = max(1, memory_keys)
        return self.state.spill()

    def _admit(self, customer: str, person: str, name: str) -> bool:
        """Whether ``person`` is (or may become) tracked for ``customer``: known persons always are; a new
        one while the customer is under ``max_persons``."""
        state = self.state
        if state.get(counter_key("person", customer, person, name), promote=True) is not None:
            return True
        for event in self._events:
            if event != name and counter_key("person", customer, person, event) in state:
                return True
        count = self.persons.get(customer, 0)
        if count >= self.max_persons:
            self.refused += 1
            return False
        self.persons[customer] = count + 1
        return True

    def forget(self, customer: str, matches: Callable[[Any], bool]) -> list[str]:
        """Erase the persons of ``customer`` that ``matches`` (an erasure request): every counter and
        crossing of theirs, in memory and on disk; returns the keys deleted (the changelog's tombstones)."""
        doomed = [
            (k, v)
            for k, v in self.state.items()
            if v.get("customer") == customer and matches(v.get("subject"))
        ]
        subjects = {str(v["subject"]) for _, v in doomed if v.get("scope") == "person" and "event" in v}
        if subjects:
            left = self.persons.get(customer, 0) - len(subjects)
            if left > 0:
                self.persons[customer] = left
            else:
                self.persons.pop(customer, None)
        for key, _ in doomed:
            self.state.pop(key)
            self.dirty.discard(key)
        return [key for key, _ in doomed]

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
        if person is not None and not self._admit(customer, person, str(name)):
            person = None  # past the customer's cap: only the customer scope counts it
        for scope in SCOPES:
            subject = person if scope == "person" else ""
            if subject is None:
                continue
            key = counter_key(scope, customer, subject, str(name))
            counter = self.state.get(key, promote=True)
            if counter is None:
                counter = {"scope": scope, "customer": customer, "subject": subject, "event": name, "n": 0}
                self.state.insert(key, counter)
                self.deleted.discard(key)
            else:
                self.state.touch(key)  # most recently written: the last to leave memory
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
