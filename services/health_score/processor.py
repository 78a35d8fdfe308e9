"""The real-time path: the kernel's at-least-once loop over ``usage-events-enriched`` and
``entitlement-events`` into daily facts per customer (in memory and, with the offsets, in PostgreSQL in one
transaction), a fresh score for every customer a batch touched on ``customer-health``, and the alerts it
fires into the outbox (docs/health-score.md says why this is not faust).

The same facts feed the batch path (:mod:`services.health_score.batch`), so both give the same number."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from services.health_score.alerts import Alert, CustomerAlertState, evaluate
from services.health_score.model import Context, DayFacts, HealthScore, day_of
from services.health_score.registry import HealthConfig
from services.health_score.scoring import compute_score, usage_zscore
from services.health_score.store import CustomerState, Fenced, HealthStore, ScoreRow
from services.kernel import metrics
from services.kernel.caches import BoundedCache
from services.kernel.kafka import TopicPartition
from services.kernel.privacy import APPLIED, Erasure
from services.kernel.processing import Batch, Emit, Message, RetryBatch, SinkHandler
from services.kernel.topics import CUSTOMER_HEALTH, ENTITLEMENT_EVENTS

log = logging.getLogger(__name__)

MERGE_EVENT = "$person_merged"

CACHED_CUSTOMERS = metrics.gauge(
    "plg_health_cached_customers",
    "Customers whose facts the scorer holds in memory (HEALTH_CACHE_CUSTOMERS, least recently scored out).",
)
PERSONS_CAPPED = metrics.counter(
    "plg_health_persons_capped",
    "Key actions of persons not kept because their customer-day already holds HEALTH_MAX_PERSONS_PER_DAY.",
)
HOMES = metrics.gauge(
    "plg_health_home_partitions",
    "usage-events-enriched partitions whose customers this scorer instance scores (its homes).",
)
ROUTED = metrics.counter(
    "plg_health_inbox_routed",
    "Inputs read away from their customer's home and routed to its PostgreSQL inbox.",
)
FOLDED = metrics.counter(
    "plg_health_inbox_folded",
    "Inbox entries folded by their customer's home.",
)
RISK_LEVEL = {"red": "HIGH", "yellow": "MEDIUM", "green": "LOW"}


def health_record(score: HealthScore, plan: str | None, activated: bool, path: str) -> dict[str, Any]:
    """The ``customer-health`` value (schemas/customer_health.avsc) of a score."""
    return {
        "customer_id": score.customer_id,
        "score": score.score,
        "components": score.components,
        "activated": activated,
        "churn_risk": RISK_LEVEL[score.band],
        "computed_at": score.as_of,
        "band": score.band,
        "segment": score.segment,
        "plan": plan,
        "churn_risk_probability": score.churn_risk,
        "previous_score": score.previous_score,
        "trend": score.trend,
        "trend_direction": score.trend_direction,
        "contributions": score.contributions,
        "factors": [
            {
                "name": f.name,
                "component": f.component,
                "value": f.value,
                "points": f.points,
                "max_points": f.max_points,
                "change": f.change,
                "detail": f.detail,
            }
            for f in score.factors
        ],
        "top_factors": [f.name for f in score.top_factors()],
        "active_users": score.active_users,
        "seats": score.seats,
        "config_version": score.config_version,
        "path": path,
    }


class FactsBuilder:
    """Folds enriched events into a customer's daily facts and context (pure; shared by tests and bench)."""

    def __init__(
        self, config: HealthConfig, seats_limits: Mapping[str, int], max_persons_per_day: int = 10_000
    ) -> None:
        self.config = config
        # Persons whose key actions one customer-day keeps (HEALTH_MAX_PERSONS_PER_DAY): a tenant sending
        # made-up person ids cannot grow a day without bound; active users then read as "at least" this.
        self.max_persons_per_day = max_persons_per_day
        self.seats_limits = dict(seats_limits)
        self.key_names = {n for s in config.segments.values() for n in s.key_actions}
        self.onboarding = (
            set(config.metrics["customer.onboarded"].source_events)
            if "customer.onboarded" in config.metrics
            else set()
        )
        self.nps_event = config.sentiment.nps_event
        self.csat_event = config.sentiment.csat_event
        self.payment_failed = config.financial.payment_failure_event
        self.downgraded = config.financial.downgrade_event

    def add_event(self, state: CustomerState, event: Mapping[str, Any]) -> tuple[int | None, str | None]:
        """Applies one enriched event; returns (the day it touched, or None for a merge that rewrote
        days; a problem worth a dead letter, or None)."""
        name = event["name"]
        if name == MERGE_EVENT:
            merge = event.get("merge")
            if merge:
                survivor = event.get("person_id") or merge["survivor_id"]
                for old in {merge["merged_id"], *merge.get("replaced_person_ids", [])} - {survivor}:
                    for day_facts in state.facts.values():
                        day_facts.rename_person(old, survivor)
            return None, None
        ts = int(event["timestamp"])
        day = day_of(ts)
        weight = 1.0 / (event.get("sample_rate") or 1.0)
        facts = state.facts.get(day)
        if facts is None:
            facts = state.facts[day] = DayFacts()
        facts.actions[name] = facts.actions.get(name, 0.0) + weight
        person = event.get("person_id") or event.get("resolved_user_id") or event.get("user_id")
        if person and name in self.key_names:
            mine = facts.people.get(person)
            if mine is None:
                if len(facts.people) >= self.max_persons_per_day:
                    PERSONS_CAPPED.inc()
                    mine = None
                else:
                    mine = facts.people[person] = {}
            if mine is not None:
                mine[name] = mine.get(name, 0.0) + weight
        props = event.get("properties") or {}
        problem = None
        if name == self.nps_event or name == self.csat_event:
            lo, hi, into = (0, 10, facts.nps) if name == self.nps_event else (1, 5, facts.csat)
            value = props.get("score")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                problem = f"{name}: properties.score must be a number {lo}..{hi}, got {value!r}"
            else:
                key = str(round(value))
                into[key] = into.get(key, 0.0) + 1.0
        elif name == self.payment_failed:
            facts.payment_failures += weight
        elif name == self.downgraded:
            facts.downgrades += 1.0
        self._context(state.context, event, ts, props)
        return day, problem

    def _context(self, context: Context, event: Mapping[str, Any], ts: int, props: Mapping[str, Any]) -> None:
        if ts < context.as_of:
            return  # an older event does not overwrite a newer state (event time, not arrival)
        context.as_of = ts
        tenant = event.get("tenant")
        plan = (tenant or {}).get("plan") or event.get("plan")
        if plan:
            context.plan = plan
            context.seats_limit = self.seats_limits.get(plan)
        if tenant:
            context.billing_status = tenant.get("billing_status") or context.billing_status
            context.open_tickets = int(tenant.get("open_tickets") or 0)
            context.csm_owner = tenant.get("csm_owner") or context.csm_owner
        if event["name"] == "seats_changed":
            seats = props.get("seats")
            if isinstance(seats, (int, float)) and not isinstance(seats, bool) and seats >= 1:
                context.seats = int(seats)

    def add_entitlement(self, state: CustomerState, event: Mapping[str, Any]) -> int:
        ts = int(event["occurred_at"])
        day = day_of(ts)
        facts = state.facts.setdefault(day, DayFacts())
        pressure = (
            1.0
            if event["threshold_percent"] >= 100 and event["hard_limit"]
            else (0.5 if event["threshold_percent"] >= 90 else 0.0)
        )
        facts.plan_limits = max(facts.plan_limits, pressure)
        return day

    def activated(self, state: CustomerState) -> bool:
        return any(n in self.onboarding and c > 0 for f in state.facts.values() for n, c in f.actions.items())


