"""Schema evolution against the real registry: every contract registers, evolves BACKWARD-compatibly from its
previous committed version, and a known-bad change is refused with 409."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.contracts_support import previous_version, schema_files

CT = "application/vnd.schemaregistry.v1+json"


def _register(client: httpx.Client, subject: str, schema: str) -> httpx.Response:
    return client.post(f"/subjects/{subject}/versions", json={"schema": schema}, headers={"Content-Type": CT})


@pytest.fixture
def registry(stack):
    with httpx.Client(base_url=stack.registry_url, timeout=10) as client:
        yield client


@pytest.mark.parametrize("path", schema_files(), ids=[p.name for p in schema_files()])
def test_working_tree_schema_registers_over_its_previous_committed_version(registry, path):
    subject = f"contract-{path.stem}-{uuid.uuid4().hex[:8]}-value"
    previous = previous_version(path)
    if previous is not None:
        first = _register(registry, subject, previous)
        assert first.status_code == 200, first.text
    current = _register(registry, subject, path.read_text())
    assert current.status_code == 200, current.text
    assert isinstance(current.json()["id"], int)


def test_known_bad_change_is_refused_with_409(registry):
    subject = f"contract-bad-{uuid.uuid4().hex[:8]}-value"
    good = (schema_files()[0].parent / "usage_event.avsc").read_text()
    assert _register(registry, subject, good).status_code == 200
    bad = json.loads(good)
    # Renaming the type of the dedup key breaks every reader of existing events.
    for field in bad["fields"]:
        if field["name"] == "event_id":
            field["type"] = "long"
    refused = _register(registry, subject, json.dumps(bad))
    assert refused.status_code == 409, refused.text
    assert refused.json()["error_code"] == 409
    versions = registry.get(f"/subjects/{subject}/versions").json()
    assert versions == [1], "a refused schema must not create a version"
