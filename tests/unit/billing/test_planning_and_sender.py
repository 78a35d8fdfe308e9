"""Pure parts of the reporter: identifiers, revisions, the rate budget, the breaker, back-off, outcomes,
and the sender's handling of each outcome (with a fake ledger and a fake Stripe)."""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from decimal import Decimal

import pytest
import stripe

from services.billing_reporter.ledger import ReportRow, _started
from services.billing_reporter.planning import event_time, next_revision, report_identifier, window_closed
from services.billing_reporter.reconcile import Cover
from services.billing_reporter.sender import (
    CircuitBreaker,
    OutboxSender,
    RateBudget,
    SenderOptions,
    backoff_delay,
)
from services.billing_reporter.stripe_gateway import Outcome, classify


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_identifiers_are_deterministic_distinct_and_fit_stripe():
    a = report_identifier("acme", "api_requests", 1_700_000_000_000, 0)
    assert a == report_identifier("acme", "api_requests", 1_700_000_000_000, 0)
    others = {
        report_identifier("acme", "api_requests", 1_700_000_000_000, 1),
        report_identifier("acme", "api_requests", 1_700_000_060_000, 0),
        report_identifier("acme", "compute_seconds", 1_700_000_000_000, 0),
        report_identifier("acme|api", "requests", 1_700_000_000_000, 0),  # no ambiguity through joining
        report_identifier("x" * 128, "api_requests", 1_700_000_000_000, 0),
    }
    assert a not in others
    assert len(others) == 5
    assert all(len(i) <= 100 for i in (a, *others))


def test_revisions_carry_only_whole_missing_units():
    assert next_revision(Decimal(12), Decimal(0), 0) == (rev := next_revision(Decimal(12), Decimal(0), 0))
    assert rev is not None
    assert (rev.revision, rev.quantity, rev.window_total) == (0, 12, 12)
    corr = next_revision(Decimal(15), Decimal(12), 1)
    assert corr is not None
    assert (corr.revision, corr.quantity, corr.window_total) == (1, 3, 15)
    assert next_revision(Decimal("12.9"), Decimal(12), 1) is None  # the fraction never reaches Stripe
    assert next_revision(Decimal(10), Decimal(12), 1) is None  # never a negative report
    assert window_closed(60_000, 60_000, 0)
    assert not window_closed(60_000, 60_000, 1)


def test_the_budget_spaces_calls_and_a_retry_after_pauses_everything():
    clock = Clock()
    budget = RateBudget(10, burst=2, clock=clock)
    assert budget.wait_time() == 0
    budget.take()
    budget.take()
    assert budget.wait_time() == pytest.approx(0.1)
    clock.now += 0.1
    assert budget.wait_time() == 0
    budget.pause_until(clock.now + 3)
    assert budget.wait_time() == pytest.approx(3)


def test_the_breaker_opens_after_failures_in_a_row_and_a_probe_decides():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=1.0, max_cooldown=4.0, clock=clock)
    for _ in range(2):
        breaker.failure()
    breaker.success()  # the run of failures is broken
    for _ in range(3):
        breaker.failure()
    assert breaker.state == "open"
    assert breaker.wait_time() == pytest.approx(1.0)
    clock.now += 1.0
    assert breaker.state == "half_open"
    breaker.failure()  # the probe failed: open again, longer
    assert (breaker.state, breaker.cooldown) == ("open", 2.0)
    clock.now += 2.0
    breaker.success()
    assert (breaker.state, breaker.cooldown) == ("closed", 1.0)


