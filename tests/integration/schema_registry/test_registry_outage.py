"""When PostgreSQL goes away the registry answers 503 (which Confluent clients retry) and fails
readiness, keeps serving schemas it already knows by id, and recovers on its own when the database
returns."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.integration.schema_registry.support import CONTENT_TYPE

SCHEMA = json.dumps({"type": "record", "name": "Outage", "fields": [{"name": "a", "type": "string"}]})


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.2)


def test_database_outage_is_a_503_and_the_registry_recovers(stack, registry_database, start_registry):
    server = start_registry(registry_database, REGISTRY_DB_TIMEOUT_SECONDS="1")
    http = httpx.Client(base_url=server.url, timeout=10, headers={"Content-Type": CONTENT_TYPE})
    subject = f"outage-{uuid.uuid4().hex[:8]}"
    schema_id = http.post(f"/subjects/{subject}/versions", json={"schema": SCHEMA}).json()["id"]
    assert http.get(f"/schemas/ids/{schema_id}").status_code == 200
    name = conninfo_to_dict(registry_database)["dbname"]
    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            wait_for(lambda: http.get("/readyz").status_code == 503)
            refused = http.get("/subjects")
            assert refused.status_code == 503, refused.text
            assert refused.json()["error_code"] == 50001
            # Deserializers keep working: a schema id once seen is answered from memory.
            assert json.loads(http.get(f"/schemas/ids/{schema_id}").json()["schema"]) == json.loads(SCHEMA)
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
    wait_for(lambda: http.get("/readyz").status_code == 200)
    assert http.get(f"/subjects/{subject}/versions").json() == [1]
    assert server.process.poll() is None, "the registry must ride out the outage, not exit"
