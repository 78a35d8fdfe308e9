"""The entitlement API on the real stack: limits from live usage, boolean features, upgrade paths, 404s."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from services.entitlements.view import UsageView
from services.kernel.topics import USAGE_PERIODS
from services.plans.periods import billing_period
from tests.integration.metering.harness import Metering, now_ms, usage_event, wait_for


def test_a_hard_limit_is_enforced_from_live_usage_with_an_upgrade_path(metering: Metering):
    c = metering.customer("free", anchor_day=31)  # api_requests: 1000 per period, hard limit
    metering.start()
    api = metering.start_entitlements(upgrade_url="https://app.example.com/upgrade")
    with api.client() as client:
        body = client.get(f"/v1/entitlements/{c}/api_requests").json()
        assert (body["allowed"], body["usage"], body["limit"], body["remaining"]) == (True, 0, 1000, 1000)
        assert body["upgrade"] is None
        period = billing_period(now_ms(), 31)
        assert datetime.fromisoformat(body["period_start"]) == period.start
        assert datetime.fromisoformat(body["period_end"]) == period.end
        assert period.start.tzinfo == UTC

        def check() -> dict:
            return client.get(f"/v1/entitlements/{c}/api_requests").json()

        metering.send(usage_event(c) for _ in range(999))
        body = wait_for(lambda: (b := check())["usage"] == 999 and b)
        assert (body["allowed"], body["remaining"]) == (True, 1)

        metering.send([usage_event(c)])
        body = wait_for(lambda: (b := check())["usage"] == 1000 and b)
        assert body["allowed"] is False
        assert body["remaining"] == 0
        assert body["upgrade"] == {
            "code": "usage_limit_exceeded",
            "upgrade_url": f"https://app.example.com/upgrade?customer_id={c}&feature=api_requests&plan=pro",
            "suggested_plan": "pro",
        }


def test_soft_limits_unlimited_meters_and_boolean_features_answer_from_the_plan(metering: Metering):
    free, pro, enterprise = (metering.customer(p) for p in ("free", "pro", "enterprise"))
    metering.start()
    metering.send(
        usage_event(c, "job_completed", duration_seconds=1.25, region="eu") for c in (pro, enterprise)
    )
    api = metering.start_entitlements()
    with api.client() as client:

        def get(c: str, feature: str) -> dict:
            response = client.get(f"/v1/entitlements/{c}/{feature}")
            assert response.status_code == 200, response.text
            return response.json()

        body = wait_for(lambda: (b := get(pro, "compute_seconds"))["usage"] == 1.25 and b)
        assert (body["allowed"], body["limit"], body["remaining"], body["hard_limit"]) == (
            True,
            360000,
            359998.75,
            False,
        )
        body = wait_for(lambda: (b := get(enterprise, "compute_seconds"))["usage"] == 1.25 and b)
        assert (body["allowed"], body["limit"], body["remaining"]) == (True, None, None)

        sso = get(free, "sso")
        assert sso["type"] == "feature"
        assert sso["allowed"] is False
        assert sso["upgrade"]["code"] == "feature_not_in_plan"
        assert sso["upgrade"]["suggested_plan"] == "pro"
        assert get(pro, "sso")["allowed"] is True
        assert get(pro, "sso")["upgrade"] is None
        assert get(pro, "audit_log")["upgrade"]["suggested_plan"] == "enterprise"


def test_unknown_customers_and_features_are_404_with_a_clear_message(metering: Metering):
    api = metering.start_entitlements()
    with api.client() as client:
        response = client.get("/v1/entitlements/no-such-customer/api_requests")
        assert response.status_code == 404
        assert response.json()["code"] == "customer_not_found"
        assert "no-such-customer" in response.json()["message"]
        c = metering.customer("pro")  # created after the API started: answered at once
        assert client.get(f"/v1/entitlements/{c}/api_requests").status_code == 200
        response = client.get(f"/v1/entitlements/{c}/teleportation")
        assert response.status_code == 404
        assert response.json()["code"] == "unknown_feature"
        assert "api_requests" in response.json()["message"]


def test_meter_checks_are_refused_not_allowed_while_the_usage_view_is_still_catching_up(metering: Metering):
    c = metering.customer("free")  # api_requests: 1000 per period, hard limit
    metering.start()
    metering.send(usage_event(c) for _ in range(1000))
    wait_for(lambda: metering.period_total(c) == (Decimal(1000), 1000), what="1000 counted")
    api = metering.start_entitlements()
    app = api.server.config.app
    with api.client() as client:
        assert client.get(f"/v1/entitlements/{c}/api_requests").json()["allowed"] is False
        # A replica whose view has not read the topic yet (e.g. just restarted): an empty view must not
        # turn "over the hard limit" into "allowed, usage 0".
        resources = app.state.resources  # what the routes receive (services/entitlements/api.py)
        caught_up = resources.view
        resources.view = UsageView(metering.kafka, metering.topic(USAGE_PERIODS), metering.decoder)
        response = client.get(f"/v1/entitlements/{c}/api_requests")
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "usage_view_not_ready"
        assert response.headers["retry-after"] == "1"
        assert client.get("/readyz").status_code == 503
        # Boolean features answer from the plan alone, view or not.
        assert client.get(f"/v1/entitlements/{c}/sso").json()["allowed"] is False
        resources.view = caught_up
        assert client.get(f"/v1/entitlements/{c}/api_requests").json()["usage"] == 1000
