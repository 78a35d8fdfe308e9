"""The outbox sender: delivers the ledger's pending reports to Stripe, then publishes them on
``billing-reports``.

Each report goes out with its deterministic identifier (also the Idempotency-Key), so every retry —
after a 5xx, a 429, a timeout whose request Stripe did act on, or a crash of this process — is the same
request, and Stripe keeps one copy. What it respects:

* a **requests/s budget** (a token bucket; Stripe's sandbox allows about 25/s, live meter events 1000/s);
* **429 and Retry-After**: the report waits at least that long, and so does every other call (the limit
  is the account's, not the report's);
* **backoff with full jitter** per report (``base * 2**attempts``, capped);
* a **circuit breaker**: after ``failure_threshold`` Stripe failures in a row (5xx, timeouts, connection
  errors) no call is made for ``cooldown`` (doubling up to ``max_cooldown``); then one probe decides.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from services.billing_reporter.ledger import Ledger, ReportRow
from services.billing_reporter.stripe_gateway import Outcome
from services.kernel import metrics

log = logging.getLogger(__name__)

CALLS = metrics.counter("plg_billing_stripe_calls", "Meter-event calls to Stripe, by outcome.", ("outcome",))
BREAKER = metrics.gauge("plg_billing_circuit_open", "1 while the Stripe circuit breaker is open.")
PUBLISHED = metrics.counter(
    "plg_billing_reports_published", "Delivered reports published on billing-reports."
)
REPORT_LATENCY = metrics.histogram(
    "plg_billing_report_delay_seconds",
    "From a report's planning (its window's aggregate committed) to Stripe accepting it.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
)


class RateBudget:
    """A token bucket: at most ``rate`` calls per second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.clock = clock
        self._tokens = self.burst
        self._last = clock()
        self._not_before = 0.0

    def pause_until(self, at: float) -> None:
        """No call before ``at`` (a 429's Retry-After)."""
        self._not_before = max(self._not_before, at)

    def wait_time(self) -> float:
        """Seconds to wait before the next call may go (0: now), without taking a token."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if now < self._not_before:
            return self._not_before - now
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        self._tokens -= 1


class CircuitBreaker:
    """closed → (``failure_threshold`` failures in a row) → open for ``cooldown`` → half-open: one
    probe; success closes it, failure reopens it with the cooldown doubled (up to ``max_cooldown``)."""

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown: float = 1.0,
        max_cooldown: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.clock = clock
        self.failures = 0
        self.cooldown = cooldown
        self.opened_at: float | None = None
        self.opened_count = 0

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() >= self.opened_at + self.cooldown else "open"

    def wait_time(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown - self.clock())

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.cooldown = self.base_cooldown
        BREAKER.set(0)

    def failure(self) -> None:
        if self.state == "half_open":
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            self.opened_at = self.clock()
            self.opened_count += 1
            return
        self.failures += 1
        if self.opened_at is None and self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            self.opened_count += 1
            BREAKER.set(1)
            log.warning(
                "Stripe failing (%d calls in a row): circuit open for %.1fs", self.failures, self.cooldown
            )


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter (AWS architecture blog): uniform in ``[0, min(cap, base * 2**attempts)]``, so retries of
    many reports after one outage spread out instead of arriving together."""
    return rng.uniform(0, min(cap, base * (2 ** min(attempts, 30))))


@dataclass(frozen=True)
class SenderOptions:
    # Meters reported as levels: their events carry the time they were planned (Stripe's ``last`` keeps
    # the latest by timestamp), not their window's start.
    level_meters: frozenset[str] = frozenset()
    requests_per_second: float = 20.0
    batch_size: int = 200
    lease_seconds: float = 30.0
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    failure_threshold: int = 5
    breaker_cooldown: float = 1.0
    breaker_max_cooldown: float = 30.0
    idle_wait: float = 0.2


class MeterEventSink(Protocol):
    """What the sender needs of Stripe (the gateway, or a fake in unit tests)."""

    def send_meter_event(
        self, *, event_name: str, stripe_customer_id: str, value: int, timestamp: int, identifier: str
    ) -> Outcome: ...


