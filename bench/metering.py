"""``make bench-metering``: the metering aggregator's throughput with exactly-once on, against the raw
rate of consuming and decoding the same events in the same run; end-to-end latency from an event being
produced to its usage being visible through the entitlement API at 10k events/s; entitlement check p50/p99.

Uses the stack named by ``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL``/``DATABASE_URL`` when all are
set, otherwise starts a private one (temporary directory, free ports) and stops it afterwards. Loopback
only; each phase is bounded. Steps:

1. provision a fresh topic prefix; create ``--customers`` customers (pro plan, mixed anchor days);
2. preload ``--events`` usage events (10 % of them duplicates) into ``usage-events``;
3. raw: consume them ``read_committed`` and decode each with the kernel decoder (this process);
4. exactly-once: start ``python -m services.metering_aggregator`` and time its committed offsets from the
   first move to the end (events/s, and its CPU seconds);
5. end to end: start the entitlement API process; produce 10k events/s for ``--e2e-seconds`` while a probe
   event is produced every 50 ms and a poller asks the API until the probe's usage is visible;
6. check latency: sequential ``GET /v1/entitlements/...`` over one keep-alive connection, idle.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg

from services.devstack.config import free_port, private_settings
from services.ingest import store
from services.kernel.db import migrate
from services.kernel.kafka import Consumer, Producer, TopicPartition
from services.kernel.provision import admin_client, provision_all
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_EVENTS, topic

ROOT = Path(__file__).resolve().parents[1]
STACK_ENV = ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "DATABASE_URL")


@contextmanager
def stack() -> Iterator[tuple[str, str, str]]:
    if all(os.environ.get(k) for k in STACK_ENV):
        print(f"using the stack at Kafka {os.environ['KAFKA_BOOTSTRAP_SERVERS']}")
        yield tuple(os.environ[k] for k in STACK_ENV)  # type: ignore[misc]
        return
    from services.devstack.stack import KAFKA, POSTGRES, REGISTRY, Stack

    root = Path(tempfile.mkdtemp(prefix="plg-bench-"))
    private = Stack(
        private_settings(root), components=(POSTGRES, KAFKA, REGISTRY), provision=False, say=lambda _m: None
    )
    print("starting a private stack (Postgres, Kafka, registry) ...")
    print(f"private stack up in {private.up():.1f} s")
    try:
        yield private.kafka_bootstrap, private.registry_url, private.database_url
    finally:
        private.down()
        shutil.rmtree(root, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@contextmanager
def service(module: str, env: dict[str, str], ready_url: str, name: str) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.NamedTemporaryFile(prefix=f"plg-bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", module], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; log: {log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", int(ready_url.rsplit(":", 1)[1]), timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after 90 s; log: {log.name}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


def generate_load(
    bootstrap: str, registry: str, prefix: str, customers: list[str], rate: int, seconds: float, result: Any
) -> None:
    """Child process: produce ``rate`` usage events per second for ``seconds``; puts the achieved rate."""
    spec = topic(USAGE_EVENTS, prefix)
    assert spec.schema_path is not None
    encoder = SchemaRegistry(SchemaRegistrySettings(url=registry)).encoder(
        spec.value_subject, spec.schema_path, auto_register=False
    )
    producer = Producer(KafkaSettings(bootstrap_servers=bootstrap), client_id="bench-load")
    rng = random.Random(3)
    tick = 0.01
    per_tick = int(rate * tick)
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        t = time.monotonic()
        now_ms = int(time.time() * 1000)
        for _ in range(per_tick):
            c = customers[rng.randrange(len(customers))]
            producer.produce(spec.name, encoder.encode(Bench.event(c, now_ms)), c)
        sent += per_tick
        sleep = tick - (time.monotonic() - t)
        if sleep > 0:
            time.sleep(sleep)
    result.put(sent / (time.monotonic() - started))
    producer.close()


class Bench:
    def __init__(self, args: argparse.Namespace, kafka: str, registry: str, database: str) -> None:
        self.args = args
        self.kafka = KafkaSettings(bootstrap_servers=kafka)
        self.registry = SchemaRegistrySettings(url=registry)
        self.database = database
        self.prefix = f"bench{uuid.uuid4().hex[:6]}-"
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka,
            "SCHEMA_REGISTRY_URL": registry,
            "DATABASE_URL": database,
            "PLG_TOPIC_PREFIX": self.prefix,
            "PLG_LOG_LEVEL": "WARNING",
        }
        self.topic = topic(USAGE_EVENTS, self.prefix).name
        self.results: dict[str, Any] = {}

    # -- setup -------------------------------------------------------------------------------------------

    def setup(self) -> None:
        created, _ = provision_all(self.kafka, self.registry, prefix=self.prefix)
        self.created = created
        migrate(self.database)
        rng = random.Random(1)
        self.customers = [f"bench-{self.prefix}{i}" for i in range(self.args.customers)]
        with psycopg.connect(self.database, autocommit=True) as conn:
            for c in self.customers:
                store.create_customer(conn, c, "pro", billing_anchor_day=rng.randint(1, 31))
            self.probe = f"bench-{self.prefix}probe"
            store.create_customer(conn, self.probe, "pro")
        sr = SchemaRegistry(self.registry)
        spec = topic(USAGE_EVENTS, self.prefix)
        assert spec.schema_path is not None
        self.encoder = sr.encoder(spec.value_subject, spec.schema_path, auto_register=False)
        self.decoder = sr.decoder(reader_schema=spec.schema_path)
        self.producer = Producer(self.kafka, client_id="bench-metering")

    def teardown(self) -> None:
        self.producer.close()
        if self.created:
            admin = admin_client(self.kafka)
            for future in admin.delete_topics(self.created, operation_timeout=30).values():
                try:
                    future.result()
                except Exception as exc:
                    print(f"could not delete a bench topic: {exc}")

    @staticmethod
    def event(customer: str, now: int, name: str = "api_call_made") -> dict[str, Any]:
        return {
            "event_id": str(uuid.uuid4()),
            "customer_id": customer,
            "name": name,
            "timestamp": now,
            "properties": {"path": "/v1/things", "status": 200},
            "user_id": f"u{random.randrange(50)}",
            "anonymous_id": None,
            "session_id": None,
            "ingest": None,
        }

    def preload(self) -> int:
        n = self.args.events
        rng = random.Random(2)
        started = time.monotonic()
        now = int(time.time() * 1000)
        produce, encode = self.producer.produce, self.encoder.encode
        recent: list[tuple[bytes, str]] = []
        for i in range(n):
            if recent and rng.random() < 0.10:
                value, key = recent[rng.randrange(len(recent))]  # a duplicate of a recent event
            else:
                customer = self.customers[rng.randrange(len(self.customers))]
                # Event times spread over the minutes before now (about 1000 per second): all within the
                # grace, none ahead of their arrival (a +i/1000 s spread put 40 % of 500 000 events more
                # than 5 minutes in the future, which the aggregator dead-letters as future_event).
                value, key = encode(self.event(customer, now - (n - i) // 1000)), customer
                if len(recent) < 10_000:
                    recent.append((value, key))
                else:
                    recent[rng.randrange(10_000)] = (value, key)
            produce(self.topic, value, key)
        assert self.producer.flush(120) == 0
        print(f"preloaded {n} events in {time.monotonic() - started:.1f} s")
        return n

    # -- phases ------------------------------------------------------------------------------------------

    def raw_rate(self, total: int) -> float:
        reader = Consumer(self.kafka, f"{self.prefix}raw", client_id="bench-raw")
        reader.subscribe([self.topic])
        decode = self.decoder.decode
        seen = 0
        started = None
        deadline = time.monotonic() + 300
        while seen < total and time.monotonic() < deadline:
            records = reader.consume(10_000, 1.0)
            if records and started is None:
                started = time.monotonic()
            for r in records:
                decode(r.value())  # type: ignore[arg-type]
            seen += len(records)
        elapsed = time.monotonic() - (started or time.monotonic())
        reader.close()
        rate = seen / elapsed
        print(f"raw consume+decode: {seen} events in {elapsed:.2f} s = {rate:,.0f} events/s")
        return rate

    def committed(self, probe: Consumer, partitions: list[TopicPartition]) -> int:
        return sum(max(0, tp.offset) for tp in probe.committed(partitions, timeout=10))

    def eos_rate(self, total: int, proc: subprocess.Popen[bytes]) -> float:
        group = f"{self.prefix}metering-aggregator"
        probe = Consumer(self.kafka, group, client_id="bench-probe")
        meta = Consumer(self.kafka, None)
        parts = [TopicPartition(tp.topic, tp.partition) for tp in meta.assign_all([self.topic])]
        end = sum(meta.end_offsets(parts).values())
        meta.close()
        deadline = time.monotonic() + 600
        first = None
        while time.monotonic() < deadline:
            done = self.committed(probe, parts)
            now = time.monotonic()
            if first is None and done > 0:
                first = (now, done, cpu_seconds(proc.pid))
            if done >= end:
                break
            time.sleep(0.05)
        probe.close()
        assert first is not None
        elapsed = time.monotonic() - first[0]
        counted = end - first[1]
        cpu = cpu_seconds(proc.pid) - first[2]
        rate = counted / elapsed
        self.results["eos_cpu_seconds"] = cpu
        print(
            f"exactly-once aggregator: {counted} events in {elapsed:.2f} s = {rate:,.0f} events/s "
            f"({cpu:.1f} CPU s in the aggregator process, {counted / max(cpu, 1e-9):,.0f} events per CPU s)"
        )
        return rate

    def end_to_end(self, api_port: int) -> tuple[list[float], list[float]]:
        """The load comes from another process, so the probe's timing never waits for the load's GIL."""
        seconds, rate = self.args.e2e_seconds, self.args.e2e_rate
        stop = threading.Event()
        probes: list[float] = []  # produce time of probe k (1-based: usage k means probe k visible)
        latencies: list[float] = []
        check_latencies: list[float] = []

        def poll() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=5)
            seen = 0
            path = f"/v1/entitlements/{self.probe}/api_requests"
            while not stop.is_set() or seen < len(probes):
                t0 = time.perf_counter()
                conn.request("GET", path)
                body = conn.getresponse().read()
                t1 = time.perf_counter()
                check_latencies.append(t1 - t0)
                usage = int(orjson.loads(body)["usage"])
                now = time.time()
                while seen < usage and seen < len(probes):
                    latencies.append(now - probes[seen])
                    seen += 1
                if stop.is_set() and time.time() - probes[-1] > 10:
                    break
                time.sleep(0.001)

        context = multiprocessing.get_context("spawn")
        result = context.Queue()
        load = context.Process(
            target=generate_load,
            args=(
                self.kafka.bootstrap_servers,
                self.registry.url,
                self.prefix,
                self.customers,
                rate,
                seconds,
                result,
            ),
        )
        load.start()
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            now_ms = int(time.time() * 1000)
            value = self.encoder.encode(self.event(self.probe, now_ms))
            probes.append(time.time())
            self.producer.produce(self.topic, value, self.probe)
            time.sleep(0.05)
        achieved = result.get(timeout=120)
        load.join(60)
        self.producer.flush(30)
        stop.set()
        poller.join(60)
        print(
            f"end to end at {achieved:,.0f} events/s for {seconds} s: {len(latencies)}/{len(probes)} probes "
            f"visible; p50 {pct(latencies, 50) * 1000:.0f} ms, p99 {pct(latencies, 99) * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms"
        )
        self.results["e2e_rate"] = achieved
        return latencies, check_latencies

    @staticmethod
    def counter_values(port: int, name: str) -> dict[str, float]:
        """A labelled Prometheus counter on a service's /metrics, by its (only) label value."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith(name + "{"):
                label = line[line.index('"') + 1 : line.rindex('"')]
                out[label] = float(line.split()[-1])
        return out

    @staticmethod
    def histogram_mean(port: int, name: str) -> tuple[float, float]:
        """(count, mean) of a Prometheus histogram on a service's /metrics."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        values = {}
        for line in text.splitlines():
            for suffix in ("_sum", "_count"):
                # Labelled or not (the runtime's histograms carry a service label).
                if line.startswith((name + suffix + " ", name + suffix + "{")):
                    values[suffix] = float(line.split()[1])
        count = values.get("_count", 0.0)
        return count, values.get("_sum", 0.0) / count if count else 0.0

    def check_latency(self, api_port: int, n: int) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=5)
        rng = random.Random(4)
        features = ["api_requests", "compute_seconds", "sso", "audit_log"]
        latencies = []
        for i in range(n + 500):
            customer = self.customers[rng.randrange(len(self.customers))]
            path = f"/v1/entitlements/{customer}/{rng.choice(features)}"
            t0 = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            t1 = time.perf_counter()
            assert response.status == 200, response.status
            if i >= 500:  # warm-up
                latencies.append(t1 - t0)
        return latencies

    def run(self) -> None:
        self.setup()
        try:
            total = self.preload()
            raw = self.raw_rate(total)
            agg_port, api_port = free_port(), free_port()
            env = {**self.env, "METERING_PORT": str(agg_port), "METERING_INSTANCE_ID": "bench-1"}
            with service(
                "services.metering_aggregator", env, f"http://127.0.0.1:{agg_port}", "aggregator"
            ) as proc:
                eos = self.eos_rate(total, proc)
                outcomes = self.counter_values(agg_port, "plg_metering_events_total")
                print(f"  aggregator outcomes: {outcomes}")
                if set(outcomes) - {"counted", "duplicate"}:
                    print("  WARNING: events were dead-lettered or skipped: the rate is not of counting")
                api_env = {**self.env, "ENTITLEMENTS_PORT": str(api_port)}
                with service(
                    "services.entitlements",
                    api_env,
                    f"http://127.0.0.1:{api_port}",
                    "entitlements",
                ):
                    batches0 = self.histogram_mean(agg_port, "plg_stream_batch_seconds")
                    cpu0 = cpu_seconds(proc.pid)
                    view0 = self.histogram_mean(api_port, "plg_entitlements_view_lag_seconds")
                    e2e, under_load = self.end_to_end(api_port)
                    cpu = cpu_seconds(proc.pid) - cpu0
                    batches1 = self.histogram_mean(agg_port, "plg_stream_batch_seconds")
                    n = batches1[0] - batches0[0]
                    mean = (batches1[0] * batches1[1] - batches0[0] * batches0[1]) / max(n, 1)
                    view1 = self.histogram_mean(api_port, "plg_entitlements_view_lag_seconds")
                    seen = view1[0] - view0[0]
                    lag = (view1[0] * view1[1] - view0[0] * view0[1]) / max(seen, 1)
                    print(
                        f"  during it: aggregator {cpu / self.args.e2e_seconds:.0%} of a core, {n:.0f} "
                        f"transactions, {mean * 1000:.0f} ms mean per batch (process + commit); batch start "
                        f"to visible in the view, mean {lag * 1000:.0f} ms"
                    )
                    idle = self.check_latency(api_port, self.args.checks)
        finally:
            self.teardown()
        ms = 1000.0
        print()
        print("== metering benchmark ==")
        print(
            f"events preloaded                       {total:>10,}  "
            f"(10 % duplicates, {self.args.customers} customers)"
        )
        print(f"raw consume + decode                   {raw:>10,.0f} events/s")
        print(f"aggregator, exactly-once               {eos:>10,.0f} events/s  ({eos / raw:.0%} of raw)")
        print(
            f"end-to-end p50 / p99 / max at {self.results['e2e_rate']:,.0f}/s  "
            f"{pct(e2e, 50) * ms:>6.0f} / {pct(e2e, 99) * ms:.0f} / {max(e2e) * ms:.0f} ms  "
            f"({len(e2e)} probes)"
        )
        print(
            f"entitlement check p50 / p99, idle      {pct(idle, 50) * ms:>6.2f} / "
            f"{pct(idle, 99) * ms:.2f} ms  ({len(idle)} requests, mean {statistics.mean(idle) * ms:.2f} ms)"
        )
        print(
            f"entitlement check p50 / p99, 10k ev/s  {pct(under_load, 50) * ms:>6.2f} / "
            f"{pct(under_load, 99) * ms:.2f} ms  ({len(under_load)} requests)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--e2e-rate", type=int, default=10_000)
    parser.add_argument("--e2e-seconds", type=int, default=20)
    parser.add_argument("--checks", type=int, default=20_000)
    args = parser.parse_args()
    with stack() as (kafka, registry, database):
        Bench(args, kafka, registry, database).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
