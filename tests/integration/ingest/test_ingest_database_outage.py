"""Ingest through a PostgreSQL outage: Kafka is fine, so events with a key ingest has seen keep being
accepted; a key it has not seen gets a clear 503 (never a 500); after the outage every key works again.
Readiness follows what ingest can serve: ready (``"degraded": ["database"]``) while it serves cached keys,
not ready only when it has no key to serve.

The test stops a PostgreSQL of its own (a private cluster, by its pid), never the session stack's.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from services.customers.store import create_customer
from services.devstack.config import private_settings
from services.devstack.processes import is_alive
from services.devstack.stack import POSTGRES, Stack
from services.kernel.apikeys import create_key, generate
from services.kernel.settings import AuthSettings, DatabaseSettings
from tests.integration.ingest.conftest import IngestFactory, RunningIngest, read_topic
from tests.integration.kernel.helpers import wait_for


@pytest.fixture
def private_postgres() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="plg-test-pg-"))
    stack = Stack(
        private_settings(root),
        components=(POSTGRES,),
        provision=False,
        say=lambda _msg: None,
        tied_to_this_process=True,
    )
    stack.up()
    try:
        yield stack
    finally:
        stack.down()
        if os.environ.get("PLG_KEEP_TEST_STACK", "") in ("", "0"):
            shutil.rmtree(root, ignore_errors=True)


def _stop_postgres(stack: Stack) -> None:
    """Fast shutdown of the test's own postmaster by its pid: open connections are cut, as in an outage."""
    pid = stack.managed(POSTGRES).pid()
    assert pid is not None, "the private PostgreSQL is not running"
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while is_alive(pid):
        assert time.monotonic() < deadline, "PostgreSQL did not stop within 60 s"
        time.sleep(0.1)


def _readiness(ingest: RunningIngest) -> tuple[int, dict[str, object]]:
    with ingest.client() as client:
        r = client.get("/readyz")
    return r.status_code, r.json()


def _event() -> dict[str, object]:
    return {"event_id": str(uuid.uuid4()), "name": "api_call_made", "timestamp": int(time.time() * 1000)}


def test_ingest_keeps_accepting_seen_keys_through_a_postgres_outage_and_answers_503_for_others(
    private_postgres: Stack, start_ingest: IngestFactory
) -> None:
    url = private_postgres.database_url
    customer = f"cust-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        create_customer(conn, customer, "free", name="outage test")
        _, seen = create_key(conn, customer, "used before the outage")
        _, unseen = create_key(conn, customer, "first used during the outage")
    made_up = generate().token
    settings = {
        "database": DatabaseSettings(url=SecretStr(url)),
        # A short trust period, so the outage is met by expired rows: the stale path is what is tested.
        "key_cache_ttl_seconds": 1.0,
        "auth": AuthSettings(key_stale_ttl_seconds=3600),
    }
    ingest = start_ingest(**settings)
    idle = start_ingest(**settings)  # never sees a key: an outage leaves it nothing to serve
    for running in (ingest, idle):
        wait_for(lambda r=running: _readiness(r) == (200, {"status": "ready"}), timeout=60)
    sent: list[str] = []
    with ingest.client() as client:

        def send(token: str) -> tuple[int, dict[str, object], dict[str, str]]:
            event = _event()
            headers = {"Authorization": f"Bearer {token}"}
            r = client.post("/v1/batch", json={"batch": [event]}, headers=headers)
            if r.status_code == 202:
                sent.append(str(event["event_id"]))
            return r.status_code, r.json(), dict(r.headers)

        assert send(seen)[0] == 202  # ingest has now seen the key

        _stop_postgres(private_postgres)
        time.sleep(1.5)  # past the key's 1 s trust period: the next request must look it up, and fails

        for _ in range(3):
            status, body, _ = send(seen)
            assert status == 202, body

        for token in (unseen, made_up):
            status, body, headers = send(token)
            assert status == 503, body
            assert body["code"] == "database_unavailable", body
            assert int(headers["retry-after"]) >= 1

        # Kubernetes keeps sending events to the ingest that serves its cached keys, not to the other.
        wait_for(lambda: _readiness(ingest) == (200, {"status": "ready", "degraded": ["database"]}))
        wait_for(lambda: _readiness(idle)[0] == 503)
        assert _readiness(idle)[1] == {
            "status": "not ready",
            "failing": ["database"],
            "degraded": ["database"],
        }
        assert send(seen)[0] == 202  # and it does serve them

        private_postgres.up()  # same port and data: the pool reconnects
        deadline = time.monotonic() + 90
        while (status := send(unseen)[0]) != 202:
            assert status == 503, status
            assert time.monotonic() < deadline, "ingest did not take the new key within 90 s of the restart"
            time.sleep(0.5)
        for running in (ingest, idle):  # the directory's listener reconnects (back-off up to 5 s)
            wait_for(lambda r=running: _readiness(r) == (200, {"status": "ready"}), timeout=60)

    done = ingest.settings
    topic = f"{done.platform.topic_prefix}usage-events"
    records = read_topic(done.kafka.bootstrap_servers, done.registry.url, topic, len(sent))
    assert sorted(r.value()["event_id"] for r in records) == sorted(sent)
    assert all(r.value()["customer_id"] == customer for r in records)
