"""The Avro contracts in schemas/: valid, versioned, covering every topic, evolving BACKWARD-compatibly."""

from __future__ import annotations

import json

import avro.schema
import fastavro
import pytest

from services.kernel.topics import PLATFORM_TOPICS, catalogue
from tests.contracts_support import is_backward_compatible, previous_version, schema_files

SCHEMA_IDS = [p.name for p in schema_files()]


@pytest.mark.parametrize("path", schema_files(), ids=SCHEMA_IDS)
def test_every_schema_parses_with_avro_and_fastavro(path):
    text = path.read_text()
    avro.schema.parse(text)
    fastavro.parse_schema(json.loads(text))


@pytest.mark.parametrize("path", schema_files(), ids=SCHEMA_IDS)
def test_every_schema_has_a_versioned_namespace(path):
    namespace = json.loads(path.read_text())["namespace"]
    parts = namespace.split(".")
    assert parts[:2] == ["io", "plg"], namespace
    assert parts[-1].startswith("v"), f"{namespace} must end in a version like v1"
    assert parts[-1][1:].isdigit(), f"{namespace} must end in a version like v1"


def test_every_platform_topic_has_a_schema_file():
    for spec in PLATFORM_TOPICS:
        assert spec.schema_path is not None, spec.name
        assert spec.schema_path.exists(), spec.name


def test_every_schema_file_belongs_to_a_declared_topic():
    used = {t.value_schema for t in catalogue()}
    unused = [p.stem for p in schema_files() if p.stem not in used]
    assert unused == [], f"schema files no topic declares: {unused}"


def test_issue_named_topics_and_subjects_exist():
    names = {t.name: t for t in catalogue()}
    for required in (
        "usage-events",
        "usage-events-enriched",
        "usage-events-dlq",
        "usage-aggregates",
        "entitlement-events",
        "billing-reports",
        "customer-health",
        "identity-links",
    ):
        assert required in names
    assert names["usage-events"].value_subject == "usage-events-value"
    assert names["usage-aggregates"].cleanup_policy == "compact"


@pytest.mark.parametrize("path", schema_files(), ids=SCHEMA_IDS)
def test_working_tree_schema_is_backward_compatible_with_previous_committed_version(path):
    previous = previous_version(path)
    if previous is None:
        pytest.skip("no earlier committed version differs from the working tree")
    ok, messages = is_backward_compatible(path.read_text(), previous)
    assert ok, f"{path.name} breaks BACKWARD compatibility with its previous version: {messages}"


def test_usage_event_round_trips_every_property_type():
    schema = fastavro.parse_schema(json.loads((schema_files()[0].parent / "usage_event.avsc").read_text()))
    record = {
        "event_id": "01HZX",
        "customer_id": "acme",
        "name": "api_call_made",
        "timestamp": 1_700_000_000_000,
        "properties": {"n": 3, "ok": True, "ratio": 0.5, "path": "/v1", "none": None},
        "user_id": "u1",
        "anonymous_id": None,
        "session_id": None,
        "ingest": None,
        "consent": {"analytics": False, "marketing": True},
    }
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, schema, schema)
    back["timestamp"] = int(back["timestamp"].timestamp() * 1000)
    assert back == record


def _usage_event_with_required_field() -> str:
    schema = json.loads((schema_files()[0].parent / "usage_event.avsc").read_text())
    schema["fields"].append({"name": "tenant_region", "type": "string"})  # no default: old data can't fill it
    return json.dumps(schema)


def test_checker_refuses_a_new_required_field_as_backward_incompatible():
    current = (schema_files()[0].parent / "usage_event.avsc").read_text()
    ok, messages = is_backward_compatible(_usage_event_with_required_field(), current)
    assert not ok
    assert any("tenant_region" in m for m in messages), messages
