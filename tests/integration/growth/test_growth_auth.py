"""Who may call growth, on the real service: flags for any key (publishable included) or an operator;
onboarding for the customer's own key of either kind; activation for its secret key; the flag admin API for
operators by role; and nothing is written for a customer other than the key's, or one that does not exist."""

from __future__ import annotations

import psycopg

from tests.auth_support import Case, Tenants, check_cases, check_origin_limits, new_customer, tenant_cases
from tests.integration.growth.conftest import RunningGrowth


def test_every_growth_route_takes_the_credential_its_policy_names(growth: RunningGrowth) -> None:
    db = growth.settings.database
    tenants = Tenants.make(db)
    a = tenants.a
    onboarding = "/v1/onboarding/{}/person-1"
    cases = [
        Case("none", "GET", "/v1/flags", 401),
        Case("bogus", "GET", "/v1/flags", 401),
        Case("a.publishable", "GET", "/v1/flags", 200),
        Case("a.secret", "GET", "/v1/flags", 200),
        Case("viewer", "GET", "/v1/flags", 200),
        Case("none", "GET", "/v1/flags/stream", 401),
        Case("none", "POST", "/v1/flags/evaluate", 401, {"flag_keys": []}),
        Case("a.publishable", "POST", "/v1/flags/evaluate", 200, {"flag_keys": []}),
        # The exposure's customer is the key's: naming another is refused, whether it exists or not.
        Case("a.publishable", "POST", "/v1/flags/evaluate", 403, {"context": {"customer_id": tenants.b}}),
        Case("a.secret", "POST", "/v1/flags/evaluate", 403, {"context": {"customer_id": "nobody"}}),
        Case("a.publishable", "POST", "/v1/flags/evaluate", 200, {"context": {"customer_id": a}}),
        # An operator names the customer; one that does not exist gets nothing written for it.
        Case("viewer", "POST", "/v1/flags/evaluate", 404, {"context": {"customer_id": "nobody-x"}}),
        Case("viewer", "POST", "/v1/flags/evaluate", 200, {"context": {"customer_id": a}}),
    ]
    cases += tenant_cases("GET", lambda c: onboarding.format(c) + "/next", tenants, publishable=True)
    cases += tenant_cases("GET", lambda c: onboarding.format(c) + "/progress", tenants, publishable=True)
    complete = onboarding + "/steps/first-api-call/complete"
    cases += [
        Case("none", "POST", complete.format(a), 401),
        Case("b.publishable", "POST", complete.format(a), 403),
        Case("viewer", "POST", complete.format(a), 403),  # acting for a customer needs editor
        Case("a.publishable", "POST", complete.format(a), 201),
        Case("a.secret", "POST", complete.format(a), 200),  # idempotent
        Case("editor", "POST", complete.format("nobody-y"), 404),
    ]
    cases += tenant_cases("GET", lambda c: f"/v1/activation/{c}/person-1", tenants, publishable=False)
    flag = "/v1/admin/flags/auth_test_flag"
    cases += [
        Case("none", "GET", flag, 401),
        Case("a.secret", "GET", flag, 403),
        Case("viewer", "PUT", flag, 403, {"rollout": 10}),
        Case("editor", "PUT", flag, 201, {"rollout": 10}),
        Case("viewer", "GET", flag, 200),
        Case("viewer", "GET", flag + "/history", 200),
        Case("editor", "DELETE", flag, 403),
        Case("admin", "DELETE", flag, 200),
    ]
    check_cases(growth.url, tenants, cases)
    with psycopg.connect(db.url.get_secret_value()) as conn:
        rows = conn.execute(
            "SELECT customer_id FROM growth_onboarding_progress WHERE customer_id LIKE 'nobody%'"
        ).fetchall()
    assert rows == [], "progress written for a customer that does not exist"


def test_a_key_limited_to_an_origin_reads_flags_and_onboarding_only_from_that_page(
    growth: RunningGrowth,
) -> None:
    db = growth.settings.database
    customer = new_customer(db)
    check_origin_limits(growth.url, db, customer, "GET", "/v1/flags")
    check_origin_limits(growth.url, db, customer, "GET", f"/v1/onboarding/{customer}/person-1/next")
