"""The erasure test (issue 14): a person known everywhere — identified, merged, onboarded, sticky-assigned,
activated, scored, shown live on the CS dashboard — is erased with ``plg privacy forget``; afterwards their
ids are in no PostgreSQL table, in no compacted topic's latest value, in no cache of the running services,
and their later events start a new history with no link to the old one. Real stack: ingest, enrichment,
growth and the health score running against the suite's broker, registry and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from services.enrichment.app import EnrichmentApp
from services.enrichment.pii import Scrubber
from services.kernel import apikeys
from services.kernel.reading import read_to_end
from services.kernel.settings import KafkaSettings
from services.kernel.topics import catalogue
from tests.integration.enrichment.harness import ROOT, EnrichmentWorld
from tests.integration.growth.conftest import STICKY_AB_FLAG, GrowthFactory, wait_for
from tests.integration.health_score.harness import Health
from tests.integration.ingest.conftest import RunningIngest, Tenant

pytestmark = pytest.mark.integration

PII_KEY = "test-pii-key"  # the enrichment world's key: the CLI needs it to find the pseudonyms


def admin_token(world: EnrichmentWorld, role: str = "admin") -> str:
    with psycopg.connect(world.database.url.get_secret_value(), autocommit=True) as conn:
        return apikeys.create_operator(conn, f"privacy-{uuid.uuid4().hex[:8]}", role)[1]


def plg(world: EnrichmentWorld, *args: str, token: str | None = None, ok: bool = True) -> str:
    env = {
        **os.environ,
        "DATABASE_URL": world.database.url.get_secret_value(),
        "KAFKA_BOOTSTRAP_SERVERS": world.kafka.bootstrap_servers,
        "SCHEMA_REGISTRY_URL": world.registry.url,
        "PLG_TOPIC_PREFIX": world.prefix,
        "ENRICHMENT_PII_KEY": PII_KEY,
        "PLG_OPERATOR_TOKEN": token or "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode == 0) == ok, done.stderr
    return done.stdout if ok else done.stderr


def tables_holding(url: str, needles: Iterable[str]) -> list[str]:
    """Every table.column of the database whose value (as text) contains one of ``needles``."""
    found = []
    with psycopg.connect(url, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table, column in columns:
            query = sql.SQL("SELECT count(*) FROM {}.{} WHERE strpos({}::text, %s) > 0").format(
                sql.Identifier(schema), sql.Identifier(table), sql.Identifier(column)
            )
            for needle in needles:
                n = conn.execute(query, (needle,)).fetchone()
                if n and n[0]:
                    found.append(f"{table}.{column} ({n[0]} rows hold {needle!r})")
    return found


def compacted_latest_holding(kafka: KafkaSettings, prefix: str, needles: Iterable[str]) -> list[str]:
    """Every compacted topic's latest value per key (the key too) that contains one of ``needles``."""
    wanted = [n.encode() for n in needles]
    found = []
    for spec in catalogue(prefix):
        if "compact" not in spec.cleanup_policy:
            continue
        latest: dict[bytes | None, bytes | None] = {}
        for record in read_to_end(kafka, spec.name, 60, "privacy-test"):
            latest[record.key()] = record.value()
        for key, value in latest.items():
            if value is None:
                continue
            for needle in wanted:
                if needle in (key or b"") or needle in value:
                    found.append(f"{spec.name}: key {key!r} holds {needle.decode()!r}")
    return found


