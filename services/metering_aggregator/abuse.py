"""The free-tier abuse guard's detector (pure, no I/O): per-customer rate anomalies on the metering layer.

Per customer the detector counts, in the current minute of the partition clock (arrival time, like
lateness), the events counted and the distinct persons (``user_id``, else ``anonymous_id``) seen, and keeps
a **baseline** of each: an exponentially weighted mean per minute (``alpha`` 0.05, about a 20-minute
memory, idle minutes decaying it), started at the plan's norm. A minute is anomalous when it exceeds
``burst_factor`` times the baseline *and* the plan's floor (``min_events_per_minute`` /
``min_persons_per_minute``), so a customer that grows — even fast, doubling every few minutes — moves its
baseline along and is never flagged, while a jump from its own normal to ten times that within one minute
is. Caps are absolute: ``max_events_per_minute`` and ``hard_caps`` (a meter's period usage) are abuse
whatever the history. Each customer signals at most once per minute and kind, the moment the threshold is
crossed (not at the minute's end), so a suspension can follow within seconds.

Memory: one :class:`CustomerRate` per customer seen on the partition (a few numbers and the current
minute's person set, capped at ``PERSONS_CAP``); customers idle for ``IDLE_MINUTES`` are dropped by
:meth:`AbuseDetector.expire`, and the size is exported (``plg_metering_abuse_tracked_customers``). The state
is not in the changelog: after a restart or rebalance baselines start again from the plan's norm (which
can only make the guard *less* sensitive for ~20 minutes, never count anything differently).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from services.plans.model import AbusePolicy
from services.plans.periods import MINUTE_MS

ALPHA = 0.05
PERSONS_CAP = 10_000
IDLE_MINUTES = 24 * 60

RATE_SPIKE = "rate_spike"
PERSON_SPIKE = "person_spike"
RATE_CAP = "rate_cap"
USAGE_CAP = "usage_cap"
KINDS = (RATE_SPIKE, PERSON_SPIKE, RATE_CAP, USAGE_CAP)


@dataclass(slots=True)
class CustomerRate:
    minute: int  # epoch minute of the counts below
    events: int = 0
    persons: set[str] = field(default_factory=set)
    base_events: float = 0.0
    base_persons: float = 0.0
    signalled: set[str] = field(default_factory=set)  # kinds signalled in this minute


@dataclass(frozen=True, slots=True)
class Signal:
    """Evidence of one anomaly: what was seen against what was expected."""

    customer_id: str
    plan: str
    kind: str
    minute_start_ms: int
    observed: Decimal
    expected: Decimal  # the baseline (per minute) or the cap
    threshold: Decimal
    events_in_minute: int
    persons_in_minute: int
    baseline_events: float
    baseline_persons: float
    meter: str | None
    suspend: bool
    reason: str


class AbuseDetector:
    """Anomaly detection for the customers of one partition."""

    def __init__(self) -> None:
        self.customers: dict[str, CustomerRate] = {}

    def __len__(self) -> int:
        return len(self.customers)

    def observe(
        self,
        customer_id: str,
        plan: str,
        policy: AbusePolicy,
        clock_ms: int,
        events: int,
        persons: set[str],
    ) -> list[Signal]:
        """``events`` counted events of ``customer_id`` (one batch's, with their ``persons``) at the
        partition clock; returns the signals they trigger. Called once per customer and batch, not per
        event: the hot path only counts."""
        minute = clock_ms // MINUTE_MS
        rate = self.customers.get(customer_id)
        if rate is None:
            rate = self.customers[customer_id] = CustomerRate(
                minute,
                base_events=float(policy.expected_events_per_minute),
                base_persons=float(policy.expected_persons_per_minute),
            )
        elif minute != rate.minute:
            _roll(rate, minute)
        rate.events += events
        if len(rate.persons) < PERSONS_CAP:
            rate.persons.update(persons)
        signals: list[Signal] = []
        events = rate.events
        if policy.max_events_per_minute is not None and events > policy.max_events_per_minute:
            signals += self._signal(
                rate,
                customer_id,
                plan,
                policy,
                RATE_CAP,
                events,
                policy.max_events_per_minute,
                policy.max_events_per_minute,
                None,
                f"{events} events in one minute, over the plan's cap of {policy.max_events_per_minute}",
            )
        threshold = max(policy.burst_factor * rate.base_events, policy.min_events_per_minute)
        if events > threshold:
            signals += self._signal(
                rate,
                customer_id,
                plan,
                policy,
                RATE_SPIKE,
                events,
                rate.base_events,
                threshold,
                None,
                f"{events} events in one minute against a baseline of {rate.base_events:.1f}/min "
                f"(threshold {threshold:.0f})",
            )
        distinct = len(rate.persons)
        pthreshold = max(policy.burst_factor * rate.base_persons, policy.min_persons_per_minute)
        if distinct > pthreshold:
            signals += self._signal(
                rate,
                customer_id,
                plan,
                policy,
                PERSON_SPIKE,
                distinct,
                rate.base_persons,
                pthreshold,
                None,
                f"{distinct} distinct persons in one minute against a baseline of "
                f"{rate.base_persons:.1f}/min "
                f"(threshold {pthreshold:.0f})",
            )
        return signals

    def usage(
        self, customer_id: str, plan: str, policy: AbusePolicy, clock_ms: int, meter: str, usage: Decimal
    ) -> list[Signal]:
        """A meter's period usage after a batch: past its hard cap it is abuse (once per minute)."""
        cap = policy.hard_caps.get(meter)
        if cap is None or usage <= cap:
            return []
        rate = self.customers.get(customer_id)
        if rate is None:
            return []  # observe() always runs first for a counted event
        if clock_ms // MINUTE_MS != rate.minute:
            _roll(rate, clock_ms // MINUTE_MS)
        return self._signal(
            rate,
            customer_id,
            plan,
            policy,
            USAGE_CAP,
            usage,
            cap,
            cap,
            meter,
            f"{meter} usage {usage} this period, over the plan's hard cap of {cap}",
        )

    def _signal(
        self,
        rate: CustomerRate,
        customer_id: str,
        plan: str,
        policy: AbusePolicy,
        kind: str,
        observed: Any,
        expected: Any,
        threshold: Any,
        meter: str | None,
        reason: str,
    ) -> list[Signal]:
        if kind in rate.signalled:
            return []
        rate.signalled.add(kind)
        # Caps suspend (when the plan says so); a spike against the baseline is a suspicion first and
        # suspends only where the plan asks for it too (suspend_on_spike).
        suspend = policy.suspend_on_abuse and (kind in (RATE_CAP, USAGE_CAP) or policy.suspend_on_spike)
        return [
            Signal(
                customer_id,
                plan,
                kind,
                rate.minute * MINUTE_MS,
                Decimal(str(observed)),
                Decimal(str(round(expected, 3))),
                Decimal(str(round(threshold, 3))),
                rate.events,
                len(rate.persons),
                rate.base_events,
                rate.base_persons,
                meter,
                suspend,
                reason,
            )
        ]

    def expire(self, clock_ms: int) -> int:
        """Forget customers idle for ``IDLE_MINUTES``; returns how many."""
        horizon = clock_ms // MINUTE_MS - IDLE_MINUTES
        idle = [c for c, r in self.customers.items() if r.minute < horizon]
        for c in idle:
            del self.customers[c]
        return len(idle)


def _roll(rate: CustomerRate, minute: int) -> None:
    """Close ``rate``'s minute into its baselines (idle minutes in between decay them); start ``minute``."""
    if minute < rate.minute:  # the clock never goes back; defensive
        return
    keep = 1 - ALPHA
    rate.base_events = keep * rate.base_events + ALPHA * rate.events
    rate.base_persons = keep * rate.base_persons + ALPHA * len(rate.persons)
    idle = min(minute - rate.minute - 1, 10_000)
    if idle > 0:
        decay = keep**idle
        rate.base_events *= decay
        rate.base_persons *= decay
    rate.minute = minute
    rate.events = 0
    rate.persons = set()
    rate.signalled = set()
