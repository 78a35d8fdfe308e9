"""The whole path: events sent to ingest over HTTP, enriched by the enrichment service, counted by growth:
each threshold crossed produces exactly one activation event."""

from __future__ import annotations

import time
import uuid

from services.kernel.topics import ACTIVATION_EVENTS, topic
from tests.integration.enrichment.harness import EnrichmentWorld
from tests.integration.growth.conftest import GrowthFactory, wait_for
from tests.integration.ingest.conftest import RunningIngest, Tenant, read_topic


def test_events_through_ingest_cross_a_threshold_once(
    provisioned,
    kafka_settings,
    registry_settings,
    database_settings,
    start_ingest,
    tenant: Tenant,
    start_growth: GrowthFactory,
) -> None:
    world = EnrichmentWorld(provisioned.prefix, kafka_settings, registry_settings, database_settings)
    try:
        world.start_enrichment()
        ingest: RunningIngest = start_ingest()
        growth = start_growth()
        person = f"user-{uuid.uuid4().hex[:6]}"
        batch = {
            "batch": [
                {
                    "event_id": str(uuid.uuid4()),
                    "name": "project_created",
                    "user_id": person,
                    "timestamp": int(time.time() * 1000),
                    "properties": {"project_type": "web"},
                }
                for _ in range(4)
            ]
        }
        with ingest.client() as client:
            answer = client.post("/v1/batch", json=batch, headers=tenant.headers)
            assert answer.status_code == 202, answer.text
            assert answer.json()["accepted"] == 4, answer.text
        with growth.client() as client:
            status = wait_for(
                lambda: (
                    (b := client.get(f"/v1/activation/{tenant.customer_id}/{person}").json())["person"][0][
                        "crossed"
                    ]
                    and b
                ),
                timeout=60,
                what="the threshold crossed through ingest and enrichment",
            )
        assert status["person"][0]["count"] == 4
        s = growth.settings
        records = read_topic(
            s.kafka.bootstrap_servers,
            s.registry.url,
            topic(ACTIVATION_EVENTS, provisioned.prefix).name,
            2,
            settle=2,
        )
        crossings = [r.value() for r in records if r.value()["customer_id"] == tenant.customer_id]
        assert sorted((c["scope"], c["threshold"], c["plan"]) for c in crossings) == [
            ("customer", "project_created", "free"),
            ("person", "project_created", "free"),
        ]
    finally:
        world.close()
