"""The abuse guard's detector: spikes against the customer's own baseline, caps, growth that is not abuse,
one signal per minute and kind, bounded memory."""

from __future__ import annotations

from decimal import Decimal

from services.metering_aggregator.abuse import (
    PERSON_SPIKE,
    RATE_CAP,
    RATE_SPIKE,
    USAGE_CAP,
    AbuseDetector,
)
from services.plans.model import AbusePolicy
from services.plans.periods import MINUTE_MS

T0 = 1_800_000_000_000 - 1_800_000_000_000 % MINUTE_MS
POLICY = AbusePolicy(expected_events_per_minute=100, min_events_per_minute=600)


def minute(i: int) -> int:
    return T0 + i * MINUTE_MS


def feed(detector: AbuseDetector, policy: AbusePolicy, per_minute: list[int], customer: str = "acme"):
    signals = []
    for i, n in enumerate(per_minute):
        # in batches of 50, as the aggregator calls it
        while n > 0:
            k = min(n, 50)
            signals += detector.observe(customer, "free", policy, minute(i) + 1000, k, set())
            n -= k
    return signals


def test_a_jump_to_ten_times_the_customers_own_baseline_is_a_spike_signalled_once_in_its_minute():
    d = AbuseDetector()
    signals = feed(d, POLICY, [100] * 30 + [5000])
    assert [s.kind for s in signals] == [RATE_SPIKE]
    s = signals[0]
    assert s.minute_start_ms == minute(30)
    assert s.observed > s.threshold >= Decimal(600)
    assert not s.suspend  # a spike is a suspicion unless the plan says otherwise


def test_a_customer_that_grows_steadily_is_not_flagged():
    d = AbuseDetector()
    # x1.05 a minute: doubling every ~14 minutes, 100 -> ~34 000 events/min over two hours
    rates = [int(100 * 1.05**i) for i in range(120)]
    assert feed(d, POLICY, rates) == []


def test_small_customers_under_the_plans_floor_are_never_spikes():
    d = AbuseDetector()
    assert feed(d, AbusePolicy(expected_events_per_minute=1), [1] * 30 + [500]) == []


def test_caps_suspend_when_the_plan_says_so():
    policy = AbusePolicy(
        suspend_on_abuse=True, max_events_per_minute=1000, hard_caps={"api_requests": Decimal(10)}
    )
    d = AbuseDetector()
    signals = feed(d, policy, [1200])
    kinds = {s.kind: s for s in signals}
    assert set(kinds) == {RATE_CAP, RATE_SPIKE}
    assert kinds[RATE_CAP].suspend
    assert not kinds[RATE_SPIKE].suspend
    usage = d.usage("acme", "free", policy, minute(0) + 2000, "api_requests", Decimal(11))
    assert [(s.kind, s.meter, s.suspend) for s in usage] == [(USAGE_CAP, "api_requests", True)]
    assert (
        d.usage("acme", "free", policy, minute(0) + 3000, "api_requests", Decimal(12)) == []
    )  # once a minute
    assert d.usage("acme", "free", policy, minute(0) + 3000, "storage_gb", Decimal(99)) == []  # no cap


def test_a_burst_of_new_persons_is_a_person_spike():
    d = AbuseDetector()
    policy = AbusePolicy(expected_persons_per_minute=5, min_persons_per_minute=50)
    for i in range(20):
        assert d.observe("acme", "free", policy, minute(i), 10, {f"u{j}" for j in range(5)}) == []
    signals = d.observe("acme", "free", policy, minute(20), 10, {f"new{j}" for j in range(80)})
    assert [s.kind for s in signals] == [PERSON_SPIKE]
    assert signals[0].persons_in_minute == 80


def test_idle_customers_are_forgotten_so_memory_stays_bounded():
    d = AbuseDetector()
    for c in range(1000):
        d.observe(f"c{c}", "free", POLICY, minute(0), 1, set())
    d.observe("active", "free", POLICY, minute(2000), 1, set())
    assert len(d) == 1001
    assert d.expire(minute(2000)) == 1000
    assert list(d.customers) == ["active"]