class OutboxSender:
    """Drains the ledger: claim due reports, send each, record the outcome, publish what was delivered.

    ``publish(rows)`` writes delivered reports to ``billing-reports`` and returns once the broker has them
    (the rows are marked published only then: at least once; ``report_id`` dedups downstream)."""

    def __init__(
        self,
        ledger: Ledger,
        stripe: MeterEventSink,
        event_names: dict[str, str],
        options: SenderOptions | None = None,
        publish: Callable[[list[ReportRow]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.ledger = ledger
        self.stripe = stripe
        self.event_names = event_names
        self.options = options or SenderOptions()
        self.publish = publish
        self.clock = clock
        self.rng = rng or random.Random()
        self.budget = RateBudget(self.options.requests_per_second, clock=clock)
        self.breaker = CircuitBreaker(
            self.options.failure_threshold,
            self.options.breaker_cooldown,
            self.options.breaker_max_cooldown,
            clock=clock,
        )
        self.calls = 0
        self.last_error: str | None = None

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                worked = self.run_once(stop)
            except Exception:
                log.exception("outbox sender round failed; retrying")
                worked = False
            if not worked:
                stop.wait(self.options.idle_wait)

    def run_once(self, stop: threading.Event | None = None) -> bool:
        """One round: send what is due (as the budget and the breaker allow), publish what was delivered.
        Returns whether anything was done."""
        rows = self.ledger.claim_due(self.options.batch_size, self.options.lease_seconds)
        for i, row in enumerate(rows):
            if stop is not None and stop.is_set():
                self.ledger.release([r.identifier for r in rows[i:]])
                break
            if not self._wait_for_turn(stop):
                self.ledger.release([r.identifier for r in rows[i:]])
                break
            self._send(row)
        published = self._publish()
        return bool(rows) or published

    def _wait_for_turn(self, stop: threading.Event | None) -> bool:
        while True:
            wait = max(self.breaker.wait_time(), self.budget.wait_time())
            if wait <= 0:
                self.budget.take()
                return True
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                time.sleep(wait)

    def _send(self, row: ReportRow) -> None:
        event_name = self.event_names.get(row.meter, row.meter)
        self.calls += 1
        outcome = self.stripe.send_meter_event(
            event_name=event_name,
            stripe_customer_id=row.stripe_customer_id,
            value=int(row.quantity),
            timestamp=self._timestamp(row),
            identifier=row.identifier,
        )
        CALLS.labels(outcome.kind).inc()
        if outcome.done:
            self.breaker.success()
            self.ledger.mark_delivered(row.identifier, outcome.kind)
            REPORT_LATENCY.observe(max(0.0, time.time() - row.created_at))
            return
        self.last_error = outcome.detail
        if outcome.kind == "rejected":
            self.breaker.success()  # Stripe answered; the request is what is wrong
            log.error("Stripe rejected report %s for good: %s", row.identifier, outcome.detail)
            self.ledger.mark_rejected(row.identifier, outcome.detail)
            return
        if outcome.stripe_failing:
            self.breaker.failure()
        delay = backoff_delay(row.attempts, self.options.backoff_base, self.options.backoff_cap, self.rng)
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
            self.budget.pause_until(self.clock() + outcome.retry_after)
        self.ledger.mark_retry(row.identifier, delay, outcome.detail)

    def _timestamp(self, row: ReportRow) -> int:
        if row.meter in self.options.level_meters:
            # The level as of planning, inside its period (so Stripe's `last` orders the revisions).
            return int(min(max(row.created_at, row.window_start / 1000), row.window_end / 1000 - 1))
        # The window's start: inside the same Stripe billing period as all of the window's usage; a window
        # from before the subscription began in its first period at the start (ledger._started), where
        # Stripe bills it.
        if row.event_at is not None:
            return row.event_at  # decided when planned (planning.event_time): the same on every attempt
        start = row.window_start // 1000
        return start if row.not_before is None else max(start, int(row.not_before) + 1)

    def _publish(self) -> bool:
        if self.publish is None:
            return False
        rows = self.ledger.unpublished(self.options.batch_size)
        if not rows:
            return False
        self.publish(rows)
        self.ledger.mark_published([r.identifier for r in rows])
        PUBLISHED.inc(len(rows))
        return True

    def status(self) -> dict[str, Any]:
        return {"circuit": self.breaker.state, "calls": self.calls, "last_error": self.last_error}
