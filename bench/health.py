"""``make bench-health``: the health-score service's throughput (enriched events/s into the scorer: facts,
scores, alerts and offsets in PostgreSQL, scores on customer-health), the time from an event on
``usage-events-enriched`` to the changed score served by the API (p50/p99 with the scorer under 5k
events/s), and the API's own p99 (``GET /v1/health/{customer}`` and ``GET /v1/health?band=...``).

Uses the stack named by ``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL``/``DATABASE_URL`` when all are
set, otherwise starts a private one. A fresh topic prefix; ``--events`` enriched events preloaded for
``--customers`` customers over the last 28 days; then ``python -m services.health_score`` timed from its
stored offsets' first move to the end. Then a load process at ``--rate`` events/s while this process sends
one probe event every 0.25 s for a customer of its own and polls the API until that customer's
``computed_at`` passes the probe's send time (one clock, one machine). Then the API alone, sequential
requests on one keep-alive connection (client-side times: they include httpx's own ~0.1-0.2 ms), each
beside the same connection's ``/livez`` (the in-run raw baseline). ``--roles split`` (the default, as the
chart deploys it) runs the scorer as ``HEALTH_ROLE=scorer`` and serves every request from a separate
``HEALTH_ROLE=api`` process reading ``customer-health`` as a view; ``--roles all`` is one process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import time
import uuid
from contextlib import ExitStack
from typing import Any

import httpx
import psycopg

from bench.common import cpu_seconds, load_average, pct, service, stack
from services.devstack.config import free_port
from services.kernel import apikeys
from services.kernel.db import migrate
from services.kernel.kafka import Producer
from services.kernel.provision import admin_client, provision_all
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_EVENTS_ENRICHED, topic

GOAL_EVENTS_PER_S = 5_000
GOAL_API_P99_MS = 5.0
DAY = 86_400_000
NAMES = (
    ("core_action_completed", 30),
    ("api_call_made", 30),
    ("page_viewed", 15),
    ("user_signed_in", 10),
    ("project_created", 6),
    ("team_invite_sent", 4),
    ("job_completed", 5),
)
TENANT = {
    "plan": "starter",
    "support_tier": "standard",
    "open_tickets": 0,
    "csm_owner": None,
    "billing_status": "active",
}


def enriched(customer: str, ts: int, rng: random.Random) -> dict[str, Any]:
    name = rng.choices([n for n, _ in NAMES], [w for _, w in NAMES])[0]
    person = f"u{rng.randrange(8)}"
    return {
        "event_id": str(uuid.uuid4()),
        "customer_id": customer,
        "name": name,
        "timestamp": ts,
        "properties": {},
        "user_id": person,
        "resolved_user_id": person,
        "person_id": person,
        "plan": "starter",
        "enriched_at": ts,
        "tenant": TENANT,
    }


def encoder_for(registry: str, prefix: str) -> Any:
    spec = topic(USAGE_EVENTS_ENRICHED, prefix)
    assert spec.schema_path is not None
    return SchemaRegistry(SchemaRegistrySettings(url=registry)).encoder(
        spec.value_subject, spec.schema_path, auto_register=False
    )


def generate_load(
    bootstrap: str, registry: str, prefix: str, customers: list[str], rate: int, seconds: float, result: Any
) -> None:
    """Child process: ``rate`` enriched events per second for ``seconds``; puts the achieved rate."""
    encoder = encoder_for(registry, prefix)
    name = topic(USAGE_EVENTS_ENRICHED, prefix).name
    producer = Producer(KafkaSettings(bootstrap_servers=bootstrap), client_id="bench-health-load")
    rng = random.Random(5)
    tick, sent, started = 0.01, 0, time.monotonic()
    per_tick = int(rate * tick)
    while time.monotonic() - started < seconds:
        t = time.monotonic()
        now = int(time.time() * 1000)
        for _ in range(per_tick):
            c = customers[rng.randrange(len(customers))]
            producer.produce(name, encoder.encode(enriched(c, now, rng)), c)
        sent += per_tick
        sleep = tick - (time.monotonic() - t)
        if sleep > 0:
            time.sleep(sleep)
    result.put(sent / (time.monotonic() - started))
    producer.close()


def stored(database: str, group: str) -> int:
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(next_offset), 0) FROM health_offsets WHERE consumer_group = %s", (group,)
        ).fetchone()
    return int(row[0]) if row else 0


def api_latency(client: httpx.Client, customers: list[str], n: int, when: str) -> None:
    # The in-run raw baseline: the same process and connection answering /livez (no credential, no work).
    raw = []
    for _ in range(n // 4):
        t = time.perf_counter()
        client.get("/livez")
        raw.append((time.perf_counter() - t) * 1000)
    print(f"raw GET /livez ({when}): p50 {pct(raw, 50):.2f} ms, p99 {pct(raw, 99):.2f} ms")
    for label, path in (("GET /v1/health/{customer}", None), ("GET /v1/health?band=...", "/v1/health")):
        times = []
        for i in range(n):
            url = path or f"/v1/health/{customers[i % len(customers)]}"
            params = {"band": ("red", "yellow", "green")[i % 3], "limit": 50} if path else None
            t = time.perf_counter()
            client.get(url, params=params)
            times.append((time.perf_counter() - t) * 1000)
        p99 = pct(times, 99)
        verdict = "met" if p99 < GOAL_API_P99_MS else "NOT met"
        print(
            f"{label} ({when}): p50 {pct(times, 50):.2f} ms, p99 {p99:.2f} ms "
            f"(goal < {GOAL_API_P99_MS} ms: {verdict})  [load {load_average()}]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--rate", type=int, default=GOAL_EVENTS_PER_S)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--api-requests", type=int, default=5_000)
    parser.add_argument(
        "--roles",
        choices=["split", "all"],
        default="split",
        help="split: HEALTH_ROLE=scorer plus a separate HEALTH_ROLE=api process serving every request "
        "(how the chart deploys it); all: one process doing both (make run's default)",
    )
    args = parser.parse_args()
    print(f"load average before: {load_average()}")
    with stack() as s:
        migrate(s.database)
        prefix = f"benchh{uuid.uuid4().hex[:6]}-"
        kafka = KafkaSettings(bootstrap_servers=s.kafka)
        created, _ = provision_all(kafka, SchemaRegistrySettings(url=s.registry), prefix=prefix)
        try:
            run(args, s.kafka, s.registry, s.database, prefix)
        finally:
            admin_client(kafka).delete_topics(created, operation_timeout=30)


def run(args: argparse.Namespace, bootstrap: str, registry: str, database: str, prefix: str) -> None:
    rng = random.Random(1)
    customers = [f"{prefix}c{i:04d}" for i in range(args.customers)]
    encoder = encoder_for(registry, prefix)
    name = topic(USAGE_EVENTS_ENRICHED, prefix).name
    producer = Producer(KafkaSettings(bootstrap_servers=bootstrap), client_id="bench-health")
    now = int(time.time() * 1000)
    for _ in range(args.events):
        c = customers[rng.randrange(len(customers))]
        producer.produce(name, encoder.encode(enriched(c, now - rng.randrange(28 * DAY), rng)), c)
    producer.flush()
    print(f"preloaded {args.events:,} enriched events for {args.customers} customers")
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SCHEMA_REGISTRY_URL": registry,
        "DATABASE_URL": database,
        "PLG_TOPIC_PREFIX": prefix,
        "PLG_LOG_LEVEL": "WARNING",
        "HEALTH_PORT": str(port),
        "HEALTH_BATCH_INTERVAL_SECONDS": "3600",
    }
    api_port = port
    with ExitStack() as processes:
        if args.roles == "split":
            proc = processes.enter_context(
                service("services.health_score", {**env, "HEALTH_ROLE": "scorer"}, port, "health-scorer")
            )
            api_port = free_port()
            api_env = {**env, "HEALTH_ROLE": "api", "HEALTH_PORT": str(api_port)}
            processes.enter_context(service("services.health_score", api_env, api_port, "health-api"))
            print(
                "roles: one HEALTH_ROLE=scorer process, one HEALTH_ROLE=api process answering every request"
            )
        else:
            proc = processes.enter_context(service("services.health_score", env, port, "health-score"))
            print("roles: one process (HEALTH_ROLE=all) scoring and answering")
        measure(args, proc, api_port, bootstrap, registry, database, prefix, customers, encoder, producer)
    producer.close()


def measure(
    args: argparse.Namespace,
    proc: Any,
    port: int,
    bootstrap: str,
    registry: str,
    database: str,
    prefix: str,
    customers: list[str],
    encoder: Any,
    producer: Producer,
) -> None:
    """Throughput of the scorer ``proc``; latencies through the API on ``port``."""
    rng = random.Random(2)
    group = f"{prefix}health-score"
    name = topic(USAGE_EVENTS_ENRICHED, prefix).name
    # Throughput: from the first stored offset to the last.
    while stored(database, group) == 0:
        time.sleep(0.05)
    t0, cpu0, n0 = time.monotonic(), cpu_seconds(proc.pid), stored(database, group)
    while (n := stored(database, group)) < args.events:
        time.sleep(0.1)
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
    rate = (n - n0) / elapsed
    print(
        f"scorer: {rate:,.0f} enriched events/s ({(n - n0):,} in {elapsed:.1f} s, "
        f"{cpu / max(n - n0, 1) * 1e6:.0f} µs CPU/event) goal {GOAL_EVENTS_PER_S:,}/s: "
        f"{'met' if rate >= GOAL_EVENTS_PER_S else 'NOT met'}  [load {load_average()}]"
    )

    # Event -> changed score served, under load.
    probe = f"{prefix}probe"
    result: Any = multiprocessing.Queue()
    load = multiprocessing.Process(
        target=generate_load,
        args=(bootstrap, registry, prefix, customers, args.rate, args.seconds, result),
    )
    load.start()
    latencies: list[float] = []
    # The list API is for operators (docs/security.md): the bench signs its requests as one.
    with psycopg.connect(database, autocommit=True) as conn:
        token = apikeys.create_operator(conn, f"{prefix}bench-health", "viewer")[1]
    operator = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=operator) as client:
        time.sleep(1.0)
        deadline = time.monotonic() + args.seconds - 2
        while time.monotonic() < deadline:
            sent = time.time()
            producer.produce(name, encoder.encode(enriched(probe, int(sent * 1000), rng)), probe)
            producer.flush()
            while True:
                r = client.get(f"/v1/health/{probe}")
                if r.status_code == 200 and r.json()["computed_at"] >= int(sent * 1000):
                    latencies.append((time.time() - sent) * 1000)
                    break
                if time.time() - sent > 10:
                    break
                time.sleep(0.002)
            time.sleep(0.25)
        load.join()
        achieved = result.get()
        print(
            f"event -> changed score served at {achieved:,.0f} events/s: "
            f"p50 {pct(latencies, 50):.0f} ms, "
            f"p99 {pct(latencies, 99):.0f} ms ({len(latencies)} probes)  [load {load_average()}]"
        )

        # The API: idle (scorer drained), then with the scorer under the same load.
        time.sleep(2.0)
        api_latency(client, customers, args.api_requests, "idle")
        load = multiprocessing.Process(
            target=generate_load,
            args=(bootstrap, registry, prefix, customers, args.rate, args.seconds, result),
        )
        load.start()
        time.sleep(1.0)
        api_latency(client, customers, args.api_requests, f"scorer under {args.rate:,}/s")
        load.join()
        result.get()


if __name__ == "__main__":
    main()
