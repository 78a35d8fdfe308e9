"""The specialised usage-events encoder writes exactly the bytes fastavro (and so any Avro reader) expects."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from services.ingest.avro_usage import UsageEventEncoder, long_bytes, schema_matches

SCHEMA = json.loads((Path(__file__).resolve().parents[3] / "schemas" / "usage_event.avsc").read_text())
PARSED = parse_schema(SCHEMA)
HEADER = b"\x00\x00\x00\x01\x2a"


def reference(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(HEADER)
    schemaless_writer(buf, PARSED, record)
    return buf.getvalue()


def test_the_fast_path_is_on_for_the_committed_usage_event_schema() -> None:
    # Fails when schemas/usage_event.avsc changes structurally: update avro_usage.py (and WRITTEN_FOR).
    assert schema_matches(SCHEMA)
    changed = json.loads(json.dumps(SCHEMA))
    changed["fields"].append({"name": "extra", "type": ["null", "string"], "default": None})
    assert not schema_matches(changed)


def random_string(rng: random.Random) -> str:
    alphabet = "abcXYZ019 _-€日本🙂"
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 31, 32, 63, 64, 200])))


def random_value(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(
            [0, 1, -1, 63, -64, 64, 2**31, -(2**31), 2**63 - 1, -(2**63), rng.randrange(-(10**12), 10**12)]
        )
    if kind == 3:
        return rng.choice([0.0, -0.0, 1.5, -2.25e300, 1e-310, rng.random()])
    return random_string(rng)


@pytest.mark.parametrize("seed", range(20))
def test_records_encode_byte_identical_to_fastavro_and_decode_back(seed: int) -> None:
    rng = random.Random(seed)
    meta = (
        None
        if seed % 5 == 0
        else {
            "received_at": rng.randrange(0, 2**45),
            "source": rng.choice(["http", "sdk", "cloudevents"]),
            "api_key_id": rng.choice([None, "abcd1234"]),
            "request_id": rng.choice([None, "r" * 70]),
            "library": rng.choice([None, "plg-sdk-python/0.1.0"]),
            "registry_version": rng.choice([None, 1, 7, 64, 2**31 - 1]),
        }
    )
    customer = random_string(rng) or "c"
    encode = UsageEventEncoder(HEADER).for_request(customer, meta)
    for _ in range(50):
        record = {
            "event_id": random_string(rng) or "e",
            "customer_id": customer,
            "name": random_string(rng) or "n",
            "timestamp": rng.choice([0, 1_760_000_000_000, -1, 253_402_300_799_999]),
            "properties": {random_string(rng) or "k": random_value(rng) for _ in range(rng.randrange(0, 8))},
            "user_id": rng.choice([None, random_string(rng)]),
            "anonymous_id": rng.choice([None, random_string(rng)]),
            "session_id": rng.choice([None, random_string(rng)]),
            "ingest": meta,
            "consent": rng.choice(
                [None, {}, {"analytics": False}, {"analytics": True, "marketing": False, "ads_2": True}]
            ),
        }
        if rng.random() < 0.2:
            del record["consent"]  # records built before the field existed (growth's telemetry, tests)
        data = encode(record)
        assert data == reference(record)
        back = schemaless_reader(io.BytesIO(data[5:]), PARSED, PARSED)
        assert back["properties"] == record["properties"]
        assert back["consent"] == record.get("consent")
        assert back["event_id"] == record["event_id"]


@pytest.mark.parametrize("n", [0, 1, -1, 63, -64, 64, 127, 128, 2**63 - 1, -(2**63)])
def test_longs_use_zigzag_varints(n: int) -> None:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema("long"), n)
    assert long_bytes(n) == buf.getvalue()
