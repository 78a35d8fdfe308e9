"""The entitlement decision: limits, soft limits, unlimited meters, boolean features, upgrade paths."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.entitlements.handlers import PlanNotConfigured, UnknownFeature, decide, decision_body
from services.plans.periods import billing_period
from services.plans.trials import Trial, trial_until
from tests.unit.metering.conftest import NOW, customer

BASE = "https://app.example/billing/upgrade"


def test_hard_limit_allows_until_the_limit_is_reached(config):
    d = decide(config, customer(), "api_requests", Decimal(9), NOW, BASE)
    assert (d.allowed, d.usage, d.limit, d.remaining, d.upgrade) == (True, 9, 10, 1, None)
    d = decide(config, customer(), "api_requests", Decimal(10), NOW, BASE)
    assert not d.allowed
    assert d.remaining == 0
    assert d.upgrade is not None
    assert d.upgrade.code == "usage_limit_exceeded"
    assert d.upgrade.suggested_plan == "pro"
    assert d.upgrade.upgrade_url == f"{BASE}?customer_id=acme&feature=api_requests&plan=pro"


def test_soft_limit_stays_allowed_beyond_the_limit(config):
    d = decide(config, customer(plan="pro"), "api_requests", Decimal(60_000), NOW, BASE)
    assert d.allowed
    assert d.remaining == 0
    assert d.limit == 50_000
    assert not d.hard_limit


def test_unlimited_meters_have_no_limit(config):
    d = decide(config, customer(plan="enterprise"), "api_requests", Decimal(10**7), NOW, BASE)
    assert (d.allowed, d.limit, d.remaining) == (True, None, None)


def test_a_meter_the_plan_lacks_is_not_in_plan(config):
    d = decide(config, customer(), "storage_gb", 0, NOW, BASE)
    assert not d.allowed
    assert d.upgrade is not None
    assert d.upgrade.code == "feature_not_in_plan"
    assert d.upgrade.suggested_plan == "pro"


def test_boolean_features_answer_from_the_plan(config):
    d = decide(config, customer(), "api_access", 0, NOW, BASE)
    assert d.allowed
    assert d.kind == "feature"
    assert d.usage is None
    d = decide(config, customer(), "sso", 0, NOW, BASE)
    assert not d.allowed
    assert d.upgrade is not None
    assert d.upgrade.code == "feature_not_in_plan"
    assert d.upgrade.suggested_plan == "pro"
    # audit_log is absent from free and pro: the suggestion walks the chain to enterprise.
    d = decide(config, customer(), "audit_log", 0, NOW, BASE)
    assert d.upgrade is not None
    assert d.upgrade.suggested_plan == "enterprise"


def test_the_answer_carries_the_customers_current_billing_period(config):
    d = decide(config, customer(anchor_day=31), "api_requests", 0, NOW, BASE)
    assert d.period == billing_period(NOW, 31)
    assert d.usage == Decimal(0)


def test_unknown_features_and_unconfigured_plans_are_errors(config):
    with pytest.raises(UnknownFeature):
        decide(config, customer(), "teleportation", 0, NOW, BASE)
    with pytest.raises(PlanNotConfigured, match="platinum"):
        decide(config, customer(plan="platinum"), "api_requests", 0, NOW, BASE)


def test_a_suspended_customer_is_refused_every_feature_with_the_reason_and_how_to_appeal(config):
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from services.entitlements.handlers import decision_body

    now = datetime.fromtimestamp(NOW / 1000, UTC)
    suspended = replace(
        customer(plan="enterprise"),
        suspended_at=now - timedelta(minutes=5),
        suspended_until=now + timedelta(hours=24),
        suspended_reason="25000 events in one minute, over the plan's cap of 20000",
    )
    for feature in ("api_requests", "sso"):
        d = decide(config, suspended, feature, Decimal(3), NOW, BASE)
        assert not d.allowed
        assert d.upgrade is None
        body = decision_body(d)
        assert body["code"] == "suspended"
        assert "cap of 20000" in body["reason"]
        assert "support" in body["appeal"]
        assert body["suspended_until"].endswith("Z")
    assert (
        decision_body(decide(config, suspended, "api_requests", Decimal(3), NOW, BASE))["usage"] is not None
    )
    # The cool-down over: the plan answers again.
    ended = replace(suspended, suspended_until=now - timedelta(seconds=1))
    assert decide(config, ended, "sso", Decimal(0), NOW, BASE).allowed
    assert "code" not in decision_body(decide(config, ended, "api_requests", Decimal(0), NOW, BASE))


def test_a_trial_opens_a_boolean_feature_the_plan_lacks_until_it_ends(config):
    # Issue 20 / seed 002: an onboarding completion action granted "sso" for some days.
    until = NOW + 3_600_000
    d = decide(config, customer(), "sso", 0, NOW, BASE, trial_until_ms=until)
    assert d.allowed
    assert d.upgrade is None
    assert d.trial_until_ms == until
    assert decision_body(d)["trial_until"].endswith("Z")
    ended = decide(config, customer(), "sso", 0, NOW, BASE, trial_until_ms=NOW)
    assert not ended.allowed
    assert ended.trial_until_ms is None
    assert "trial_until" not in decision_body(ended)
    # A feature the plan has anyway is not "on trial".
    own = decide(config, customer(plan="pro"), "sso", 0, NOW, BASE, trial_until_ms=until)
    assert own.allowed
    assert own.trial_until_ms is None


def test_trial_until_is_the_latest_unexpired_trial_of_the_feature():
    def trial(feature: str, ends_ms: int) -> Trial:
        at = datetime.fromtimestamp(ends_ms / 1000, UTC)
        return Trial(feature, at - timedelta(days=1), at, "onboarding:classic/s")

    trials = [trial("sso", NOW + 10_000), trial("sso", NOW + 20_000), trial("audit_log", NOW + 99_000)]
    assert trial_until(trials, "sso", NOW) == NOW + 20_000
    assert trial_until(trials, "sso", NOW + 20_000) is None
    assert trial_until(trials, "priority_support", NOW) is None
