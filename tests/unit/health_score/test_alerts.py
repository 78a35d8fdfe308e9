"""Alerts with hysteresis: a noisy series around the threshold raises exactly one alert."""

from __future__ import annotations

import random

from services.health_score.alerts import CustomerAlertState, Hysteresis, RuleState, band_step, evaluate
from services.health_score.model import DAY_MS
from services.health_score.registry import load_config

CONFIG = load_config()
MINUTE = 60_000


def test_a_noisy_series_around_the_threshold_raises_exactly_one_alert() -> None:
    rule = Hysteresis.of(CONFIG.alerts["churn_risk"])  # enter 0.85, exit 0.75
    rng = random.Random(7)
    state = RuleState()
    fired = []
    t = 0
    for _ in range(2_000):  # wobbling ±0.06 around 0.85, never below the exit bound
        t += MINUTE
        if rule.step(state, t, 0.85 + rng.uniform(-0.06, 0.06)):
            fired.append(t)
    assert len(fired) == 1


def test_leaving_needs_the_second_bound_and_the_cooldown_holds_re_entries() -> None:
    rule = Hysteresis(direction="above", enter=0.85, exit=0.75, min_duration_ms=0, cooldown_ms=DAY_MS)
    state = RuleState()
    series = [0.9, 0.8, 0.9, 0.7, 0.9]  # dips to 0.8 stay inside; 0.7 leaves; re-entry within the cooldown
    assert [rule.step(state, i * MINUTE, v) for i, v in enumerate(series)] == [
        True,
        False,
        False,
        False,
        False,
    ]
    assert rule.step(state, 2 * DAY_MS, 0.7) is False
    assert rule.step(state, 2 * DAY_MS + 1, 0.9) is True, "after the cooldown a new episode fires"


def test_minimum_duration_ignores_short_spikes() -> None:
    rule = Hysteresis(direction="below", enter=-2.5, exit=-1.0, min_duration_ms=10 * MINUTE, cooldown_ms=0)
    state = RuleState()
    assert not rule.step(state, 0, -3.0)
    assert not rule.step(state, 5 * MINUTE, -0.5)  # back to normal: the pending episode is dropped
    assert not rule.step(state, 6 * MINUTE, -3.0)
    assert not rule.step(state, 12 * MINUTE, -3.0)
    assert rule.step(state, 16 * MINUTE, -3.0)


def test_band_drop_must_settle_and_fires_once() -> None:
    rule = CONFIG.alerts["band_dropped"]  # 10 minutes
    from services.health_score.alerts import BandState

    state = BandState()
    t = 0
    out = []
    for band in ["green"] * 3 + ["yellow", "green"] * 5 + ["yellow"] * 20:
        t += MINUTE
        out.append(band_step(rule, state, t, band))
    assert [x for x in out if x] == [("green", "yellow")]


def test_evaluate_fires_churn_risk_once_on_a_falling_customer() -> None:
    from services.health_score.model import Context
    from services.health_score.scoring import compute_score
    from tests.unit.health_score.test_scoring import NOW, steady

    state = CustomerAlertState()
    bad = {k: v for k, v in steady(days=3).items()}
    for day in bad.values():
        day.actions.clear()
        day.people.clear()
        day.payment_failures = 3
    alerts = []
    for i in range(5):
        score = compute_score(
            CONFIG,
            "acme",
            bad,
            Context(plan="starter", billing_status="past_due", open_tickets=9),
            NOW + i * MINUTE,
        )
        alerts += evaluate(CONFIG, state, score, None)
    assert [a.rule for a in alerts] == ["churn_risk"]
    assert alerts[0].alert_id == f"acme|churn_risk|{NOW}"
    restored = CustomerAlertState.from_json(state.to_json())
    assert restored == state
