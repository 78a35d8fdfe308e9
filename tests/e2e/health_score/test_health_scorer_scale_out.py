"""The health scorer scaled out: two scorer processes share usage-events-enriched's 6 and
entitlement-events' 3 partitions, one is SIGKILLed mid-stream, the other takes its customers over, and
every customer's facts, context and served score equal what one instance folds from the same inputs —
nothing lost, nothing doubled — and each churn alert fires exactly once
(docs/health-score.md#scaling-out-several-scorer-instances).

The inputs include what cannot be co-partitioned: entitlement events (3 partitions: a customer's lands on
an instance that is often not its home) and enriched events keyed off their customer (strays), both routed
through the home's PostgreSQL inbox."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from services.devstack.config import free_port
from services.health_score.alerts import CustomerAlertState
from services.health_score.app import seats_limits
from services.health_score.model import Context
from services.health_score.processor import FactsBuilder, health_record
from services.health_score.registry import load_config
from services.health_score.scoring import compute_score
from services.health_score.store import CustomerState, to_day
from services.kernel.kafka import Producer
from services.kernel.partitioning import key_partitioner
from services.kernel.reading import read_to_end
from services.kernel.serde import SchemaRegistry
from services.kernel.topics import (
    CUSTOMER_ALERTS,
    CUSTOMER_HEALTH,
    ENTITLEMENT_EVENTS,
    USAGE_EVENTS_ENRICHED,
    topic,
)
from services.plans.loader import load_config as load_plans
from tests.integration.health_score.harness import Health, enriched, wait_for
from tests.processes import Proc

pytestmark = pytest.mark.integration
CUSTOMERS = 24
SINKING = {"plan": "starter", "support_tier": "standard", "open_tickets": 9, "csm_owner": None}


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _entitlement(customer: str, percent: int, ts: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "customer_id": customer,
        "meter": "api_calls",
        "plan": "starter",
        "threshold_percent": percent,
        "usage": Decimal(percent * 10),
        "limit": Decimal(1000),
        "hard_limit": True,
        "period_start": ts - 86_400_000,
        "period_end": ts + 86_400_000,
        "occurred_at": ts,
        "upgrade": None,
    }


def _wave(health: Health, customers: list[str], wave: int) -> list[tuple[str, dict[str, Any]]]:
    """Each customer's inputs of one wave: (kind, value). Even customers sink (payment failures, past
    due, many tickets: a churn alert), odd ones use the product; one event in four is keyed off its
    customer, and every customer reaches a plan limit (80, 90, then 100 %)."""
    now = int(time.time() * 1000)
    out: list[tuple[str, dict[str, Any]]] = []
    for i, customer in enumerate(customers):
        if i % 2 == 0:
            tenant = {**SINKING, "billing_status": "past_due"}
            out += [("event", enriched(customer, "payment_failed", tenant=tenant, ts=now)) for _ in range(2)]
        else:
            out += [
                ("event", enriched(customer, "core_action_completed", person=f"p{wave}", ts=now - 3_600_000))
                for _ in range(3)
            ]
        out.append(("entitlement", _entitlement(customer, (80, 90, 100)[wave], now)))
    return out


def test_two_scorers_and_a_sigkill_lose_and_double_nothing(
    provisioned, stack, kafka_settings, registry_settings, database_settings, tmp_path
) -> None:
    prefix = provisioned.prefix
    health = Health(prefix, kafka_settings, registry_settings, database_settings)
    registry = SchemaRegistry(registry_settings)
    spec = topic(ENTITLEMENT_EVENTS, prefix)
    assert spec.schema_path is not None
    encode_entitlement = registry.encoder(spec.value_subject, spec.schema_path, auto_register=False).encode
    producer = Producer(kafka_settings, client_id="health-scale-out-test")
    base = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": stack.registry_url,
        "DATABASE_URL": stack.database_url,
        "PLG_TOPIC_PREFIX": prefix,
        "PLG_LOG_FORMAT": "text",
        "HEALTH_ROLE": "scorer",
        "HEALTH_SESSION_TIMEOUT_MS": "6000",
        "HEALTH_BATCH_INTERVAL_SECONDS": "3600",
        "HEALTH_MAX_BATCH": "20",
    }
    ids = {"steady": f"steady-{uuid.uuid4().hex[:4]}", "killed": f"killed-{uuid.uuid4().hex[:4]}"}
    ports = {name: free_port() for name in ids}

    def start(name: str) -> Proc:
        env = {**base, "HEALTH_PORT": str(ports[name]), "HEALTH_INSTANCE_ID": ids[name]}
        return Proc("services.health_score", env, tmp_path / f"{name}.log").start()

    home = key_partitioner(topic(USAGE_EVENTS_ENRICHED, prefix).partitions)

    def send(inputs: list[tuple[str, dict[str, Any]]]) -> None:
        futures = []
        for n, (kind, value) in enumerate(inputs):
            if kind == "entitlement":
                name, data = spec.name, encode_entitlement(value)
            else:
                name, data = topic(USAGE_EVENTS_ENRICHED, prefix).name, health.encoder.encode(value)
            # One enriched event in four keyed off its customer: it lands away from the customer's home.
            key = f"stray-{n}" if kind == "event" and n % 4 == 0 else value["customer_id"]
            futures.append((kind, key, producer.send(name, data, key=key)))
        for kind, key, f in futures:
            report = f.result(timeout=30)
            if kind == "event":  # the scorer's idea of a home is where the producer's partitioner puts it
                assert report.partition == home(key)

    group = f"{prefix}health-score"

    def owners() -> dict[int, tuple[str, int]]:
        with psycopg.connect(stack.database_url) as conn:
            rows = conn.execute(
                "SELECT partition, owner, epoch FROM health_partition_owners WHERE consumer_group = %s",
                (group,),
            ).fetchall()
        return {p: (o, e) for p, o, e in rows}

    steady, killed = start("steady"), start("killed")
    customers = [health.customer(f"{i:02d}-{uuid.uuid4().hex[:4]}") for i in range(CUSTOMERS)]
    sent: list[tuple[str, dict[str, Any]]] = []
    try:
        for name in ids:
            wait_for(lambda n=name: _ready(ports[n]), timeout=90, what=f"{name} ready")
        # Both instances hold homes before the kill (else the kill would prove nothing), half each: the
        # group assigns each input topic on its own (range), so the scoring work is split evenly.
        wait_for(
            lambda: sorted(Counter(o for o, _ in owners().values()).values()) == [3, 3],
            timeout=90,
            what="the two scorers owning three home partitions each",
        )
        killed_homes = {p for p, (o, _) in owners().items() if o == ids["killed"]}
        first = _wave(health, customers, 0)
        send(first)
        sent += first
        time.sleep(0.5)  # some of it folded by the victim, some in flight
        killed.kill()
        for wave in (1, 2):
            inputs = _wave(health, customers, wave)
            send(inputs)
            sent += inputs

        # What one instance folds from the same inputs (the real-time path's own builder).
        config = load_config()
        builder = FactsBuilder(config, seats_limits(load_plans()))
        expected: dict[str, CustomerState] = {}
        for kind, value in sent:
            state = expected.setdefault(
                value["customer_id"], CustomerState({}, Context(), CustomerAlertState())
            )
            if kind == "entitlement":
                builder.add_entitlement(state, value)
            else:
                builder.add_event(state, value)

        def facts_match() -> bool:
            with psycopg.connect(stack.database_url) as conn:
                rows = conn.execute(
                    "SELECT customer_id, day, facts FROM health_daily_facts WHERE customer_id = ANY(%s)",
                    (customers,),
                ).fetchall()
                contexts = dict(
                    conn.execute(
                        "SELECT customer_id, context FROM health_context WHERE customer_id = ANY(%s)",
                        (customers,),
                    ).fetchall()
                )
            stored: dict[str, dict[int, Any]] = {}
            for cid, day, facts in rows:
                stored.setdefault(cid, {})[to_day(day)] = facts
            for cid, state in expected.items():
                if stored.get(cid) != {d: f.to_json() for d, f in state.facts.items()}:
                    return False
                if contexts.get(cid) != state.context.to_json():
                    return False
            return True

        wait_for(
            facts_match, timeout=120, interval=1.0, what="every customer's stored facts equal one instance's"
        )

        # The served score: the latest customer-health record of each customer is the score of exactly
        # those facts, as of its own computed_at.
        decoder = registry.decoder()
        latest: dict[str, dict[str, Any]] = {}

        def scores_match() -> bool:
            latest.clear()
            for record in read_to_end(kafka_settings, topic(CUSTOMER_HEALTH, prefix).name, 30, "t-health"):
                value = decoder.decode(record.value())
                if value["customer_id"] in expected:
                    latest[value["customer_id"]] = value
            for cid, state in expected.items():
                got = latest.get(cid)
                if got is None:
                    return False
                score = compute_score(config, cid, state.facts, state.context, got["computed_at"])
                want = health_record(score, state.context.plan, builder.activated(state), "realtime")
                if {**want, "path": got["path"]} != got:
                    return False
            return True

        wait_for(scores_match, timeout=60, interval=1.0, what="every served score equal to one instance's")

        # Alerts: one churn alert per sinking customer, none for the others; each published once.
        sinking = {c for i, c in enumerate(customers) if i % 2 == 0}
        for cid in sinking:
            assert latest[cid]["churn_risk_probability"] >= 0.85, latest[cid]
        with psycopg.connect(stack.database_url) as conn:
            fired = conn.execute(
                "SELECT alert_id, customer_id, rule FROM health_alerts WHERE customer_id = ANY(%s)",
                (customers,),
            ).fetchall()
        assert Counter((c, r) for _, c, r in fired) == Counter((c, "churn_risk") for c in sinking)
        fired_ids = {a for a, _, _ in fired}

        def published() -> list[str]:
            return [
                a["alert_id"]
                for r in read_to_end(kafka_settings, topic(CUSTOMER_ALERTS, prefix).name, 30, "t-alerts")
                if (a := decoder.decode(r.value()))["customer_id"] in expected
            ]

        wait_for(
            lambda: set(published()) == fired_ids,
            timeout=60,
            interval=1.0,
            what="every alert on customer-alerts",
        )
        # The survivor took every home over, each with a newer epoch than the victim's claim.
        final = owners()
        assert {o for o, _ in final.values()} == {ids["steady"]}, final
        assert killed_homes
        assert all(final[p][1] >= 2 for p in killed_homes), final
        assert steady.alive(), (tmp_path / "steady.log").read_text()[-3000:]
        with psycopg.connect(stack.database_url) as conn:
            left = conn.execute(
                "SELECT count(*) FROM health_inbox WHERE consumer_group = %s", (group,)
            ).fetchone()
        assert left == (0,)
        duplicates = [a for a, n in Counter(published()).items() if n > 1]
        inbox = {
            line.split("{")[0].split(" ")[0]: float(line.split()[-1])
            for line in httpx.get(f"http://127.0.0.1:{ports['steady']}/metrics", timeout=5).text.splitlines()
            if line.startswith(("plg_health_inbox_routed_total", "plg_health_inbox_folded_total"))
        }
        print(
            f"\nhealth scorer scale-out: {len(sent)} inputs for {CUSTOMERS} customers, 2 instances, "
            f"1 SIGKILL (homes {sorted(killed_homes)} moved), {len(fired_ids)} alerts, "
            f"republished {len(duplicates)}; the survivor's inbox counters {inbox}"
        )
    finally:
        killed.terminate()
        steady.terminate()
        producer.close()
        registry.close()
        health.close()
