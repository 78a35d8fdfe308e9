"""The health score split by HEALTH_ROLE: one scorer, any number of API processes answering from the
compacted customer-health topic read as a view — every API serves the score the scorer wrote, including
an API started after the score was written (it reads the topic from the start)."""

from __future__ import annotations

import time

import pytest

from tests.integration.health_score.harness import Health, enriched, wait_for

pytestmark = pytest.mark.integration
DAY = 86_400_000


def test_api_processes_serve_the_scores_a_separate_scorer_writes(health: Health) -> None:
    scorer = health.start(role="scorer")
    first_api = health.start(role="api")
    acme = health.customer("acme")
    now = int(time.time() * 1000)
    health.send(
        *[
            enriched(acme, "core_action_completed", person=f"p{i % 3}", ts=now - (i % 10) * DAY)
            for i in range(30)
        ]
    )
    with first_api.client() as client:
        served = wait_for(
            lambda: (r := client.get(f"/v1/health/{acme}")).status_code == 200 and r.json(),
            what="a score served by an API process",
        )
        assert served["history"]
        ready = client.get("/readyz").json()
        assert ready == {"status": "ready"}

    # The scorer serves no views; its readiness is its loop alone.
    with scorer.client() as client:
        assert client.get("/readyz").status_code == 200
        assert client.get(f"/v1/health/{acme}").status_code == 404

    # A second API, started later, catches up from the compacted topic and agrees with the first.
    second_api = health.start(role="api")
    health.send(*[enriched(acme, "project_created", person="p0") for _ in range(5)])
    with first_api.client() as one, second_api.client() as two:

        def agreed() -> dict | None:
            a, b = one.get(f"/v1/health/{acme}").json(), two.get(f"/v1/health/{acme}").json()
            return b if a == b and b["computed_at"] > served["computed_at"] else None

        changed = wait_for(agreed, what="both API processes serving the changed score")
        assert changed["score"] != served["score"] or changed["components"] != served["components"]
