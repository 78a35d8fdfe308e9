"""Who may read health scores, on the real service: a customer's own secret key reads its own score;
the list, the live stream and the CS dashboard are for operators only; nobody without a credential."""

from __future__ import annotations

import httpx
import pytest

from tests.auth_support import Case, Tenants, bearer, check_cases, new_customer, tenant_cases
from tests.integration.health_score.harness import Health, enriched, wait_for

pytestmark = pytest.mark.integration


def test_scores_take_the_customers_secret_key_and_the_dashboard_an_operator(health: Health) -> None:
    api = health.start()
    a = new_customer(health.database, prefix=f"{health.prefix}cus-a")
    b = new_customer(health.database, prefix=f"{health.prefix}cus-b")
    tenants = Tenants.make(health.database, a=a, b=b)
    health.send(*(enriched(c, "core_action_completed", person=f"p{i}") for c in (a, b) for i in range(3)))
    with api.client() as client:
        for c in (a, b):
            wait_for(lambda c=c: client.get(f"/v1/health/{c}").status_code == 200, what=f"{c}'s score")

    cases = tenant_cases("GET", lambda c: f"/v1/health/{c}", tenants, publishable=False)
    for path in ("/v1/health", "/", f"/customers/{a}"):
        page = not path.startswith("/v1/")
        cases += [
            Case("none", "GET", path, 303 if page else 401),  # a page sends the browser to the login page
            Case("a.secret", "GET", path, 403),
            Case("a.publishable", "GET", path, 403),
            Case("viewer", "GET", path, 200),
        ]
    cases += [
        Case("none", "GET", "/v1/health/stream", 401),
        Case("a.secret", "GET", "/v1/health/stream", 403),
    ]
    check_cases(api.url, tenants, cases)

    # The stream itself (it never ends: read its first line and hang up).
    stream, viewer = "/v1/health/stream", bearer(tenants.tokens["viewer"])
    with (
        httpx.Client(base_url=api.url, timeout=10) as client,
        client.stream("GET", stream, headers=viewer) as live,
    ):
        assert live.status_code == 200
        assert live.headers["content-type"].startswith("text/event-stream")
        assert next(live.iter_lines())  # the stream has begun (its first line: retry or a comment)
    # The dashboard without a credential shows no customer.
    with httpx.Client(base_url=api.url, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/auth/login")
        assert a not in page.text
