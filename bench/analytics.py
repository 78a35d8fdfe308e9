"""``make bench-analytics``: how fresh and how fast the analytics store is.

1. **Ingest ack → queryable** at ``--rate`` events/s (5k): ingest, enrichment and the analytics service
   run as their own processes on one stack; a load process POSTs batches of 100 to ingest while this
   process sends one probe event every 0.2 s for a customer of its own and polls the analytics API until
   the probe is in the store; the time from ingest's 202 to the first answer that holds it (one clock).
   The raw baseline of the same run: the same probes' time from ingest's ack to their arrival on
   ``usage-events-enriched`` (what enrichment alone costs), so the store's own share is the difference.
2. **Queries on ``--rows`` events** (10 M): synthetic rows (1,000 customers, 100 k persons, 10 event names
   over 90 days) inserted straight into a chDB store; the funnel (3 steps, 7 days) and the retention
   (8 weeks) for everyone and for one customer, ``--repeat`` times each, p50/p99; a full scan of the
   events' timestamps as the raw baseline; the store's size on disk per million events.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import load_average, pct, service, stack
from services.analytics import queries
from services.analytics.store import open_store
from services.devstack.config import free_port
from services.kernel import apikeys
from services.kernel.db import migrate
from services.kernel.kafka import Consumer
from services.kernel.provision import provision_all
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_EVENTS_ENRICHED, topic

GOAL_FRESH_S = 5.0
DAY = 86_400_000


# ------------------------------------------------------------------------------------------- freshness


def _load(url: str, key: str, rate: int, seconds: float, stop: Any) -> None:
    """POST batches of 100 at ``rate`` events/s (open loop, paced per batch) until ``stop`` or the time."""
    client = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30)
    batch_every = 100 / rate
    start = time.monotonic()
    sent = 0
    while not stop.is_set() and time.monotonic() - start < seconds:
        now = int(time.time() * 1000)
        batch = [
            {
                "event_id": str(uuid.uuid4()),
                "name": "api_call_made",
                "timestamp": now,
                "user_id": f"u{sent % 500}",
                "properties": {"path": "/v1/search"},
            }
            for _ in range(100)
        ]
        client.post(f"{url}/v1/batch", json={"batch": batch})
        sent += 1
        delay = start + sent * batch_every - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def freshness(rate: int, seconds: float) -> None:
    with stack() as s:
        prefix = f"b{uuid.uuid4().hex[:6]}-"
        kafka = KafkaSettings(bootstrap_servers=s.kafka)
        provision_all(kafka, SchemaRegistrySettings(url=s.registry), prefix=prefix)
        migrate(s.database)
        load_customer, probe_customer = f"{prefix}load", f"{prefix}probe"
        with psycopg.connect(s.database, autocommit=True) as conn:
            for c in (load_customer, probe_customer):
                conn.execute("INSERT INTO customers (customer_id, plan) VALUES (%s, 'free')", (c,))
            load_key = apikeys.create_key(conn, load_customer)[1]
            probe_key = apikeys.create_key(conn, probe_customer)[1]
            operator = apikeys.create_operator(conn, f"bench-{prefix}", "viewer")[1]
        store_dir = Path(tempfile.mkdtemp(prefix="plg-bench-analytics-"))
        ports = {"ingest": free_port(), "enrichment": free_port(), "analytics": free_port()}
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka,
            "SCHEMA_REGISTRY_URL": s.registry,
            "DATABASE_URL": s.database,
            "PLG_TOPIC_PREFIX": prefix,
            "PLG_LOG_FORMAT": "text",
            "INGEST_PORT": str(ports["ingest"]),
            "INGEST_RATE_LIMIT_EVENTS_PER_SECOND": "0",
            "ENRICHMENT_PORT": str(ports["enrichment"]),
            "ANALYTICS_PORT": str(ports["analytics"]),
            "ANALYTICS_PATH": str(store_dir),
        }
        ingest_url = f"http://127.0.0.1:{ports['ingest']}"
        analytics_url = f"http://127.0.0.1:{ports['analytics']}"
        enriched_at: dict[str, float] = {}
        try:
            with (
                service("services.ingest", env, ports["ingest"], "ingest"),
                service("services.enrichment", env, ports["enrichment"], "enrichment"),
                service("services.analytics", env, ports["analytics"], "analytics"),
            ):
                watcher_stop = threading.Event()
                watcher = threading.Thread(
                    target=_watch_enriched,
                    args=(kafka, s.registry, prefix, probe_customer, enriched_at, watcher_stop),
                    daemon=True,
                )
                watcher.start()
                stop = multiprocessing.Event()
                load = multiprocessing.Process(
                    target=_load, args=(ingest_url, load_key, rate, seconds + 5, stop)
                )
                load.start()
                time.sleep(3)  # let the load reach its rate
                fresh, raw = _probe(
                    ingest_url, analytics_url, probe_key, probe_customer, operator, seconds, enriched_at
                )
                stop.set()
                load.join(30)
                watcher_stop.set()
        finally:
            shutil.rmtree(store_dir, ignore_errors=True)
    print(f"\ningest ack -> queryable in the analytics store, at {rate:,} events/s ({len(fresh)} probes):")
    print(
        f"  p50 {pct(fresh, 50):.2f} s   p99 {pct(fresh, 99):.2f} s   max {max(fresh):.2f} s"
        f"   (goal < {GOAL_FRESH_S:g} s)"
    )
    if raw:
        print(
            "  raw baseline, ingest ack -> on usage-events-enriched: "
            f"p50 {pct(raw, 50):.2f} s   p99 {pct(raw, 99):.2f} s"
        )
    print(f"  {'met' if pct(fresh, 99) < GOAL_FRESH_S else 'NOT met'}; load average {load_average()}")


def _watch_enriched(
    kafka: KafkaSettings, registry_url: str, prefix: str, customer: str, seen: dict[str, float], stop: Any
) -> None:
    registry = SchemaRegistry(SchemaRegistrySettings(url=registry_url))
    decode = registry.decoder().decode
    consumer = Consumer(kafka, f"{prefix}bench-watch", auto_offset_reset="latest")
    consumer.subscribe([topic(USAGE_EVENTS_ENRICHED, prefix).name])
    try:
        while not stop.is_set():
            for record in consumer.consume(500, 0.1):
                payload = record.value()
                if record.key() == customer.encode() and payload is not None:
                    value = decode(payload)
                    seen.setdefault(value["event_id"], time.monotonic())
    finally:
        consumer.close()


def _probe(
    ingest: str,
    analytics: str,
    key: str,
    customer: str,
    operator: str,
    seconds: float,
    enriched_at: dict[str, float],
) -> tuple[list[float], list[float]]:
    """One probe event every 0.2 s (a thread), while this thread polls the store every 20 ms for the probe
    customer's events and notes when each first shows."""
    acked: dict[str, float] = {}
    stored: dict[str, float] = {}
    done = threading.Event()

    def send() -> None:
        sender = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            event_id = str(uuid.uuid4())
            probe = {"event_id": event_id, "name": "probe_sent", "timestamp": int(time.time() * 1000)}
            response = sender.post(f"{ingest}/v1/batch", json={"batch": [{**probe, "user_id": "prober"}]})
            if response.status_code != 202:
                raise RuntimeError(f"ingest answered {response.status_code}: {response.text}")
            acked[event_id] = time.monotonic()
            time.sleep(0.2)
        done.set()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    reader = httpx.Client(headers={"Authorization": f"Bearer {operator}"}, timeout=30)
    give_up = time.monotonic() + seconds + 30
    while time.monotonic() < give_up and not (done.is_set() and stored.keys() >= acked.keys()):
        answer = reader.get(
            f"{analytics}/v1/analytics/customers/{customer}/timeline", params={"limit": 10_000, "since": "1h"}
        )
        now = time.monotonic()
        if answer.status_code == 200:
            for event in answer.json()["events"]:
                stored.setdefault(event["event_id"], now)
        time.sleep(0.02)
    thread.join(5)
    fresh = [stored[e] - acked[e] for e in acked if e in stored]
    raw = [enriched_at[e] - acked[e] for e in acked if e in enriched_at]
    missing = len(acked) - len(fresh)
    if missing:
        print(f"  {missing} of {len(acked)} probes never showed in the store within 30 s")
    return fresh, raw


