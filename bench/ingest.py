"""``make bench-ingest``: the ingest service's throughput and acknowledgement latency, and the raw rate of
producing the same Avro events straight to Kafka with the kernel producer, measured in the same run.

Uses the stack named by ``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL``/``DATABASE_URL`` when all are
set, otherwise starts a private one (temporary directory, free ports) and stops it afterwards. Everything
listens on loopback; each phase is bounded in time. Steps:

1. provision a fresh topic prefix, create a tenant and an API key;
2. start ingest as its own process (``python -m services.ingest``), rate limit off;
3. full load: a load-generator process keeps ``--connections`` batches of 100 in flight;
4. half load: the generator sends at half the measured full-load rate, open loop;
5. raw: encode the same events with the registered schema and produce them with the kernel producer
   (idempotent, acks=all), timing until every record is acknowledged.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

from bench.ingest_loadgen import make_template
from services.devstack.config import free_port, private_settings
from services.ingest import store
from services.ingest.avro_usage import UsageEventEncoder
from services.ingest.model import Limits, RequestContext, normalise_batch
from services.kernel.db import migrate
from services.kernel.kafka import Producer
from services.kernel.provision import admin_client, provision_all
from services.kernel.serde import SchemaRegistry, header
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_EVENTS, topic

ROOT = Path(__file__).resolve().parents[1]
STACK_ENV = ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "DATABASE_URL")


@contextmanager
def stack() -> Iterator[tuple[str, str, str]]:
    if all(os.environ.get(k) for k in STACK_ENV):
        print(f"using the stack at Kafka {os.environ['KAFKA_BOOTSTRAP_SERVERS']}")
        yield (
            os.environ["KAFKA_BOOTSTRAP_SERVERS"],
            os.environ["SCHEMA_REGISTRY_URL"],
            os.environ["DATABASE_URL"],
        )
        return
    from services.devstack.stack import KAFKA, POSTGRES, REGISTRY, Stack

    root = Path(tempfile.mkdtemp(prefix="plg-bench-"))
    private = Stack(
        private_settings(root), components=(POSTGRES, KAFKA, REGISTRY), provision=False, say=lambda _m: None
    )
    print("starting a private stack (Postgres, Kafka, registry) ...")
    elapsed = private.up()
    print(f"private stack up in {elapsed:.1f} s")
    try:
        yield private.kafka_bootstrap, private.registry_url, private.database_url
    finally:
        private.down()
        shutil.rmtree(root, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User+system CPU of ``pid`` and its descendants (uvicorn workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            pids.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


@contextmanager
def ingest_process(
    kafka: str, registry: str, database: str, prefix: str, workers: int
) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "SCHEMA_REGISTRY_URL": registry,
        "DATABASE_URL": database,
        "PLG_TOPIC_PREFIX": prefix,
        "PLG_LOG_LEVEL": "WARNING",
        "INGEST_HOST": "127.0.0.1",
        "INGEST_PORT": str(port),
        "INGEST_WORKERS": str(workers),
        "INGEST_RATE_LIMIT_EVENTS_PER_SECOND": "0",
    }
    log = tempfile.NamedTemporaryFile(prefix="plg-bench-ingest-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.ingest"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ingest exited with {proc.returncode}; log: {log.name}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest not ready after 60 s; log: {log.name}")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


def loadgen(url: str, key: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.ingest_loadgen", "--url", url, "--key", key, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return result


def raw_produce(
    kafka: str, registry_url: str, prefix: str, customer_id: str, batch: int, n_events: int
) -> dict[str, float]:
    """The same events as the load generator's, normalised as ingest would, encoded with the registered
    schema and produced straight to the broker."""
    ctx = RequestContext(customer_id, "bench", "raw", time.time_ns() // 1_000_000, "bench", None)
    template = make_template(batch, uuid.uuid4().hex[:10], ctx.received_at_ms - 1000)
    records: list[dict[str, Any]] = []
    for n in range(n_events // batch):
        body = template.replace(b"REQNUMBR", b"%08x" % n)
        records.extend(r for _, r in normalise_batch(body, ctx, Limits()).records)
    spec = topic(USAGE_EVENTS, prefix)
    assert spec.schema_path is not None
    with SchemaRegistry(SchemaRegistrySettings(url=registry_url)) as registry:
        encoder = registry.encoder(spec.value_subject, spec.schema_path, auto_register=False)
    producer = Producer(KafkaSettings(bootstrap_servers=kafka), client_id="plg-bench-raw", max_block=30.0)
    # Ingest's own encoder for these records (the fastest way to make the same bytes), and the kernel's
    # generic one (what a service producing straight to Kafka uses today).
    fast = UsageEventEncoder(header(encoder.schema_id)).for_request(customer_id, records[0]["ingest"])
    name = spec.name
    rates: dict[str, float] = {}
    try:
        producer.produce(name, encoder.encode(records[0]), customer_id)  # connection and metadata warm-up
        producer.flush(30)
        for label, encode in (("fast", fast), ("generic", encoder.encode)):
            produce = producer.produce
            started = time.perf_counter()
            for record in records:
                produce(name, encode(record), customer_id)
            left = producer.flush(60)
            rates[label] = len(records) / (time.perf_counter() - started)
            assert left == 0, f"{left} records not acknowledged"
        values = [fast(r) for r in records]
        produce = producer.produce
        started = time.perf_counter()
        for value in values:
            produce(name, value, customer_id)
        producer.flush(60)
        rates["pre_encoded"] = len(values) / (time.perf_counter() - started)
    finally:
        producer.close()
    return {
        "events_per_s": round(rates["fast"], 1),
        "generic_encoder_events_per_s": round(rates["generic"], 1),
        "pre_encoded_events_per_s": round(rates["pre_encoded"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per load phase")
    p.add_argument("--connections", type=int, default=16, help="batches in flight at full load")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--workers", type=int, default=int(os.environ.get("INGEST_WORKERS", "1")))
    p.add_argument("--raw-events", type=int, default=300_000)
    args = p.parse_args(argv)

    with stack() as (kafka, registry, database):
        prefix = f"bench{uuid.uuid4().hex[:6]}-"
        created, _ = provision_all(
            KafkaSettings(bootstrap_servers=kafka), SchemaRegistrySettings(url=registry), prefix=prefix
        )
        migrate(database)
        customer_id = f"bench-{uuid.uuid4().hex[:8]}"
        with psycopg.connect(database, autocommit=True) as conn:
            store.create_customer(conn, customer_id, "free", name="bench")
            _, key = store.create_key(conn, customer_id, "bench")
        try:
            with ingest_process(kafka, registry, database, prefix, args.workers) as (url, pid):
                common = ["--batch", str(args.batch), "--duration", str(args.duration)]
                cpu0 = cpu_seconds(pid)
                full = loadgen(url, key, "--mode", "closed", "--connections", str(args.connections), *common)
                cpu_full = cpu_seconds(pid) - cpu0
                half_rate = full["requests_per_s"] / 2
                half = loadgen(url, key, "--mode", "open", "--rate", f"{half_rate:.1f}", *common)
            raw = raw_produce(kafka, registry, prefix, customer_id, args.batch, args.raw_events)
        finally:
            admin = admin_client(KafkaSettings(bootstrap_servers=kafka))
            for future in admin.delete_topics(created, operation_timeout=30).values():
                try:
                    future.result()
                except Exception as exc:
                    print(f"(could not delete a bench topic: {exc})")

    events_total = full["events_per_s"] * full["elapsed_s"]
    # The CPU figure includes the generator's 2 s warm-up: count its events too (approximately).
    warmup_events = full["events_per_s"] * 2.0
    cpu_us = cpu_full / max(1.0, events_total + warmup_events) * 1e6
    ratio = full["events_per_s"] / raw["events_per_s"] if raw["events_per_s"] else float("nan")
    print()
    print(f"ingest benchmark: batches of {args.batch}, {args.workers} worker(s), {os.cpu_count()} CPUs")
    print(
        f"  full load ({args.connections} in flight): {full['events_per_s']:>10,.0f} events/s   "
        f"ack latency p50 {full['latency_ms']['p50']} ms, p99 {full['latency_ms']['p99']} ms   "
        f"answers {full['statuses']}"
    )
    print(
        f"  half load (open loop, {half_rate:.0f} req/s): {half['events_per_s']:>10,.0f} events/s   "
        f"ack latency p50 {half['latency_ms']['p50']} ms, p99 {half['latency_ms']['p99']} ms   "
        f"answers {half['statuses']}"
    )
    print(f"  ingest CPU per event at full load: {cpu_us:.1f} µs")
    print(f"  raw: kernel producer, same events, encode+produce+ack: {raw['events_per_s']:>10,.0f} events/s")
    print(
        f"       (with the kernel's generic Avro encoder: {raw['generic_encoder_events_per_s']:,.0f}/s; "
        f"pre-encoded, produce + ack only: {raw['pre_encoded_events_per_s']:,.0f}/s)"
    )
    print(f"  ratio ingest / raw: {ratio:.2f}")
    print(
        orjson.dumps(
            {
                "full": full,
                "half": half,
                "raw": raw,
                "ratio": round(ratio, 3),
                "ingest_cpu_us_per_event": round(cpu_us, 1),
                "workers": args.workers,
            }
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
