"""The scoring functions against the seeds' formula and worked weights, and the score's parts."""

from __future__ import annotations

import copy

import pytest
import yaml

from services.health_score.model import DAY_MS, Context, DayFacts, day_of
from services.health_score.registry import DEFAULT_CONFIG_PATH, HealthConfigError, load_config, parse_config
from services.health_score.scoring import combine, compute_score, round_half_up, usage_zscore

CONFIG = load_config()
SEEDS_WEIGHTS = {"usage": 0.5, "sentiment": 0.3, "financial": 0.2}
NOW = 20_000 * DAY_MS + 12 * 3_600_000  # noon UTC of day 20000
TODAY = day_of(NOW)


def seeds_calculate_health_score(usage: float, sentiment: float, financial_risk: float) -> int:
    """The seeds' TypeScript, transcribed line by line (Math.round is floor(x + 0.5))."""
    weights = {"usage": 0.5, "sentiment": 0.3, "financial": 0.2}
    normalized_sentiment = ((sentiment + 1) / 2) * 100
    financial_score = (1 - financial_risk) * 100
    score = (
        usage * weights["usage"]
        + normalized_sentiment * weights["sentiment"]
        + financial_score * weights["financial"]
    )
    import math

    return math.floor(score + 0.5)


def test_the_registry_carries_the_seeds_weights_and_gainsight_bands() -> None:
    assert dict(CONFIG.score_weights) == SEEDS_WEIGHTS
    assert [CONFIG.band(s) for s in (0, 50, 51, 75, 76, 100)] == [
        "red",
        "red",
        "yellow",
        "yellow",
        "green",
        "green",
    ]
    assert CONFIG.metrics["customer.churn_risk"].threshold == 0.85


@pytest.mark.parametrize(
    ("usage", "sentiment", "risk", "expected"),
    [
        (100, 1, 0, 100),
        (0, -1, 1, 0),
        (50, 0, 0.5, 50),  # 25 + 15 + 10
        (80, 0.5, 0.1, 81),  # 40 + 22.5 + 18 = 80.5: Math.round goes up, Python's round would give 80
        (70, -0.2, 0.3, 61),  # 35 + 12 + 14
        (33, 0.1, 0.25, 48),  # 16.5 + 16.5 + 15 = 48.0
    ],
)
def test_combine_is_the_seeds_formula_with_its_worked_weights(
    usage: float, sentiment: float, risk: float, expected: int
) -> None:
    assert combine(usage, sentiment, risk, CONFIG.score_weights) == expected
    assert seeds_calculate_health_score(usage, sentiment, risk) == expected


def test_combine_matches_the_seeds_on_a_grid() -> None:
    for usage in range(0, 101, 7):
        for s10 in range(-10, 11, 3):
            for r10 in range(0, 11, 2):
                s, r = s10 / 10, r10 / 10
                assert combine(usage, s, r, CONFIG.score_weights) == seeds_calculate_health_score(usage, s, r)


def test_round_half_up_is_javascripts_math_round() -> None:
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 62.5, 62.49)] == [1, 2, 3, 63, 62]


def steady(days: int = 28, people: int = 3, per_person: float = 4) -> dict[int, DayFacts]:
    facts = {}
    for i in range(days):
        f = DayFacts()
        for p in range(people):
            f.actions["core_action_completed"] = f.actions.get("core_action_completed", 0) + per_person
            f.people[f"p{p}"] = {"core_action_completed": per_person}
        f.actions["project_created"] = 1
        facts[TODAY - i] = f
    return facts


def test_score_uses_the_formula_on_its_components() -> None:
    s = compute_score(CONFIG, "acme", steady(), Context(plan="starter", seats=3), NOW)
    assert s.score == combine(s.usage, s.sentiment, s.financial_risk, CONFIG.score_weights)
    assert sum(f.points for f in s.factors) == pytest.approx(sum(s.contributions.values()), abs=0.05)
    assert s.active_users == 3
    assert s.seats == 3
    assert s.band == CONFIG.band(s.score)


def test_key_actions_weigh_more_than_passive_logins() -> None:
    logins = {TODAY - i: DayFacts(actions={"user_signed_in": 20}, people={}) for i in range(28)}
    work = {
        TODAY - i: DayFacts(
            actions={"core_action_completed": 20}, people={"p": {"core_action_completed": 20}}
        )
        for i in range(28)
    }
    a = compute_score(CONFIG, "a", logins, Context(plan="starter"), NOW)
    b = compute_score(CONFIG, "b", work, Context(plan="starter"), NOW)
    assert a.active_users == 0, "sign-ins alone never make a user active"
    assert b.usage > a.usage + 20


