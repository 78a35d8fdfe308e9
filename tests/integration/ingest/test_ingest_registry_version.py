"""Schema versions (issue 20): every event ingest writes records the version of the usage-events-value
subject it was validated and encoded against — the version of ingest's own schema, not whatever the subject
holds as latest — decoded here with Confluent's own deserializer from the real registry."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from services.kernel.topics import USAGE_EVENTS, topic
from tests.integration.ingest.conftest import IngestFactory, Tenant, read_topic

SCHEMA_FILE = topic(USAGE_EVENTS).schema_path


def _events(n: int) -> list[dict[str, Any]]:
    now = time.time_ns() // 1_000_000
    return [
        {
            "event_id": str(uuid.uuid4()),
            "name": "api_call_made",
            "timestamp": now - 1000,
            "properties": {"i": i},
        }
        for i in range(n)
    ]


def test_each_event_records_the_registry_version_of_the_schema_ingest_validated_it_with(
    start_ingest: IngestFactory, tenant: Tenant, provisioned: Any, stack: Any
) -> None:
    assert SCHEMA_FILE is not None
    events_topic = provisioned.topic("usage-events")
    subject = f"{events_topic}-value"
    registry = SchemaRegistryClient({"url": stack.registry_url})
    own = registry.lookup_schema(subject, Schema(SCHEMA_FILE.read_text(), "AVRO"))
    # A newer (compatible) version registered after provisioning: ingest keeps encoding with its own
    # schema, so it must record that version, not the subject's latest.
    newer = json.loads(SCHEMA_FILE.read_text())
    newer["fields"].append({"name": "seeds_test_extra", "type": ["null", "string"], "default": None})
    registry.register_schema(subject, Schema(json.dumps(newer), "AVRO"))
    latest = registry.get_latest_version(subject)
    assert latest.version != own.version

    ingest = start_ingest()
    sent = _events(3)
    with ingest.client() as http:
        r = http.post("/v1/batch", json={"batch": sent}, headers=tenant.headers)
        assert r.status_code == 202, r.text
    records = read_topic(stack.kafka_bootstrap, stack.registry_url, events_topic, len(sent))
    assert {m.value()["event_id"] for m in records} == {e["event_id"] for e in sent}
    for m in records:
        assert m.value()["ingest"]["registry_version"] == own.version
        assert m.value()["ingest"]["registry_version"] != latest.version
