"""``make bench-pipeline``: the whole pipeline, every stage its own process — ingest (HTTP) →
``usage-events`` → enrichment and the metering aggregator (exactly once) → ``usage-periods`` → the
entitlement API, and ``usage-aggregates`` → the billing reporter → the Stripe emulator.

Uses the stack named by ``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL``/``DATABASE_URL`` (and
``STRIPE_API_BASE``) when set, otherwise starts a private one (Postgres, Kafka, registry, the Stripe
emulator; temporary directory, free ports) and stops it afterwards. Loopback only; every phase is bounded.

Per round (``--rounds``, each on a fresh topic prefix with its own service processes):

1. **sustained**: a load-generator process keeps ``--connections`` batches of 100 metered events in flight
   against ingest for ``--seconds``; the pipeline's rate is the events ingest accepted divided by the time
   from the first batch until enrichment, metering and billing have all committed past the last of them
   (their consumer groups' committed offsets reach the partition ends). The in-run **raw baseline**: this
   process produces the same number of events straight to ``usage-events`` (ingest's encoder, idempotent
   producer) and consumes them back ``read_committed`` — one hop, no service;
2. **latency**: the load generator sends ``--rate`` events/s (open loop) while this process POSTs one probe
   event every 50 ms for a customer of its own and times, from ingest's 202, (a) the probe appearing in
   ``usage-events`` (from its send: the raw hop, the in-run baseline of the latency; ingest answers only after
   the broker's ack, so the record is readable before the 202) and (b) the probe's usage becoming
   visible through ``GET /v1/entitlements/{customer}/api_requests`` — the poller's own requests are the
   entitlement check's latency under that load;
3. the CPU each service used during the latency phase, in cores, to show where a miss comes from.

Then the range and median over the rounds, the load average before and after, and the goals' verdict
on the medians: ack → entitlement visible p99 < 1 s at 10 k events/s, entitlement check p99 < 5 ms under
that load (docs/operations.md#benchmark).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg

from bench.common import (
    ROOT,
    bucket_quantile,
    cpu_seconds,
    delete_topics,
    follow_usage,
    histogram_buckets,
    load_average,
    pct,
    service,
    span,
)
from bench.ingest_loadgen import make_template
from services.devstack.config import free_port
from services.ingest import store
from services.ingest.avro_usage import UsageEventEncoder
from services.ingest.model import Limits, RequestContext, normalise_batch
from services.kernel.db import migrate
from services.kernel.kafka import OFFSET_END, Consumer, Producer, TopicPartition
from services.kernel.provision import provision_all
from services.kernel.serde import SchemaRegistry, header
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_AGGREGATES, USAGE_EVENTS, topic

GOAL_E2E_P99_MS = 1000.0
GOAL_CHECK_P99_MS = 5.0
EVENT = "api_call_made"  # metered (api_requests) and in the tracking plan: every stage does its real work

#: name → (module, env prefix, consumer group or None, input topic)
SERVICES: dict[str, tuple[str, str, str | None, str | None]] = {
    "ingest": ("services.ingest", "INGEST_", None, None),
    "enrichment": ("services.enrichment", "ENRICHMENT_", "enrichment", USAGE_EVENTS),
    "metering-aggregator": (
        "services.metering_aggregator",
        "METERING_",
        "metering-aggregator",
        USAGE_EVENTS,
    ),
    "entitlements": ("services.entitlements", "ENTITLEMENTS_", None, None),
    "billing-reporter": ("services.billing_reporter", "BILLING_", "billing-reporter", USAGE_AGGREGATES),
}


@dataclass(frozen=True)
class Stack:
    kafka: str
    registry: str
    database: str
    stripe: str


@contextmanager
def pipeline_stack() -> Iterator[Stack]:
    """The stack of the environment when its three addresses are set, otherwise a private one with the
    Stripe emulator (billing needs a Stripe that keeps state)."""
    if all(os.environ.get(k) for k in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "DATABASE_URL")):
        print(f"using the stack at Kafka {os.environ['KAFKA_BOOTSTRAP_SERVERS']}")
        yield Stack(
            os.environ["KAFKA_BOOTSTRAP_SERVERS"],
            os.environ["SCHEMA_REGISTRY_URL"],
            os.environ["DATABASE_URL"],
            os.environ.get("STRIPE_API_BASE", "http://127.0.0.1:12120"),
        )
        return
    from services.devstack.config import private_settings
    from services.devstack.stack import KAFKA, POSTGRES, REGISTRY, STRIPE_EMULATOR
    from services.devstack.stack import Stack as DevStack

    root = Path(tempfile.mkdtemp(prefix="plg-bench-"))
    private = DevStack(
        private_settings(root),
        components=(POSTGRES, KAFKA, REGISTRY, STRIPE_EMULATOR),
        provision=False,
        say=lambda _m: None,
    )
    print("starting a private stack (Postgres, Kafka, registry, Stripe emulator) ...")
    print(f"private stack up in {private.up():.1f} s")
    try:
        yield Stack(
            private.kafka_bootstrap, private.registry_url, private.database_url, private.stripe_emulator_url
        )
    finally:
        private.down()
        shutil.rmtree(root, ignore_errors=True)


def loadgen(url: str, key: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.ingest_loadgen",
            "--url",
            url,
            "--key",
            key,
            "--event-name",
            EVENT,
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def loadgen_result(proc: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {err[-2000:]}")
    result: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    return result


def read_hop(bootstrap: str, name: str, marker: str, stop: Any, out: Any) -> None:
    """Child process: when each probe (event id ``<marker><k:06d>``) appears in ``name``: puts {k: time}."""
    reader = Consumer(KafkaSettings(bootstrap_servers=bootstrap), None, client_id="bench-hop-reader")
    reader.assign_all([name], OFFSET_END)
    reader.consume(1, 0.5)  # positioned at the ends before the first probe
    out.put("ready")
    needle = marker.encode()
    arrived: dict[int, float] = {}
    grace_until = None
    while grace_until is None or time.monotonic() < grace_until:
        if grace_until is None and stop.is_set():
            grace_until = time.monotonic() + 5.0
        for record in reader.consume(10_000, 0.05):
            value = record.value() or b""
            at = value.find(needle)
            if at >= 0:
                k = int(value[at + len(needle) : at + len(needle) + 6])
                arrived.setdefault(k, time.time())
    reader.close()
    out.put(arrived)


class Round:
    """One round: a fresh prefix, its customers and keys, and every service started for it."""

    def __init__(self, args: argparse.Namespace, stack: Stack, n: int) -> None:
        self.args, self.stack, self.n = args, stack, n
        self.kafka = KafkaSettings(bootstrap_servers=stack.kafka)
        self.prefix = f"benchp{uuid.uuid4().hex[:6]}-"
        self.created, _ = provision_all(
            self.kafka, SchemaRegistrySettings(url=stack.registry), prefix=self.prefix
        )
        self.load_customer = f"{self.prefix}load"
        self.probe_customer = f"{self.prefix}probe"
        with psycopg.connect(stack.database, autocommit=True) as conn:
            for c in (self.load_customer, self.probe_customer):
                store.create_customer(conn, c, "pro")
            self.load_key = store.create_key(conn, self.load_customer, "bench")[1]
            self.probe_key = store.create_key(conn, self.probe_customer, "bench")[1]
        self.ports = {name: free_port() for name in SERVICES}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, name: str) -> dict[str, str]:
        prefix = SERVICES[name][1]
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.stack.kafka,
            "SCHEMA_REGISTRY_URL": self.stack.registry,
            "DATABASE_URL": self.stack.database,
            "STRIPE_API_BASE": self.stack.stripe,
            "PLG_TOPIC_PREFIX": self.prefix,
            "PLG_LOG_LEVEL": "WARNING",
            "PLG_ENVIRONMENT": "local",
            f"{prefix}HOST": "127.0.0.1",
            f"{prefix}PORT": str(self.ports[name]),
            f"{prefix}INSTANCE_ID": f"{name}-bench",
            # Ingest's per-customer limit would cap the load (the bench measures the pipeline, not it).
            "INGEST_RATE_LIMIT_EVENTS_PER_SECOND": "0",
        }

    @contextmanager
    def services(self) -> Iterator[None]:
        with ExitStack() as stack:
            for name, (module, *_rest) in SERVICES.items():
                self.procs[name] = stack.enter_context(
                    service(module, self.env(name), self.ports[name], f"{name}-r{self.n}")
                )
            yield

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingest']}"

    # -- sustained ------------------------------------------------------------------------------------

    def caught_up(self, deadline: float) -> dict[str, float]:
        """When each consumer service's committed offsets reached its input's end (monotonic seconds)."""
        probes = {
            name: (Consumer(self.kafka, f"{self.prefix}{group}"), topic(source, self.prefix))
            for name, (_m, _p, group, source) in SERVICES.items()
            if group is not None and source is not None
        }
        done: dict[str, float] = {}
        try:
            while len(done) < len(probes) and time.monotonic() < deadline:
                for name, (probe, spec) in probes.items():
                    if name in done:
                        continue
                    parts = [TopicPartition(spec.name, p) for p in range(spec.partitions)]
                    ends = probe.end_offsets(parts)
                    committed = {(tp.topic, tp.partition): tp.offset for tp in probe.committed(parts)}
                    if all(committed.get(k, -1) >= end or end == 0 for k, end in ends.items()):
                        done[name] = time.monotonic()
                time.sleep(0.1)
        finally:
            for probe, _spec in probes.values():
                probe.close()
        return done

    def sustained(self) -> dict[str, Any]:
        started = time.monotonic()
        proc = loadgen(
            self.ingest_url,
            self.load_key,
            "--mode",
            "closed",
            "--connections",
            str(self.args.connections),
            "--duration",
            str(self.args.seconds),
            "--warmup",
            "0",
        )
        result = loadgen_result(proc)
        load_done = time.monotonic()
        accepted = int(result["statuses"].get("202", 0)) * 100
        done = self.caught_up(load_done + 300)
        missing = [name for name in SERVICES if SERVICES[name][2] and name not in done]
        last = max(done.values()) if done else load_done
        # billing reads usage-aggregates: its catch-up is the end of the chain, but its records are windows
        # (not events); the rate is of events through ingest → enrichment and metering.
        events_done = max(done.get("enrichment", last), done.get("metering-aggregator", last))
        return {
            "accepted": accepted,
            "ingest_events_per_s": result["events_per_s"],
            "events_per_s": accepted / (events_done - started),
            "behind_s": {name: round(at - load_done, 2) for name, at in done.items()},
            "not_caught_up": missing,
        }

    def raw(self, total: int) -> float:
        """One hop with no service: the same events produced straight to usage-events and consumed back."""
        ctx = RequestContext(self.load_customer, "bench", "raw", time.time_ns() // 1_000_000, "bench", None)
        template = make_template(100, uuid.uuid4().hex[:10], ctx.received_at_ms - 1000, EVENT)
        spec = topic(USAGE_EVENTS, self.prefix)
        assert spec.schema_path is not None
        with SchemaRegistry(SchemaRegistrySettings(url=self.stack.registry)) as registry:
            schema_id = registry.encoder(spec.value_subject, spec.schema_path, auto_register=False).schema_id
        batches = []
        for n in range(max(1, total // 100)):
            body = template.replace(b"REQNUMBR", b"%08x" % n)
            batches.append([r for _, r in normalise_batch(body, ctx, Limits()).records])
        encode = UsageEventEncoder(header(schema_id)).for_request(self.load_customer, batches[0][0]["ingest"])
        raw_topic = f"{spec.name}"
        reader = Consumer(self.kafka, None, client_id="bench-raw-reader")
        parts = reader.assign_all([raw_topic], OFFSET_END)
        reader.consume(1, 0.5)  # join the partitions at their ends before the first record
        producer = Producer(self.kafka, client_id="bench-raw", max_block=30.0)
        count = sum(len(b) for b in batches)
        started = time.monotonic()
        try:
            for records in batches:
                producer.produce_many(raw_topic, [encode(r) for r in records], self.load_customer)
            producer.flush(120)
            seen = 0
            deadline = time.monotonic() + 300
            while seen < count and time.monotonic() < deadline:
                seen += len(reader.consume(10_000, 0.5))
        finally:
            producer.close()
            reader.close()
        del parts
        return count / (time.monotonic() - started)

    # -- latency --------------------------------------------------------------------------------------

    def latency(self) -> dict[str, Any]:
        run = uuid.uuid4().hex[:8]
        sent: list[float] = []  # wall time probe k was sent (index k)
        acks: list[float] = []  # wall time of probe k's 202
        visible: list[float] = []  # ack → usage visible through the entitlement API
        checks: list[float] = []
        raw_checks: list[float] = []
        stop = threading.Event()
        # The raw hop is read by a process of its own: decoding 10 k records/s in this one would hold the GIL
        # against the poller and show up as check latency that the API did not cause.
        context = multiprocessing.get_context("spawn")
        hop_stop, hop_out = context.Event(), context.Queue()
        hop_reader = context.Process(
            target=read_hop,
            args=(
                self.stack.kafka,
                topic(USAGE_EVENTS, self.prefix).name,
                f"probe-{run}-",
                hop_stop,
                hop_out,
            ),
        )
        hop_reader.start()
        assert hop_out.get(timeout=60) == "ready"

        cpu0 = {name: cpu_seconds(p.pid) for name, p in self.procs.items()}
        stages0 = self.stage_histograms()
        requests_per_s = self.args.rate / 100
        proc = loadgen(
            self.ingest_url,
            self.load_key,
            "--mode",
            "open",
            "--rate",
            str(requests_per_s),
            "--duration",
            str(self.args.seconds),
            "--warmup",
            "2",
        )
        time.sleep(2)  # the generator's warm-up
        poller = threading.Thread(
            target=follow_usage,
            args=(
                self.ports["entitlements"],
                f"/v1/entitlements/{self.probe_customer}/api_requests",
                {"Authorization": f"Bearer {self.probe_key}"},
                acks,
                stop,
                visible,
                checks,
                raw_checks,
            ),
            daemon=True,
        )
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["ingest"], timeout=10)
        headers = {"Authorization": f"Bearer {self.probe_key}", "Content-Type": "application/json"}
        started = time.monotonic()
        wall0 = time.monotonic()
        first = True
        while time.monotonic() - started < self.args.seconds:
            k = len(acks)
            event = {
                "event_id": f"probe-{run}-{k:06d}",
                "name": EVENT,
                "timestamp": int(time.time() * 1000),
                "properties": {"path": "/v1/probe", "status_code": 200},
            }
            sent.append(time.time())
            conn.request("POST", "/v1/batch", orjson.dumps({"batch": [event]}), headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 202, response.status
            acks.append(time.time())
            if first:
                poller.start()
                first = False
            time.sleep(0.05)
        result = loadgen_result(proc)
        wall = time.monotonic() - wall0
        cpu = {name: (cpu_seconds(p.pid) - cpu0[name]) / wall for name, p in self.procs.items()}
        stop.set()
        poller.join(60)
        stages1 = self.stage_histograms()
        hop_stop.set()
        arrived: dict[int, float] = hop_out.get(timeout=60)
        hop_reader.join(30)
        # From the send: the record is readable before ingest's 202 (sent after the broker's ack) is back.
        hop = [arrived[k] - sent[k] for k in range(len(acks)) if k in arrived]
        return {
            "rate": result["events_per_s"],
            "probes": len(acks),
            "hop": hop,
            "ack": [a - t for a, t in zip(acks, sent, strict=True)],
            "visible": visible,
            "checks": checks,
            "raw_checks": raw_checks,
            "cpu_cores": cpu,
            "stages": {
                what: {
                    "p50": bucket_quantile(stages0[what], stages1[what], 0.5),
                    "p99": bucket_quantile(stages0[what], stages1[what], 0.99),
                    "n": stages1[what].get(float("inf"), 0.0) - stages0[what].get(float("inf"), 0.0),
                }
                for what in stages1
            },
        }

    def stage_histograms(self) -> dict[str, dict[float, float]]:
        """Where "ack → entitlement visible" goes, from the services' own histograms (bucket counts now):
        ingest's receipt → the aggregator's commit (``plg_stage_delay_seconds``, per committed batch: its
        oldest event), the aggregator's batch itself (``plg_stream_batch_seconds``: process + commit), and
        the aggregate's commit → visible in the entitlements view (``plg_entitlements_view_lag_seconds``)."""
        aggregator, view = self.ports["metering-aggregator"], self.ports["entitlements"]
        name = "metering-aggregator"
        return {
            "received_to_metered": histogram_buckets(aggregator, "plg_stage_delay_seconds", name),
            "aggregator_batch": histogram_buckets(aggregator, "plg_stream_batch_seconds", name),
            "view_lag": histogram_buckets(view, "plg_entitlements_view_lag_seconds"),
        }

    def close(self) -> None:
        delete_topics(self.kafka, self.created)


