"""Onboarding on the real stack: the next step, a step done in the product skipped, idempotent completion
with exactly one onboarding_step_completed event."""

from __future__ import annotations

import uuid

from services.kernel.topics import USAGE_EVENTS, topic
from tests.auth_support import new_customer
from tests.integration.growth.conftest import EnrichedProducer, RunningGrowth, wait_for
from tests.integration.ingest.conftest import read_topic


def test_a_step_done_in_the_product_is_skipped(growth: RunningGrowth, enriched: EnrichedProducer) -> None:
    customer, person = new_customer(growth.settings.database), f"user-{uuid.uuid4().hex[:6]}"
    base = f"/v1/onboarding/{customer}/{person}"
    with growth.client() as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")
        first = client.get(f"{base}/next", params={"intent": "import_data"}).json()
        assert first["step"]["id"] == "create-project", first
        assert first["why"]
        enriched.send(customer, person, "project_created")  # done in the product, not through the API
        after = wait_for(
            lambda: (
                (b := client.get(f"{base}/next", params={"intent": "import_data"}).json())["step"]["id"]
                != "create-project"
                and b
            ),
            what="create-project skipped",
        )
        assert after["step"]["id"] == "import-data"
        steps = {s["step"]["id"]: s["status"] for s in client.get(f"{base}/progress").json()["steps"]}
        assert steps["create-project"] == "done_in_product"
        # The other intent's steps are hidden for this person's goal.
        hidden = client.get(f"{base}/progress", params={"intent": "import_data"}).json()["steps"]
        assert {s["step"]["id"]: s["status"] for s in hidden}["invite-team"] == "hidden"


def test_completion_is_idempotent_and_emits_one_event(growth: RunningGrowth, provisioned) -> None:
    customer, person = new_customer(growth.settings.database), f"user-{uuid.uuid4().hex[:6]}"
    path = f"/v1/onboarding/{customer}/{person}/steps/first-api-call/complete"
    with growth.client() as client:
        answers = [client.post(path) for _ in range(3)]
        assert [a.status_code for a in answers] == [201, 200, 200]
        assert len({a.json()["completed_at"] for a in answers}) == 1
        assert (
            client.post(f"/v1/onboarding/{customer}/{person}/steps/no-such-step/complete").status_code == 404
        )
        steps = {
            s["step"]["id"]: s["status"]
            for s in client.get(f"/v1/onboarding/{customer}/{person}/progress").json()["steps"]
        }
        assert steps["first-api-call"] == "completed"
        nxt = client.get(f"/v1/onboarding/{customer}/{person}/next").json()
        assert nxt["step"] is None or nxt["step"]["id"] != "first-api-call"
    s = growth.settings
    usage = read_topic(
        s.kafka.bootstrap_servers, s.registry.url, topic(USAGE_EVENTS, provisioned.prefix).name, 1, settle=1.5
    )
    events = [r.value() for r in usage if r.value()["customer_id"] == customer]
    assert [(e["name"], e["properties"]["step_id"]) for e in events] == [
        ("onboarding_step_completed", "first-api-call")
    ]