# ----------------------------------------------------------------------------------------------- queries


def query_speed(rows: int, repeat: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="plg-bench-chdb-"))
    try:
        store = open_store("chdb", directory, None, database="bench")
        now = int(time.time() * 1000)
        start = now - 90 * DAY
        t0 = time.monotonic()
        # 1,000 customers, 100 per customer of 100 k persons, 10 event names; funnel steps are the common ones
        store.engine.command(
            "INSERT INTO bench.events (event_id, customer_id, name, ts, person, plan, properties, historical,"
            " enriched_at, topic, partition, offset)"
            " SELECT toString(number), concat('c', toString(number % 1000)),"
            " arrayElement(['signed_up','project_created','team_invite_sent','api_call_made','page_viewed',"
            " 'core_action_completed','report_exported','user_signed_in','job_completed','file_uploaded'],"
            " 1 + (intHash32(number) % 10)),"
            " fromUnixTimestamp64Milli(toInt64({start:Int64} + intHash64(number) % (90 * 86400000)), 'UTC'),"
            " concat('u', toString(intHash32(number * 7) % 100)), if(number % 1000 < 800, 'free', 'pro'),"
            " map('path', '/v1/search'), 0, now64(3), 'bench', 0, number FROM numbers({rows:UInt64})",
            {"start": start, "rows": rows},
        )
        load_s = time.monotonic() - t0
        size = store.engine.rows(
            "SELECT sum(bytes_on_disk) AS b FROM system.parts WHERE database = 'bench' AND table = 'events'"
            " AND active"
        )[0]["b"]
        print(f"\nqueries on {rows:,} events (synthetic, inserted in {load_s:.1f} s):")
        per_million = int(size) / (rows / 1e6) / 1e6
        print(f"  store size {int(size) / 1e6:,.1f} MB on disk: {per_million:.1f} MB per million events")
        scope = queries.Scope(start, now + 1)
        one = queries.Scope(start, now + 1, "c7")
        steps = ["signed_up", "project_created", "team_invite_sent"]
        cases: dict[str, Callable[[], object]] = {
            "raw scan (count by day)": lambda: store.engine.rows(
                "SELECT toDate(ts) AS d, count() FROM bench.events GROUP BY d"
            ),
            "funnel, everyone, 7d": lambda: queries.funnel(store, steps, 7 * 86400, scope),
            "funnel, one customer": lambda: queries.funnel(store, steps, 7 * 86400, one),
            "funnel by plan": lambda: queries.funnel(store, steps, 7 * 86400, scope, "plan"),
            "retention, everyone, 8w": lambda: queries.retention(store, scope, 8),
            "retention, one customer": lambda: queries.retention(store, one, 8),
        }
        for label, run in cases.items():
            times = []
            for _ in range(repeat):
                t = time.monotonic()
                run()
                times.append(time.monotonic() - t)
            p50, p99 = 1000 * statistics.median(times), 1000 * pct(times, 99)
            print(f"  {label:28} p50 {p50:8.1f} ms   p99 {p99:8.1f} ms")
        print(f"  load average {load_average()}")
        store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=5_000, help="events/s through ingest during the probes")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the probes run")
    parser.add_argument("--rows", type=int, default=10_000_000, help="events in the query benchmark's store")
    parser.add_argument("--repeat", type=int, default=20, help="runs of each query")
    parser.add_argument("--only", choices=("freshness", "queries"), help="run one part")
    args = parser.parse_args()
    if args.only in (None, "queries"):
        query_speed(args.rows, args.repeat)
    if args.only in (None, "freshness"):
        freshness(args.rate, args.seconds)


if __name__ == "__main__":
    main()