def test_backoff_is_full_jitter_under_a_cap():
    rng = random.Random(1)
    delays = [backoff_delay(a, 0.5, 8.0, rng) for a in range(10) for _ in range(50)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert max(backoff_delay(0, 0.5, 8.0, rng) for _ in range(100)) <= 0.5


def _error(cls: type[stripe.StripeError], status: int, message: str, headers: dict[str, str] | None = None):
    if cls is stripe.InvalidRequestError:
        return cls(message, None, http_status=status, headers=headers or {})
    return cls(message, http_status=status, headers=headers or {})


@pytest.mark.parametrize(
    ("error", "kind", "failing", "retry_after"),
    [
        (_error(stripe.RateLimitError, 429, "slow down", {"Retry-After": "2"}), "retry", False, 2.0),
        (_error(stripe.APIError, 500, "boom"), "retry", True, None),
        (_error(stripe.APIError, 503, "unavailable"), "retry", True, None),
        (stripe.APIConnectionError("timed out"), "retry", True, None),
        (_error(stripe.IdempotencyError, 409, "in progress"), "retry", False, None),
        (
            _error(stripe.InvalidRequestError, 400, "An event already exists with identifier plg_x."),
            "duplicate",
            False,
            None,
        ),
        (
            _error(stripe.InvalidRequestError, 400, "Timestamp must be within the past 35 calendar days."),
            "rejected",
            False,
            None,
        ),
        (
            _error(
                stripe.IdempotencyError,
                400,
                "Keys for idempotent requests can only be used with the same parameters",
            ),
            "rejected",
            False,
            None,
        ),
        (_error(stripe.AuthenticationError, 401, "Invalid API Key"), "retry", True, None),
    ],
)
def test_stripe_answers_become_outcomes(error, kind, failing, retry_after):
    outcome = classify(error)
    assert (outcome.kind, outcome.stripe_failing, outcome.retry_after) == (kind, failing, retry_after)


ROW = ReportRow(
    "acme", "api_requests", 60_000, 120_000, 0, Decimal(5), Decimal(5), "plg_1", "cus_acme", "pending", 0, 0.0
)


class FakeLedger:
    def __init__(self, rows: list[ReportRow]) -> None:
        self.rows = rows
        self.calls: list[tuple] = []

    def claim_due(self, limit: int, lease: float) -> list[ReportRow]:
        rows, self.rows = self.rows, []
        return rows

    def release(self, ids) -> None:
        self.calls.append(("release", list(ids)))

    def mark_delivered(self, ident: str, how: str) -> None:
        self.calls.append(("delivered", ident, how))

    def mark_retry(self, ident: str, delay: float, error: str) -> None:
        self.calls.append(("retry", ident, round(delay, 3)))

    def mark_rejected(self, ident: str, error: str) -> None:
        self.calls.append(("rejected", ident))

    def unpublished(self, limit: int) -> list[ReportRow]:
        return []


class FakeStripe:
    def __init__(self, outcomes: list[Outcome]) -> None:
        self.outcomes = outcomes
        self.sent: list[dict] = []

    def send_meter_event(self, **kwargs) -> Outcome:
        self.sent.append(kwargs)
        return self.outcomes.pop(0)


def sender(rows, outcomes, **options) -> tuple[OutboxSender, FakeLedger, FakeStripe]:
    ledger, fake = FakeLedger(rows), FakeStripe(outcomes)
    opts = SenderOptions(requests_per_second=1000, backoff_base=0.0, **options)
    return (
        OutboxSender(ledger, fake, {"api_requests": "api_requests"}, opts, rng=random.Random(0)),
        ledger,
        fake,
    )  # type: ignore[arg-type]


def test_the_sender_sends_identifier_value_and_window_start():
    s, ledger, fake = sender([ROW], [Outcome("delivered")])
    s.run_once()
    assert fake.sent == [
        {
            "event_name": "api_requests",
            "stripe_customer_id": "cus_acme",
            "value": 5,
            "timestamp": 60,
            "identifier": "plg_1",
        }
    ]
    assert ledger.calls == [("delivered", "plg_1", "delivered")]


def test_a_window_from_before_the_subscription_in_its_first_period_is_dated_at_its_start():
    """Stripe bills a metered price from the subscription's start only; plg the whole period it began in."""
    started = 600.5  # epoch seconds: the subscription began after ROW's window (60 s - 120 s)
    early = _started(ROW, (0, started))  # usage_from 0: the window is in the period it began in
    assert early.not_before == started
    assert _started(ROW, (60_001, started)) is ROW  # an earlier period's window keeps its date
    assert _started(ROW, (0, 30.0)) is ROW  # a window after the start too
    assert _started(ROW, None) is ROW  # no subscription
    s, _, fake = sender([early], [Outcome("delivered")])
    s.run_once()
    assert fake.sent[0]["timestamp"] == 601  # inside the subscription's first period


def test_the_date_is_decided_when_planned_and_every_attempt_sends_it():
    """Planned dates (migration 0162): the same as the sender's for reports from before, and they win over
    the subscription row at send time — a report planned while an earlier subscription covered the window
    keeps that date (its identifier is the Idempotency-Key: a retry must send the same timestamp)."""
    started = 600.5
    assert event_time(60_000, (0, started)) == 601  # before the start, in its first period: at the start
    assert event_time(60_000, (60_001, started)) == 60  # an earlier period's window: its own start
    assert event_time(60_000, (0, 30.0)) == 60  # after the start
    assert event_time(60_000, None) == 60
    planned = replace(ROW, event_at=60)
    assert _started(planned, (0, started)) is planned
    s, _, fake = sender([planned], [Outcome("delivered")])
    s.run_once()
    assert fake.sent[0]["timestamp"] == 60


def test_windows_after_a_cancel_are_covered_again_only_from_a_new_subscriptions_period():
    cancel, new_period = 1_000_000, 5_000_000
    cases = [
        (Cover("active", None, None), [0, 10**13], []),
        # canceled: its last windows, not those after it
        (Cover("canceled", cancel, None), [cancel - 1], [cancel, new_period]),
        # subscribed again: its first plg period starts later; the gap belongs to none
        (Cover("active", cancel, new_period), [cancel - 1, new_period], [cancel, new_period - 1]),
        # subscribed again within the canceled one's period: all of it
        (Cover("active", cancel, cancel - 500), [cancel - 1, cancel], []),
    ]
    for cover, covered, held in cases:
        assert [cover.covers(w) for w in covered] == [True] * len(covered), cover
        assert [cover.covers(w) for w in held] == [False] * len(held), cover


def test_a_duplicate_counts_as_delivered_and_a_rejection_is_final():
    s, ledger, _ = sender(
        [ROW, replace(ROW, identifier="plg_2")], [Outcome("duplicate"), Outcome("rejected", "old")]
    )
    s.run_once()
    assert ledger.calls == [("delivered", "plg_1", "duplicate"), ("rejected", "plg_2")]


def test_a_429_waits_for_retry_after_and_pauses_the_next_call():
    s, ledger, _ = sender([ROW], [Outcome("retry", "429", retry_after=2.0)])
    s.run_once()
    assert ledger.calls == [("retry", "plg_1", 2.0)]
    assert s.budget.wait_time() > 1.5


def test_failures_open_the_breaker_and_the_rest_is_given_back_when_stopping():
    rows = [replace(ROW, identifier=f"plg_{i}") for i in range(3)]
    failing = [Outcome("retry", "500", stripe_failing=True)] * 2
    s, ledger, fake = sender(rows, failing, failure_threshold=2, breaker_cooldown=30.0)
    stop = threading.Event()
    send = s._send

    def send_and_stop_after_two(row: ReportRow) -> None:
        send(row)
        if len(fake.sent) == 2:
            stop.set()  # the third would wait 30 s for the breaker; a stopping sender gives it back

    s._send = send_and_stop_after_two  # type: ignore[method-assign]
    s.run_once(stop)
    assert len(fake.sent) == 2
    assert s.breaker.state == "open"
    assert ("release", ["plg_2"]) in ledger.calls