def test_active_users_against_seats() -> None:
    few = compute_score(CONFIG, "a", steady(people=1), Context(plan="starter", seats=10), NOW)
    many = compute_score(CONFIG, "a", steady(people=10), Context(plan="starter", seats=10), NOW)
    assert (few.active_users, many.active_users) == (1, 10)
    assert {f.name: f.value for f in many.factors}["usage.active_users"] == 1.0
    assert {f.name: f.value for f in few.factors}["usage.active_users"] == 0.1


def test_declining_usage_lowers_the_trend_and_the_explanation_says_so() -> None:
    facts = steady()
    for i in range(7):
        facts[TODAY - i] = DayFacts(
            actions={"core_action_completed": 1}, people={"p0": {"core_action_completed": 1}}
        )
    s = compute_score(CONFIG, "acme", facts, Context(plan="starter", seats=3), NOW)
    factors = {f.name: f for f in s.factors}
    assert factors["usage.trend"].value < 0.2
    assert s.previous_score is not None
    assert s.trend < 0
    assert s.trend_direction == "down"
    assert factors["usage.trend"].change < 0
    assert any(f.name in ("usage.trend", "usage.active_users", "usage.depth") for f in s.top_factors())


def test_sentiment_from_nps_csat_and_tickets() -> None:
    facts = steady()
    facts[TODAY].nps = {"10": 3, "9": 1, "3": 1}  # 4 promoters, 1 detractor of 5 → 0.6
    facts[TODAY].csat = {"5": 1, "4": 1}  # (1 + 0.5) / 2 = 0.75
    s = compute_score(CONFIG, "a", facts, Context(plan="starter", open_tickets=5), NOW)
    w = CONFIG.sentiment.weights
    assert s.sentiment == pytest.approx(w["nps"] * 0.6 + w["csat"] * 0.75 - w["tickets"] * 1.0)
    none = compute_score(CONFIG, "a", steady(), Context(plan="starter"), NOW)
    assert none.sentiment == 0.0, "no answers and no tickets: neutral"


def test_financial_risk_from_failures_past_due_downgrades_and_limits() -> None:
    facts = steady()
    facts[TODAY].payment_failures = 3
    facts[TODAY - 1].downgrades = 1
    facts[TODAY - 2].plan_limits = 1.0
    s = compute_score(CONFIG, "a", facts, Context(plan="starter", billing_status="past_due"), NOW)
    assert s.financial_risk == pytest.approx(1.0)
    ok = compute_score(CONFIG, "a", steady(), Context(plan="starter", billing_status="active"), NOW)
    assert ok.financial_risk == 0.0
    assert ok.score - s.score == 20


def test_events_older_than_the_window_do_not_count_but_stay_in_history() -> None:
    facts = steady(days=28)
    old = {TODAY - 60 - i: DayFacts(actions={"core_action_completed": 100}) for i in range(10)}
    a = compute_score(CONFIG, "a", facts, Context(plan="starter"), NOW)
    b = compute_score(CONFIG, "a", {**facts, **old}, Context(plan="starter"), NOW)
    assert a.score == b.score


def test_merge_re_attributes_history_to_the_survivor() -> None:
    facts = steady(people=2)
    assert compute_score(CONFIG, "a", facts, Context(plan="starter"), NOW).active_users == 2
    for day in facts.values():
        day.rename_person("p1", "p0")
    assert compute_score(CONFIG, "a", facts, Context(plan="starter"), NOW).active_users == 1


def test_zscore_against_the_customers_own_baseline() -> None:
    facts = steady(days=20)
    assert usage_zscore(CONFIG, facts, NOW, "self_serve") == pytest.approx(0.0)
    facts[TODAY - 1] = DayFacts(actions={"core_action_completed": 0})
    z = usage_zscore(CONFIG, facts, NOW, "self_serve")
    assert z is not None
    assert z < -2.5
    assert usage_zscore(CONFIG, steady(days=3), NOW, "self_serve") is None, "no baseline yet"


def test_every_error_of_the_registry_is_reported_at_once() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    bad = copy.deepcopy(raw)
    bad["score_weights"]["usage"] = 0.6
    bad["bands"]["yellow"] = 40
    bad["alerts"]["churn_risk"]["exit"] = 0.9
    bad["segments"]["growth"]["plans"].append("free")
    bad["passive_events"]["core_action_completed"] = 0.1
    with pytest.raises(HealthConfigError) as err:
        parse_config(bad)
    text = "\n".join(err.value.errors)
    for where in (
        "score_weights",
        "bands",
        "alerts.churn_risk",
        "segments.growth.plans",
        "is also a passive event",
    ):
        assert where in text
    typo = copy.deepcopy(raw)
    typo["score_weigths"] = typo.pop("score_weights")
    typo["usage"]["window_days"] = "x"
    with pytest.raises(HealthConfigError) as err:
        parse_config(typo)
    assert len(err.value.errors) >= 3  # the unknown key, the missing one, the bad type
