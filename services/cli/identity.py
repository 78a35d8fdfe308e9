"""``plg identity merge``: tell enrichment that two user ids of a tenant are one person.

Writes a ``kind: merge`` record to ``identity-links`` (key ``customer|merge|<merged>|<survivor>``, see
docs/enrichment.md); enrichment applies it to its identity graph and announces it downstream as a
``$person_merged`` record. Merging again is harmless: merges are idempotent.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from services.enrichment.handlers import MERGE, merge_link_key
from services.kernel.kafka import Producer
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import IDENTITY_LINKS, topic


def merge(
    kafka: KafkaSettings,
    registry: SchemaRegistrySettings,
    prefix: str,
    customer_id: str,
    merged_id: str,
    survivor_id: str,
) -> dict[str, Any]:
    """Produce the merge link and wait for the broker's acknowledgement; returns the link."""
    if merged_id == survivor_id:
        raise ValueError("a user cannot be merged into itself")
    spec = topic(IDENTITY_LINKS, prefix)
    assert spec.schema_path is not None
    with SchemaRegistry(registry) as sr:
        encoder = sr.encoder(spec.value_subject, spec.schema_path, auto_register=False)
    link = {
        "customer_id": customer_id,
        "anonymous_id": merged_id,
        "user_id": survivor_id,
        "event_id": str(uuid.uuid4()),
        "linked_at": int(time.time() * 1000),
        "kind": MERGE,
    }
    producer = Producer(kafka, client_id="plg-cli-identity")
    try:
        producer.send(
            spec.name, encoder.encode(link), merge_link_key(customer_id, merged_id, survivor_id)
        ).result(timeout=60)
    finally:
        producer.close()
    return link