def test_forget_erases_the_person_everywhere_and_later_events_start_a_new_history(
    provisioned: Any,
    kafka_settings: KafkaSettings,
    registry_settings: Any,
    database_settings: Any,
    start_ingest: Any,
    tenant: Tenant,
    start_growth: GrowthFactory,
) -> None:
    world = EnrichmentWorld(provisioned.prefix, kafka_settings, registry_settings, database_settings)
    health = Health(provisioned.prefix, kafka_settings, registry_settings, database_settings)
    url = database_settings.url.get_secret_value()
    customer = tenant.customer_id
    tag = uuid.uuid4().hex[:10]
    person = f"pat.{tag}@example.com"  # an e-mail as user id: enrichment pseudonymises it downstream
    anon, old_id = f"anon-{tag}", f"old-{tag}"
    pseudonym = Scrubber(PII_KEY.encode()).pseudonym(person)
    everything = [person, anon, old_id, pseudonym]
    try:
        enrichment: EnrichmentApp = world.start_enrichment().app
        ingest: RunningIngest = start_ingest()
        growth = start_growth()
        scores = health.start()
        # the CS dashboard shows customers to operators only
        viewer = {"Authorization": f"Bearer {admin_token(world, 'viewer')}"}
        now = int(time.time() * 1000)

        def track(name: str, **ids: str) -> dict[str, Any]:
            return {"event_id": str(uuid.uuid4()), "name": name, "timestamp": now, **ids}

        # -- the person, known everywhere -------------------------------------------------------------
        with ingest.client() as client:
            identify = {
                "event_id": str(uuid.uuid4()),
                "timestamp": now,
                "anonymous_id": anon,
                "user_id": person,
            }
            assert client.post("/v1/identify", json=identify, headers=tenant.headers).status_code == 202
            world.merge(customer, old_id, person)
            batch = [track("project_created", user_id=person) for _ in range(4)]
            batch += [track("core_action_completed", anonymous_id=anon) for _ in range(2)]
            answer = client.post("/v1/batch", json={"batch": batch}, headers=tenant.headers)
            assert answer.json()["accepted"] == 6, answer.text
        with growth.client() as client, growth.admin() as admin:
            path = f"/v1/onboarding/{customer}/{person}/steps/first-api-call/complete"
            assert client.post(path).status_code == 201
            flag = f"privacy_{tag}"
            assert admin.put(f"/v1/admin/flags/{flag}", json=STICKY_AB_FLAG).status_code == 201
            # The operator names the customer: sticky rows are stored per customer, never without one.
            context = {"customer_id": customer, "user_id": person}
            evaluated = client.post("/v1/flags/evaluate", json={"flag_key": flag, "context": context})
            assert evaluated.status_code == 200
            wait_for(
                lambda: client.get(f"/v1/activation/{customer}/{pseudonym}").json()["person"][0]["crossed"],
                timeout=60,
                what="the person's activation crossed (enriched as their pseudonym)",
            )
        wait_for(lambda: tables_holding(url, [pseudonym]), timeout=60, what="the health facts of the person")
        with httpx.Client(base_url=scores.url, timeout=10, headers=viewer) as client:
            wait_for(
                lambda: pseudonym in client.get(f"/customers/{customer}").text,
                timeout=30,
                what="the person on the CS dashboard's live events",
            )
        assert enrichment.handler.enricher.graph.resolve(customer, None, anon) == (person, True)
        assert tables_holding(url, [person]), "the test must start with the person in PostgreSQL"
        assert compacted_latest_holding(kafka_settings, provisioned.prefix, [anon])

        # An event of the person, and one of someone else, waiting in the inbox of their customer's home
        # scorer (routed there by another scorer instance: docs/health-score.md).
        with psycopg.connect(url, autocommit=True) as conn:
            for who in (pseudonym, f"other-{tag}"):
                conn.execute(
                    "INSERT INTO health_inbox (consumer_group, home_partition, customer_id, kind, payload)"
                    " VALUES (%s, 0, %s, 'event', %s)",
                    (f"privacy-test-{tag}", customer, Jsonb({"customer_id": customer, "person_id": who})),
                )

        # -- the erasure ------------------------------------------------------------------------------
        forget = ("--json", "privacy", "forget", "--customer", customer, "--person", person)
        assert "admin operator token" in plg(world, *forget, ok=False)
        assert "needs the admin role" in plg(world, *forget, token=admin_token(world, "editor"), ok=False)
        assert tables_holding(url, [person]), "a refused request must erase nothing"
        report = json.loads(plg(world, *forget, token=admin_token(world)))
        assert report["ids_erased"] == 3  # the user id, the anonymous id identified as it, the merged id
        assert report["residual"] == []
        places = {p["place"]: p for p in report["places"]}
        assert places["growth_onboarding_progress"]["count"] == 1
        assert places["growth_sticky_assignments"]["count"] >= 1
        assert places["identity-links"]["count"] == 2
        assert places["usage-events"]["action"] == "expires"
        assert places["health_inbox"]["count"] == 1  # the person's; the other one waits on
        with psycopg.connect(url, autocommit=True) as conn:
            left = conn.execute(
                "SELECT payload->>'person_id' FROM health_inbox WHERE consumer_group = %s",
                (f"privacy-test-{tag}",),
            ).fetchall()
            conn.execute("DELETE FROM health_inbox WHERE consumer_group = %s", (f"privacy-test-{tag}",))
        assert left == [(f"other-{tag}",)]

        # in no PostgreSQL table
        assert tables_holding(url, everything) == []
        # in no compacted topic's latest value (growth tombstones its activation state in its own transaction)
        wait_for(
            lambda: compacted_latest_holding(kafka_settings, provisioned.prefix, everything) == [],
            timeout=30,
            what="no compacted topic naming the person",
        )
        # in no cache of the running services
        graph = enrichment.handler.enricher.graph
        wait_for(
            lambda: graph.resolve(customer, None, anon) == (anon, False), timeout=15, what="graph forgot"
        )
        assert graph.resolve(customer, old_id, None) == (old_id, True)
        assert not any(p in enrichment.handler.enricher.scrubber._clean for p in everything)
        with growth.client() as client:
            status = client.get(f"/v1/activation/{customer}/{pseudonym}").json()
            assert all(t["count"] == 0 and not t["crossed"] for t in status["person"]), status
            progress = client.get(f"/v1/onboarding/{customer}/{person}/progress").json()
            assert all(s["status"] != "completed" for s in progress["steps"]), progress
            metrics = client.get("/metrics").text
            assert 'plg_privacy_erasures_applied_total{place="memory",service="growth"} 1.0' in metrics
        with httpx.Client(base_url=scores.url, timeout=10, headers=viewer) as client:
            wait_for(
                lambda: pseudonym not in client.get(f"/customers/{customer}").text,
                timeout=15,
                what="the dashboard's live events without the person",
            )

        # -- later events start a new history ---------------------------------------------------------
        with ingest.client() as client:
            later = [
                track("project_created", user_id=person),
                track("core_action_completed", anonymous_id=anon),
            ]
            assert (
                client.post("/v1/batch", json={"batch": later}, headers=tenant.headers).json()["accepted"]
                == 2
            )
        enriched = world.wait_enriched([e["event_id"] for e in later], timeout=60)
        assert enriched[later[1]["event_id"]]["person_id"] == anon  # no link to the old person
        with growth.client() as client:
            status = wait_for(
                lambda: (
                    (b := client.get(f"/v1/activation/{customer}/{pseudonym}").json())["person"][0]["count"]
                    and b
                ),
                timeout=30,
                what="the new history counted",
            )
            assert status["person"][0]["count"] == 1
            assert not status["person"][0]["crossed"]
    finally:
        health.close()
        world.close()