#: Called with the scores of every committed batch (the dashboard's live events and cache hooks).
Listener = Callable[[list[Mapping[str, Any]]], None]


@dataclass(frozen=True)
class HomePartitions:
    """Where each customer lives when several scorer instances share the group: ``of(customer)`` is the
    partition of ``topic`` (usage-events-enriched, physical name) its key hashes to, and the instance that
    owns that partition is the customer's only writer (``owner`` names this instance in the claims)."""

    topic: str
    of: Callable[[str], int]
    owner: str


#: (customer, kind "event" | "entitlement", value, the record when read here) — an input to fold.
_Input = tuple[str, str, Mapping[str, Any], "Message | None"]


class HealthSink(SinkHandler):
    """Facts, scores and alerts from each poll; PostgreSQL first (with the offsets), then Kafka.

    With ``homes`` (several instances, docs/health-score.md#scaling-out-several-scorer-instances) the sink
    folds only inputs of customers homed on the usage-events-enriched partitions it owns; the rest (an
    entitlement event whose customer lives elsewhere, an enriched event keyed off its customer) goes to
    the PostgreSQL inbox of its customer's home, in the transaction that stores the source offsets, and
    the home folds it on its next tick. Each write is fenced by the epochs this instance claimed for its
    homes, and the tick's full recompute scores only its own customers — so a customer has one writer of
    facts, context and alert state, and each alert fires once, however many instances run."""

    def __init__(
        self,
        config: HealthConfig,
        store: HealthStore,
        builder: FactsBuilder,
        *,
        clock: Callable[[], float] = time.time,
        on_events: Listener | None = None,
        on_entitlements: Listener | None = None,
        cache_limit: int = 100_000,
        tick_interval: float | None = 300.0,
        history_days: int = 56,
        homes: HomePartitions | None = None,
        inbox_interval: float = 1.0,
    ) -> None:
        self.history_days = history_days
        self.config = config
        self.store = store
        self.builder = builder
        self.clock = clock
        self.on_events = on_events
        self.on_entitlements = on_entitlements
        # The customers' states as PostgreSQL has them after the last saved batch (a failed one empties it):
        # the least recently scored go first past ``cache_limit`` and are loaded again when they come back.
        # Before, a full cache was emptied, so past the limit every batch reloaded all its customers.
        self.cache: BoundedCache[str, CustomerState] = BoundedCache(cache_limit, gauge=CACHED_CUSTOMERS)
        self.cache_limit = cache_limit
        self.entitlement_topic = ENTITLEMENT_EVENTS
        self.homes = homes
        #: The full recompute's period; with homes the loop ticks every ``inbox_interval`` to fold the inbox.
        self.recompute_interval = tick_interval
        self.tick_interval = (
            tick_interval if homes is None or tick_interval is None else min(inbox_interval, tick_interval)
        )
        self._last_recompute = clock()
        #: Home partitions Kafka assigned to this instance, and the epoch claimed for each (fence).
        self.owned: set[int] = set()
        self.epochs: dict[int, int] = {}
        #: Erasure requests to apply before the next write (fed by the erasure follower's thread).
        self.erasures: deque[Erasure] = deque()

    # -- homes ------------------------------------------------------------------------------------------

    def is_home(self, customer_id: str) -> bool:
        return self.homes is None or self.homes.of(customer_id) in self.owned

    def _fence(self) -> dict[int, int] | None:
        return dict(self.epochs) if self.homes is not None else None

    def _claim(self) -> None:
        """Claims the owned homes not claimed yet — always before any of their customers is loaded."""
        missing = self.owned - self.epochs.keys()
        if missing and self.homes is not None:
            self.epochs.update(self.store.claim(missing, self.homes.owner))
            HOMES.set(len(self.owned))

    def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        if self.homes is None:
            return
        self.owned |= {tp.partition for tp in partitions if tp.topic == self.homes.topic}
        try:  # at once, so that a stalled previous owner is fenced as early as possible
            self._claim()
        except psycopg.Error:
            log.warning("claiming home partitions failed; retried before the next write", exc_info=True)

    def revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self.cache.clear()
        if self.homes is not None:
            gone = {tp.partition for tp in partitions if tp.topic == self.homes.topic}
            self.owned -= gone
            self.epochs = {p: e for p, e in self.epochs.items() if p not in gone}
            HOMES.set(len(self.owned))

    # -- erasures ---------------------------------------------------------------------------------------

    def forget(self, erasure: Erasure) -> None:
        """Queue an erasure (any thread): applied before the next batch writes anything."""
        self.erasures.append(erasure)

    def _apply_erasures(self, now_ms: int) -> None:
        """The person leaves the facts in memory and in PostgreSQL (where the CLI removed them already; a
        batch written in between would have put them back), in their own transaction. Only the customer's
        home applies it: every instance hears every erasure, one writes."""
        while self.erasures:
            erasure = self.erasures[0]
            cid = erasure.customer_id
            if self.is_home(cid):
                state = self._states({cid}, now_ms)[cid]
                days = set()
                for day, facts in state.facts.items():
                    for person in [p for p in facts.people if erasure.matches(p)]:
                        del facts.people[person]
                        days.add(day)
                if days:
                    self.store.save({cid: state}, {cid: days}, [], [], {}, fence=self._fence())
            self.erasures.popleft()
            APPLIED.labels("health-score", "state").inc()

    # -- the real-time path -----------------------------------------------------------------------------

    def _states(self, customer_ids: set[str], now_ms: int) -> dict[str, CustomerState]:
        states: dict[str, CustomerState] = {}
        missing = set()
        for cid in customer_ids:
            state = self.cache.get(cid)
            if state is None:
                missing.add(cid)
            else:
                states[cid] = state
        if missing:
            since = day_of(now_ms) - self.config.history_days - 1
            for cid, state in self.store.load(missing, since).items():
                # A batch of more customers than the limit evicts some of its own: this batch still folds
                # into the states returned here and saves them; the next one loads them again.
                self.cache.put(cid, state)
                states[cid] = state
        return {c: states[c] for c in customer_ids}

    def process(self, batch: Batch, out: Emit) -> None:
        now_ms = int(self.clock() * 1000)
        try:
            self._claim()
            if self.erasures:
                self._apply_erasures(now_ms)
        except (psycopg.Error, Fenced) as exc:
            raise RetryBatch(f"health store unavailable: {exc}") from exc
        local: list[_Input] = []
        routed: list[tuple[int, str, str, Mapping[str, Any]]] = []
        for message in batch:
            value = message.value
            if value is None or not value.get("customer_id"):
                if value is not None:
                    out.dead_letter(message, "invalid_event", "customer_id is empty")
                continue
            cid = value["customer_id"]
            kind = "entitlement" if message.topic.endswith(self.entitlement_topic) else "event"
            if self.is_home(cid):
                local.append((cid, kind, value, message))
                continue
            assert self.homes is not None
            if kind == "event":  # judged here, where the record is (its home folds it all the same)
                _, problem = self.builder.add_event(CustomerState({}, Context(), CustomerAlertState()), value)
                if problem:
                    out.dead_letter(message, "invalid_event", problem)
            routed.append((self.homes.of(cid), cid, kind, value))
        if routed:
            ROUTED.inc(len(routed))
        try:
            states = self._states({i[0] for i in local}, now_ms)
        except psycopg.Error as exc:
            raise RetryBatch(f"health store unavailable: {exc}") from exc
        touched, rows, scores, alerts, live, limits = self._fold(local, states, out, now_ms)
        try:
            self.store.save(
                states, touched, rows, alerts, batch.next_offsets, fence=self._fence(), inbox_add=routed
            )
        except (psycopg.Error, Fenced) as exc:
            raise RetryBatch(f"health store unavailable: {exc}") from exc
        self._publish(scores, live, limits, out)

    def _fold(
        self, inputs: Sequence[_Input], states: Mapping[str, CustomerState], out: Emit, now_ms: int
    ) -> tuple[
        dict[str, set[int]],
        list[ScoreRow],
        list[tuple[HealthScore, dict[str, Any]]],
        list[Alert],
        list[Mapping[str, Any]],
        list[Mapping[str, Any]],
    ]:
        """Folds inputs into their customers' states; scores every customer of ``states``."""
        touched: dict[str, set[int]] = {c: set() for c in states}
        live: list[Mapping[str, Any]] = []
        limits: list[Mapping[str, Any]] = []
        merged: set[str] = set()
        for cid, kind, value, message in inputs:
            state = states[cid]
            days = touched[cid]
            if kind == "entitlement":
                days.add(self.builder.add_entitlement(state, value))
                limits.append(value)
                continue
            day, problem = self.builder.add_event(state, value)
            if problem and message is not None:
                out.dead_letter(message, "invalid_event", problem)
            if day is None:
                days.update(state.facts)  # a merge rewrote the customer's history
                merged.add(cid)
            else:
                days.add(day)
            live.append(value)
        scores, alerts = self._score(states, now_ms)
        rows = [ScoreRow(s, r, "realtime") for s, r in scores]
        if merged:
            from services.health_score.batch import history_scores  # the batch path builds on this module

            for cid in merged:  # the daily history of the merged people is re-attributed too
                history = history_scores(
                    self.config, self.builder, cid, states[cid], now_ms, self.history_days
                )
                rows += [ScoreRow(s, r, "batch") for s, r in history]
        return touched, rows, scores, alerts, live, limits

    def _publish(
        self,
        scores: Sequence[tuple[HealthScore, dict[str, Any]]],
        live: list[Mapping[str, Any]],
        limits: list[Mapping[str, Any]],
        out: Emit,
    ) -> None:
        for score, record in scores:
            out.send(CUSTOMER_HEALTH, record, key=score.customer_id)
        if self.on_events is not None and live:
            self.on_events(live)
        if self.on_entitlements is not None and limits:
            self.on_entitlements(limits)

    def _score(
        self, states: Mapping[str, CustomerState], now_ms: int
    ) -> tuple[list[tuple[HealthScore, dict[str, Any]]], list[Alert]]:
        scores = []
        alerts: list[Alert] = []
        for cid, state in states.items():
            score = compute_score(self.config, cid, state.facts, state.context, now_ms)
            z = usage_zscore(self.config, state.facts, now_ms, score.segment)
            alerts.extend(evaluate(self.config, state.alerts, score, z))
            record = health_record(score, state.context.plan, self.builder.activated(state), "realtime")
            scores.append((score, record))
        return scores, alerts

    # -- ticks: the inbox and the batch path ------------------------------------------------------------

    def tick(self, out: Emit) -> None:
        """With homes: the inbox of this instance's homes folded (every ``inbox_interval``). Every
        ``recompute_interval``: the batch path (:meth:`recompute`)."""
        now = self.clock()
        if self.homes is not None:
            try:
                self._claim()
                self._drain(out, int(now * 1000))
            except (psycopg.Error, Fenced):
                log.exception("folding the inbox failed; the next tick retries")
                self.cache.clear()  # it may hold folded entries PostgreSQL never got
        interval = self.recompute_interval
        if interval is not None and now - self._last_recompute >= interval:
            self._last_recompute = now
            self.recompute(out)

    def _drain(self, out: Emit, now_ms: int) -> None:
        entries = self.store.inbox(self.epochs)
        if not entries:
            return
        states = self._states({e.customer_id for e in entries}, now_ms)
        inputs: list[_Input] = [(e.customer_id, e.kind, e.payload, None) for e in entries]
        touched, rows, scores, alerts, live, limits = self._fold(inputs, states, out, now_ms)
        self.store.save(
            states, touched, rows, alerts, {}, fence=self._fence(), inbox_done=[e.id for e in entries]
        )
        FOLDED.inc(len(entries))
        self._publish(scores, live, limits, out)

    def recompute(self, out: Emit) -> None:
        """The batch path on its schedule: every customer of this instance's homes recomputed from
        PostgreSQL's history, its alerts evaluated (scores decay as days pass without events), history
        and topic updated."""
        from services.health_score.batch import recompute  # the batch path builds on this module

        now_ms = int(self.clock() * 1000)
        try:
            self._claim()
            mine = [c for c in self.store.customers() if self.is_home(c)]
            results = recompute(self.store, self.config, self.builder, now_ms, mine)
        except psycopg.Error:
            log.exception("scheduled recompute failed; the next tick retries")
            return
        alerts: list[Alert] = []
        states: dict[str, CustomerState] = {}
        for score, _record, loaded in results:
            cached = self.cache.peek(score.customer_id)  # the alert state this thread owns
            state = loaded if cached is None else cached
            z = usage_zscore(self.config, loaded.facts, now_ms, score.segment)
            alerts.extend(evaluate(self.config, state.alerts, score, z))
            states[score.customer_id] = state
        try:
            self.store.save(
                states, {}, [ScoreRow(s, r, "batch") for s, r, _ in results], alerts, {}, fence=self._fence()
            )
            self.store.prune(day_of(now_ms) - self.config.retention_days)
        except (psycopg.Error, Fenced):
            log.exception("saving the scheduled recompute failed; the next tick retries")
            self.cache.clear()
            return
        for score, record, _ in results:
            out.send(CUSTOMER_HEALTH, record, key=score.customer_id)
        log.info("scheduled recompute", extra={"customers": len(results), "alerts": len(alerts)})

    def rollback(self, assigned: Sequence[TopicPartition]) -> None:
        # The memory may hold a failed batch's facts: PostgreSQL has exactly the committed ones.
        self.cache.clear()

    def stored_offsets(self, partitions: Sequence[TopicPartition]) -> Mapping[tuple[str, int], int]:
        return self.store.stored_offsets((tp.topic, tp.partition) for tp in partitions)
