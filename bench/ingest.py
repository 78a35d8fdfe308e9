"""``make bench-ingest``: the ingest service's throughput and acknowledgement latency, and the raw rate of
producing the same Avro events straight to Kafka with the kernel producer, measured in the same run.

Uses the stack named by ``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL``/``DATABASE_URL`` when all are
set, otherwise starts a private one (temporary directory, free ports) and stops it afterwards. Everything
listens on loopback; each phase is bounded in time. Steps:

1. provision a fresh topic prefix, create a tenant and an API key;
2. start ingest as its own process (``python -m services.ingest``), rate limit off;
3. warm up (``--warmup`` seconds of full load, not measured: a private broker's JVM is still compiling);
4. for each of ``--rounds`` rounds:
   a. full load: a load-generator process keeps ``--connections`` batches of 100 in flight;
   b. half load: the generator sends at half that round's full-load rate, open loop;
   c. raw: encode the same events with the registered schema and produce them with the kernel producer
      (idempotent, acks=all), timing until every record is acknowledged;
5. print each round, then the range over the rounds.

On a 2-core machine the half-load tail is set by how long ingest's event loop waits for a CPU when other
processes keep the cores busy (docs/ingest.md). So each phase also reports that wait (from the kernel's
schedstat), the generator's own CPU and send lag, and the CPU the rest of the machine used, so a figure
taken on a busy machine says so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg

from bench.common import ROOT, delete_topics, load_average, machine_busy, service, span, stack, threads
from bench.ingest_loadgen import make_template
from services.devstack.config import free_port
from services.ingest import store
from services.ingest.avro_usage import UsageEventEncoder
from services.ingest.model import Limits, RequestContext, normalise_batch
from services.kernel.db import migrate
from services.kernel.kafka import Producer
from services.kernel.provision import provision_all
from services.kernel.serde import SchemaRegistry, header
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_EVENTS, topic

GOAL_EVENTS_PER_S = 50_000
GOAL_HALF_P99_MS = 50.0


# ------------------------------------------------------------------------------ what the machine did


class Usage:
    """CPU use and run-queue wait of ingest (and the broker, when known) and of the whole machine over a
    phase. The wait reported is that of ingest's most-waiting thread: its event loop."""

    def __init__(self, ingest_pid: int, broker_pid: int | None) -> None:
        self.ingest_pid = ingest_pid
        self.broker_pid = broker_pid

    def __enter__(self) -> Usage:
        self._ingest = threads(self.ingest_pid)
        self._broker = threads(self.broker_pid) if self.broker_pid else {}
        self._machine = machine_busy()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        ingest = threads(self.ingest_pid)
        broker = threads(self.broker_pid) if self.broker_pid else {}
        busy, total = machine_busy()
        cores = os.cpu_count() or 1

        def cpu(now: dict[int, tuple[float, float]], before: dict[int, tuple[float, float]]) -> float:
            return sum(v[0] - before.get(t, (0.0, 0.0))[0] for t, v in now.items())

        waits = [v[1] - self._ingest.get(t, (0.0, 0.0))[1] for t, v in ingest.items()]
        self.wall = wall
        self.ingest_cpu = cpu(ingest, self._ingest)
        self.ingest_wait_ms_per_s = max(waits, default=0.0) / wall * 1000
        self.broker_cpu_cores = cpu(broker, self._broker) / wall if self.broker_pid else None
        self.machine_busy_cores = (busy - self._machine[0]) / max(1e-9, total - self._machine[1]) * cores

    def others_cores(self, generator_cores: float) -> float:
        """CPU the rest of the machine used (the broker too, unless its pid is known)."""
        ours = self.ingest_cpu / self.wall + generator_cores + (self.broker_cpu_cores or 0.0)
        return max(0.0, self.machine_busy_cores - ours)


# ------------------------------------------------------------------------------------- processes


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
    with service("services.ingest", env, port, "ingest") as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


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


def phase(url: str, key: str, pid: int, broker_pid: int | None, *args: str) -> dict[str, Any]:
    """One load-generator run, with what ingest and the rest of the machine did meanwhile."""
    with Usage(pid, broker_pid) as usage:
        result = loadgen(url, key, *args)
    generator_cores = float(result["generator"]["cpu_cores"])
    result["ingest_cpu_s"] = round(usage.ingest_cpu, 2)
    result["ingest_sched_wait_ms_per_s"] = round(usage.ingest_wait_ms_per_s, 1)
    result["others_cpu_cores"] = round(usage.others_cores(generator_cores), 2)
    if usage.broker_cpu_cores is not None:
        result["broker_cpu_cores"] = round(usage.broker_cpu_cores, 2)
    return result


