"""The specialised enriched-event encoder writes exactly the bytes fastavro (any Avro reader) expects."""

from __future__ import annotations

import io
import json
import random
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from services.enrichment.avro_enriched import EnrichedEventEncoder, schema_matches
from services.kernel.topics import SCHEMAS_DIR

SCHEMA = json.loads((SCHEMAS_DIR / "enriched_usage_event.avsc").read_text())
PARSED = parse_schema(SCHEMA)
HEADER = b"\x00\x00\x00\x00\x07"


def reference(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(HEADER)
    schemaless_writer(buf, PARSED, record)
    return buf.getvalue()


def test_the_fast_path_is_on_for_the_committed_schema_and_off_for_any_other():
    # Fails when schemas/enriched_usage_event.avsc changes structurally: update avro_enriched.py.
    assert schema_matches(SCHEMA)
    changed = json.loads(json.dumps(SCHEMA))
    changed["fields"].append({"name": "extra", "type": ["null", "string"], "default": None})
    assert not schema_matches(changed)


def text(rng: random.Random) -> str:
    return "".join(rng.choice("abcXYZ019 _-€日本🙂") for _ in range(rng.choice([0, 1, 5, 63, 64, 200])))


def maybe(rng: random.Random, value: Any) -> Any:
    return value if rng.random() < 0.6 else None


def record(rng: random.Random) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for i in range(rng.choice([0, 1, 3, 70])):
        props[f"k{i}{text(rng)[:3]}"] = rng.choice(
            [None, True, False, rng.randint(-(2**63), 2**63 - 1), rng.random() * 1e6, text(rng), 0, -1]
        )
    return {
        "event_id": text(rng),
        "customer_id": rng.choice(["acme", "globex", text(rng)]),
        "name": rng.choice(["api_call_made", "$person_merged", text(rng)]),
        "timestamp": rng.randint(0, 2**45),
        "properties": props,
        "user_id": maybe(rng, text(rng)),
        "anonymous_id": maybe(rng, text(rng)),
        "session_id": maybe(rng, text(rng)),
        "resolved_user_id": maybe(rng, text(rng)),
        "plan": maybe(rng, rng.choice(["pro", "free"])),
        "scrubbed_properties": [text(rng) for _ in range(rng.choice([0, 1, 3]))],
        "received_at": maybe(rng, rng.randint(0, 2**45)),
        "enriched_at": rng.randint(0, 2**45),
        "person_id": maybe(rng, text(rng)),
        "schema_version": maybe(rng, rng.randint(1, 2**31 - 1)),
        "schema_version_missing": rng.random() < 0.5,
        "tracking_plan_version": maybe(rng, rng.randint(1, 300)),
        "violations": [
            {
                "code": rng.choice(["required_missing", "unplanned_event"]),
                "path": text(rng),
                "message": text(rng),
            }
            for _ in range(rng.choice([0, 1, 2]))
        ],
        "sample_rate": rng.choice([1.0, 0.1, 0.333]),
        "tenant": maybe(
            rng,
            {
                "plan": maybe(rng, "pro"),
                "support_tier": maybe(rng, "gold"),
                "open_tickets": rng.randint(0, 2**31 - 1),
                "csm_owner": maybe(rng, text(rng)),
                "billing_status": maybe(rng, "active"),
            },
        ),
        "merge": maybe(
            rng,
            {
                "merged_id": text(rng),
                "survivor_id": text(rng),
                "replaced_person_ids": [text(rng) for _ in range(rng.choice([0, 2]))],
            },
        ),
    }


def test_bytes_are_identical_to_fastavro_for_every_kind_of_value():
    rng = random.Random(11)
    encoder = EnrichedEventEncoder(HEADER)
    for _ in range(800):
        r = record(rng)
        assert encoder.encode(r) == reference(r), r


def test_a_record_reads_back_with_the_schema():
    rng = random.Random(5)
    r = record(rng)
    data = EnrichedEventEncoder(HEADER).encode(r)
    back = schemaless_reader(io.BytesIO(data[5:]), PARSED, PARSED)
    assert back["event_id"] == r["event_id"]
    assert back["properties"] == r["properties"]