#: The stages of "ack → entitlement visible" the services' own histograms measure (Round.stage_histograms).
STAGE_LABELS = {
    "received_to_metered": "stage: received → metered",
    "aggregator_batch": "stage: aggregator batch",
    "view_lag": "stage: metered → visible in view",
}


def _stage(figures: dict[str, float]) -> str:
    return f"{figures['p50'] * 1000:.0f}/{figures['p99'] * 1000:.0f} ms ({figures['n']:.0f} observed)"


def ms(values: list[float], p: float) -> float:
    return pct(values, p) * 1000 if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0, help="of load per phase")
    p.add_argument("--connections", type=int, default=16, help="batches in flight in the sustained phase")
    p.add_argument("--rate", type=float, default=10_000, help="events/s of the latency phase")
    args = p.parse_args(argv)
    load_before = load_average()
    rounds: list[dict[str, Any]] = []
    with pipeline_stack() as stack:
        migrate(stack.database)
        for n in range(1, args.rounds + 1):
            r = Round(args, stack, n)
            try:
                with r.services():
                    sustained = r.sustained()
                    latency = r.latency()
                raw = r.raw(sustained["accepted"])
            finally:
                r.close()
            out = {**sustained, **latency, "raw": raw, "load": load_average()}
            rounds.append(out)
            print(
                f"round {n}: pipeline {out['events_per_s']:,.0f} events/s ({out['accepted']:,} events; "
                f"ingest alone {out['ingest_events_per_s']:,.0f}/s; behind after the load "
                f"{out['behind_s']}) | raw hop {raw:,.0f}/s | at {out['rate']:,.0f}/s: sent → usage-events "
                f"p99 {ms(out['hop'], 99):.0f} ms, ingest ack p99 {ms(out['ack'], 99):.0f} ms, "
                "ack → entitlement visible p50/p99/max "
                f"{ms(out['visible'], 50):.0f}/{ms(out['visible'], 99):.0f}/{ms(out['visible'], 100):.0f} ms "
                f"({len(out['visible'])}/{out['probes']} probes), check p99 {ms(out['checks'], 99):.2f} ms "
                f"(raw /livez p99 {ms(out['raw_checks'], 99):.2f} ms) | "
                f"CPU cores {', '.join(f'{k} {v:.2f}' for k, v in out['cpu_cores'].items())} | "
                f"load {out['load']}"
            )
            stages = out["stages"]
            print(
                "  by stage (bucket upper bounds, p50/p99): ingest received → aggregator committed "
                f"{_stage(stages['received_to_metered'])}; aggregator batch (process + commit) "
                f"{_stage(stages['aggregator_batch'])}; aggregate committed → visible in the entitlements "
                f"view {_stage(stages['view_lag'])}"
            )
            if out["not_caught_up"]:
                print(f"  WARNING: not caught up within 300 s: {out['not_caught_up']}")
    print()
    print("== whole-pipeline benchmark ==")
    print(f"{args.rounds} round(s); load average {load_before} before, {load_average()} after")
    print(f"  pipeline (ingest → enriched + metered), events/s  {span([r['events_per_s'] for r in rounds])}")
    print(f"  raw hop (produce + consume, no service), events/s {span([r['raw'] for r in rounds])}")
    ratios = [r["events_per_s"] / r["raw"] for r in rounds]
    print(f"  pipeline / raw                                    {span(ratios, '{:.0%}')}")
    e2e = [ms(r["visible"], 99) for r in rounds]
    checks = [ms(r["checks"], 99) for r in rounds]
    print(f"  latency phase rate, events/s                      {span([r['rate'] for r in rounds])}")
    print(f"  sent → in usage-events p99 (raw hop), ms          {span([ms(r['hop'], 99) for r in rounds])}")
    print(
        f"  ack → entitlement visible p50, ms                 {span([ms(r['visible'], 50) for r in rounds])}"
    )
    e2e_met = statistics.median(e2e) < GOAL_E2E_P99_MS
    print(
        f"  ack → entitlement visible p99, ms                 {span(e2e)}  "
        f"(goal < {GOAL_E2E_P99_MS:.0f} ms on the median: {'met' if e2e_met else 'NOT met'})"
    )
    for what, label in STAGE_LABELS.items():
        p99s = [r["stages"][what]["p99"] * 1000 for r in rounds]
        print(f"  {label + ' p99 (≤), ms':<50}{span(p99s)}")
    check_met = statistics.median(checks) < GOAL_CHECK_P99_MS
    print(
        f"  entitlement check p99 under that load, ms         {span(checks, '{:.2f}')}  "
        f"(goal < {GOAL_CHECK_P99_MS:.0f} ms on the median: {'met' if check_met else 'NOT met'})"
    )
    raw_checks = [ms(r["raw_checks"], 99) for r in rounds]
    print(
        f"  raw /livez p99 under that load (same process), ms {span(raw_checks, '{:.2f}')}  "
        f"(check / raw: {span([c / r for c, r in zip(checks, raw_checks, strict=True)], '{:.2f}')})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