def raw_produce(
    kafka: str, registry_url: str, prefix: str, customer_id: str, batch: int, n_events: int
) -> dict[str, float]:
    """The same events as the load generator's, normalised as ingest would, encoded with the registered
    schema and produced straight to the broker, a batch at a time (``produce_many``, like ingest)."""
    ctx = RequestContext(customer_id, "bench", "raw", time.time_ns() // 1_000_000, "bench", None)
    template = make_template(batch, uuid.uuid4().hex[:10], ctx.received_at_ms - 1000)
    batches: list[list[dict[str, Any]]] = []
    for n in range(n_events // batch):
        body = template.replace(b"REQNUMBR", b"%08x" % n)
        batches.append([r for _, r in normalise_batch(body, ctx, Limits()).records])
    spec = topic(USAGE_EVENTS, prefix)
    assert spec.schema_path is not None
    with SchemaRegistry(SchemaRegistrySettings(url=registry_url)) as registry:
        encoder = registry.encoder(spec.value_subject, spec.schema_path, auto_register=False)
    producer = Producer(KafkaSettings(bootstrap_servers=kafka), client_id="plg-bench-raw", max_block=30.0)
    # Ingest's own encoder for these records (the fastest way to make the same bytes), and the kernel's
    # generic one (what a service producing straight to Kafka uses today).
    fast = UsageEventEncoder(header(encoder.schema_id)).for_request(customer_id, batches[0][0]["ingest"])
    name = spec.name
    total = sum(len(b) for b in batches)
    rates: dict[str, float] = {}
    try:
        producer.produce(name, encoder.encode(batches[0][0]), customer_id)  # connection, metadata warm-up
        producer.flush(30)
        for label, encode in (("fast", fast), ("generic", encoder.encode)):
            started = time.perf_counter()
            for records in batches:
                producer.produce_many(name, [encode(r) for r in records], customer_id)
            left = producer.flush(60)
            rates[label] = total / (time.perf_counter() - started)
            assert left == 0, f"{left} records not acknowledged"
        encoded = [[fast(r) for r in records] for records in batches]
        started = time.perf_counter()
        for values in encoded:
            producer.produce_many(name, values, customer_id)
        producer.flush(60)
        rates["pre_encoded"] = total / (time.perf_counter() - started)
    finally:
        producer.close()
    return {
        "events_per_s": round(rates["fast"], 1),
        "generic_encoder_events_per_s": round(rates["generic"], 1),
        "pre_encoded_events_per_s": round(rates["pre_encoded"], 1),
    }


# ---------------------------------------------------------------------------------------- report


def _round_line(n: int, connections: int, r: dict[str, Any]) -> str:
    full, half, raw = r["full"], r["half"], r["raw"]
    lag = half.get("send_lag_ms", {}).get("p99", float("nan"))
    return (
        f"round {n}: full ({connections} in flight) {full['events_per_s']:,.0f} events/s, "
        f"p50 {full['latency_ms']['p50']} / p99 {full['latency_ms']['p99']} ms | "
        f"half ({r['half_rate']:.0f} req/s) p50 {half['latency_ms']['p50']} / "
        f"p99 {half['latency_ms']['p99']} ms "
        f"(send lag p99 {lag} ms) | raw {raw['events_per_s']:,.0f} events/s\n"
        f"         ingest's event loop waited for a CPU {full['ingest_sched_wait_ms_per_s']:.0f} / "
        f"{half['ingest_sched_wait_ms_per_s']:.0f} ms per s (full / half); other processes used "
        f"{full['others_cpu_cores']:.2f} / {half['others_cpu_cores']:.2f} cores; generator "
        f"{full['generator']['cpu_cores']:.2f} / {half['generator']['cpu_cores']:.2f} cores"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per load phase")
    p.add_argument("--rounds", type=int, default=3, help="full/half/raw rounds; ranges are printed")
    p.add_argument("--warmup", type=float, default=8.0, help="seconds of unmeasured full load first")
    p.add_argument("--connections", type=int, default=16, help="batches in flight at full load")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--workers", type=int, default=int(os.environ.get("INGEST_WORKERS", "1")))
    p.add_argument("--raw-events", type=int, default=300_000)
    args = p.parse_args(argv)

    load_before = load_average()
    rounds: list[dict[str, Any]] = []
    with stack() as s:
        prefix = f"bench{uuid.uuid4().hex[:6]}-"
        kafka_settings = KafkaSettings(bootstrap_servers=s.kafka)
        created, _ = provision_all(kafka_settings, SchemaRegistrySettings(url=s.registry), prefix=prefix)
        migrate(s.database)
        customer_id = f"bench-{uuid.uuid4().hex[:8]}"
        with psycopg.connect(s.database, autocommit=True) as conn:
            store.create_customer(conn, customer_id, "free", name="bench")
            _, key = store.create_key(conn, customer_id, "bench")
        try:
            with ingest_process(s.kafka, s.registry, s.database, prefix, args.workers) as (url, pid):
                common = ["--batch", str(args.batch), "--duration", str(args.duration)]
                closed = ["--mode", "closed", "--connections", str(args.connections)]
                if args.warmup > 0:
                    # The first round ran measurably slower without it (the broker JIT-compiling meanwhile).
                    loadgen(url, key, *closed, "--batch", str(args.batch), "--duration", str(args.warmup))
                for n in range(1, args.rounds + 1):
                    full = phase(url, key, pid, s.broker_pid, *closed, *common)
                    half_rate = full["requests_per_s"] / 2
                    opened = ["--mode", "open", "--rate", f"{half_rate:.1f}"]
                    half = phase(url, key, pid, s.broker_pid, *opened, *common)
                    raw = raw_produce(s.kafka, s.registry, prefix, customer_id, args.batch, args.raw_events)
                    rounds.append({"full": full, "half": half, "half_rate": half_rate, "raw": raw})
                    print(_round_line(n, args.connections, rounds[-1]), flush=True)
        finally:
            delete_topics(kafka_settings, created)

    fulls = [r["full"] for r in rounds]
    halves = [r["half"] for r in rounds]
    raws = [r["raw"] for r in rounds]
    # CPU over each full-load run includes the generator's 2 s warm-up: count its events too (roughly).
    cpu_us = [f["ingest_cpu_s"] / max(1.0, f["events_per_s"] * (f["elapsed_s"] + 2.0)) * 1e6 for f in fulls]
    ratios = [f["events_per_s"] / r["events_per_s"] for f, r in zip(fulls, raws, strict=True)]
    met = sum(
        f["events_per_s"] >= GOAL_EVENTS_PER_S and h["latency_ms"]["p99"] < GOAL_HALF_P99_MS
        for f, h in zip(fulls, halves, strict=True)
    )
    print()
    print(
        f"ingest benchmark: batches of {args.batch}, {args.workers} worker(s), {os.cpu_count()} CPUs, "
        f"{len(rounds)} round(s); load average {load_before} before, {load_average()} after"
    )
    print(f"  full load ({args.connections} in flight): {span([f['events_per_s'] for f in fulls])} events/s")
    print(
        f"     ack latency p50 {span([f['latency_ms']['p50'] for f in fulls], '{:.1f}')} ms, "
        f"p99 {span([f['latency_ms']['p99'] for f in fulls], '{:.1f}')} ms"
    )
    print(
        f"  half load (open loop, half each round's full rate): "
        f"{span([h['events_per_s'] for h in halves])} events/s"
    )
    print(
        f"     ack latency p50 {span([h['latency_ms']['p50'] for h in halves], '{:.1f}')} ms, "
        f"p99 {span([h['latency_ms']['p99'] for h in halves], '{:.1f}')} ms"
    )
    waits = [h["ingest_sched_wait_ms_per_s"] for h in halves]
    others = [h["others_cpu_cores"] for h in halves]
    print(
        f"     ingest's event loop waited for a CPU {span(waits)} ms per s; "
        f"other processes used {span(others, '{:.2f}')} cores"
    )
    print(f"  ingest CPU per event at full load: {span(cpu_us, '{:.1f}')} µs")
    raw_rates = [r["events_per_s"] for r in raws]
    print(f"  raw: kernel producer, same events, encode+produce+ack: {span(raw_rates)} events/s")
    print(
        f"       (with the kernel's generic Avro encoder: "
        f"{span([r['generic_encoder_events_per_s'] for r in raws])}/s; "
        f"pre-encoded, produce + ack only: {span([r['pre_encoded_events_per_s'] for r in raws])}/s)"
    )
    print(f"  ratio ingest / raw: {span(ratios, '{:.2f}')}")
    print(
        f"  goal (≥ {GOAL_EVENTS_PER_S:,} events/s at full load and p99 < {GOAL_HALF_P99_MS:.0f} ms at half "
        f"load) met in {met} of {len(rounds)} round(s)"
    )
    print(orjson.dumps({"rounds": rounds, "workers": args.workers, "goal_met_rounds": met}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
