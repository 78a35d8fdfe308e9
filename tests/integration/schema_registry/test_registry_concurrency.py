"""Two registry processes on one PostgreSQL database, hammered at once: they never hand out the same
version twice, never give one schema two ids, and never answer 5xx."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.schema_registry.support import CONTENT_TYPE

THREADS = 8


def schema(i: int) -> str:
    return json.dumps(
        {"type": "record", "name": "Evt", "fields": [{"name": f"f{i}", "type": "string", "default": ""}]}
    )


@pytest.fixture(scope="module")
def two_instances(registry_database, start_registry):
    return start_registry(registry_database), start_registry(registry_database)


# One pooled client for all threads: a fresh httpx client per request spends ~50 ms building its TLS context.
HTTP = httpx.Client(timeout=30, headers={"Content-Type": CONTENT_TYPE})


def post(url: str, path: str, body: dict) -> httpx.Response:
    return HTTP.post(url + path, json=body)


def test_concurrent_registrations_through_two_instances_get_distinct_consecutive_versions(two_instances):
    first, second = two_instances
    subject = f"race-{uuid.uuid4().hex[:8]}"
    # NONE isolates version allocation from compatibility ordering: every schema is acceptable.
    assert HTTP.put(f"{first.url}/config/{subject}", json={"compatibility": "NONE"}).status_code == 200
    count = 60

    def register(i: int) -> tuple[int, dict]:
        target = (first, second)[i % 2].url
        response = post(target, f"/subjects/{subject}/versions", {"schema": schema(i)})
        return response.status_code, response.json()

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(register, range(count)))
    assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    versions = sorted(body["version"] for _, body in results)
    assert versions == list(range(1, count + 1))
    # Each version really holds the schema whose registration was answered with it.
    for i, (_, body) in enumerate(results):
        stored = HTTP.get(f"{second.url}/subjects/{subject}/versions/{body['version']}").json()
        assert stored["id"] == body["id"]
        assert json.loads(stored["schema"]) == json.loads(schema(i))


def test_the_same_schema_registered_at_once_everywhere_gets_one_id_and_one_version_per_subject(two_instances):
    first, second = two_instances
    text = schema(10_000 + uuid.uuid4().int % 1000)
    subjects = [f"same-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    jobs = [(s, inst.url) for s in subjects for inst in (first, second) for _ in range(3)]

    def register(job: tuple[str, str]) -> tuple[int, dict]:
        subject, url = job
        response = post(url, f"/subjects/{subject}/versions", {"schema": text})
        return response.status_code, response.json()

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(register, jobs))
    assert all(status == 200 for status, _ in results), results[:3]
    assert len({body["id"] for _, body in results}) == 1
    assert {body["version"] for _, body in results} == {1}
    for subject in subjects:
        assert HTTP.get(f"{first.url}/subjects/{subject}/versions").json() == [1]


def test_two_mutually_incompatible_schemas_raced_into_one_subject_never_both_win(two_instances):
    """Each is compatible with the base, not with each other: whichever commits first becomes the latest,
    and the other must then be refused with 409, whichever instance serves it."""
    first, second = two_instances
    base = {"type": "record", "name": "Race", "fields": [{"name": "id", "type": "string"}]}
    as_int = dict(base, fields=[*base["fields"], {"name": "a", "type": "int", "default": 0}])
    as_string = dict(base, fields=[*base["fields"], {"name": "a", "type": "string", "default": ""}])
    rounds = 12
    subjects = [f"duel-{uuid.uuid4().hex[:8]}" for _ in range(rounds)]
    for subject in subjects:
        assert (
            post(first.url, f"/subjects/{subject}/versions", {"schema": json.dumps(base)}).status_code == 200
        )
    gate = threading.Barrier(2)

    def contender(url: str, schema: dict, subject: str) -> int:
        gate.wait()
        return post(url, f"/subjects/{subject}/versions", {"schema": json.dumps(schema)}).status_code

    with ThreadPoolExecutor(2) as pool:
        for subject in subjects:
            one = pool.submit(contender, first.url, as_int, subject)
            other = pool.submit(contender, second.url, as_string, subject)
            assert sorted([one.result(), other.result()]) == [200, 409], subject
            assert HTTP.get(f"{first.url}/subjects/{subject}/versions").json() == [1, 2]
