"""`make chaos`: the whole pipeline under failure, bounded (about a minute of traffic) and loopback only.

Usage events go through ingest's HTTP API (with API keys made by `plg keys create`) and straight to
Kafka → enrichment → metering → billing reporter → the Stripe emulator, each service a real process.
Meanwhile a random service (ingest too) is SIGKILLed and restarted every few seconds, the broker is
restarted once, and Stripe fails 20 % of calls (429, 500, 503, timeouts after recording). At the end,
printed and asserted: every unique event sent is enriched (or dead-lettered with a reason), metered
exactly once (usage-aggregates == sent), Stripe's sums == the ledger == the aggregates with no identifier
accepted twice, and Kafka's own consumer-group tool (ConsumerGroupCommand from the broker's jars) agrees
with our lag metrics that every group is caught up. Ingest's client retries a request that failed (a
SIGKILL, a 503 while the broker restarts) with the same event ids, as the SDK does: a request cut after
Kafka took it is written twice, and the event id makes it count once downstream.

Not collected by `make test` (the file name is not test_*.py); `make chaos` runs it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from services.devstack.config import StackSettings, free_port
from services.kernel.db import migrate
from services.kernel.provision import provision_all
from services.kernel.topics import USAGE_EVENTS, USAGE_EVENTS_DLQ, USAGE_EVENTS_ENRICHED
from tests.integration.metering.harness import Metering, now_ms, usage_event, wait_for
from tests.processes import Proc
from tests.stripe_double import StripeDouble

DURATION = float(os.environ.get("PLG_CHAOS_SECONDS", "45"))
#: Service → (module, settings prefix, consumer group or None). Every one is SIGKILLed at random.
SERVICES: dict[str, tuple[str, str, str | None]] = {
    "ingest": ("services.ingest", "INGEST_", None),
    "enrichment": ("services.enrichment", "ENRICHMENT_", "enrichment"),
    "metering-aggregator": ("services.metering_aggregator", "METERING_", "metering-aggregator"),
    "billing-reporter": ("services.billing_reporter", "BILLING_", "billing-reporter"),
}
CONSUMERS = {name: group for name, (_, _, group) in SERVICES.items() if group is not None}
#: The share of batches sent over ingest's HTTP API; the rest go straight to Kafka.
INGEST_SHARE = 0.5


def _create_key(database_url: str, customer: str) -> str:
    """A secret API key for ``customer`` made the way an operator makes one: ``plg keys create``."""
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "--json", "keys", "create", customer],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return str(orjson.loads(result.stdout.strip().splitlines()[-1])["key"])


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _metric(port: int, name: str) -> list[float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")]


def _kafka_group_lag(bootstrap: str, group: str) -> int:
    """Total lag of ``group`` as Kafka's own tool reports it (ConsumerGroupCommand --describe)."""
    libs = StackSettings().kafka_libs
    result = subprocess.run(
        [
            "java",
            "-cp",
            f"{libs}/*",
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [ln.split() for ln in result.stdout.splitlines() if ln.strip()]
    header = next(row for row in lines if "LAG" in row)
    lag_at = header.index("LAG")
    total = 0
    for row in lines[lines.index(header) + 1 :]:
        if len(row) > lag_at and row[0] == group:
            total += 0 if row[lag_at] == "-" else int(row[lag_at])
    return total


@pytest.mark.timeout(900)  # start-up, the chaos, and the settling checks: well past the suite's 300 s
def test_whole_pipeline_survives_sigkills_a_broker_restart_and_stripe_failures(
    private_kafka, registry_settings, database_settings, tmp_path
) -> None:
    rng = random.Random(int(os.environ.get("PLG_CHAOS_SEED", "16")))
    broker = private_kafka()
    kafka = broker.settings
    prefix = f"chaos{uuid.uuid4().hex[:6]}-"
    provision_all(kafka, registry_settings, prefix=prefix)
    migrate(database_settings.url.get_secret_value())
    world = Metering(prefix, kafka, registry_settings, database_settings)
    double = StripeDouble().serve()
    double.faults(0.2, kinds=("429", "500", "503", "timeout"), retry_after_s=0.2, timeout_s=0.6, seed=16)
    customers = []
    with psycopg.connect(database_settings.url.get_secret_value(), autocommit=True) as conn:
        for _ in range(10):
            c = f"chaos-{uuid.uuid4().hex[:10]}"
            conn.execute(
                "INSERT INTO customers (customer_id, plan, stripe_customer_id) VALUES (%s, 'pro', %s)",
                (c, f"cus_{c}"),
            )
            # Subscribed: only a customer with a Stripe subscription is reported (docs/billing.md "Windows").
            conn.execute(
                "INSERT INTO subscriptions (customer_id, plan, status, stripe_customer_id,"
                " stripe_subscription_id) VALUES (%s, 'pro', 'active', %s, %s)",
                (c, f"cus_{c}", f"sub_{c}"),
            )
            customers.append(c)
    keys = {c: _create_key(database_settings.url.get_secret_value(), c) for c in customers}
    base = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "SCHEMA_REGISTRY_URL": registry_settings.url,
        "DATABASE_URL": database_settings.url.get_secret_value(),
        "PLG_TOPIC_PREFIX": prefix,
        "PLG_LOG_FORMAT": "text",
        "STRIPE_API_BASE": double.url,
        "STRIPE_API_KEY": "sk_test_chaos",
        "STRIPE_TIMEOUT_SECONDS": "0.3",
        "METERING_SESSION_TIMEOUT_MS": "6000",
        "METERING_CUSTOMERS_REFRESH_SECONDS": "1",
        "ENRICHMENT_SESSION_TIMEOUT_MS": "6000",
        "BILLING_REPORT_GRANULARITY": "MINUTE",
        "BILLING_SETTLE_SECONDS": "0",
        "BILLING_CORRECTION_INTERVAL_SECONDS": "2",
        "BILLING_PLAN_INTERVAL_SECONDS": "0.3",
        "BILLING_REQUESTS_PER_SECOND": "100",
        "BILLING_BACKOFF_BASE_SECONDS": "0.05",
        "BILLING_BACKOFF_CAP_SECONDS": "1",
        "BILLING_BREAKER_COOLDOWN_SECONDS": "0.3",
        "BILLING_LEASE_SECONDS": "2",
        "BILLING_SESSION_TIMEOUT_MS": "6000",
        "INGEST_PRODUCE_TIMEOUT_MS": "5000",
    }
    ports = {name: free_port() for name in SERVICES}
    procs: dict[str, Proc] = {}

    def start(name: str) -> None:
        module, env_prefix, _ = SERVICES[name]
        env = {**base, f"{env_prefix}PORT": str(ports[name]), f"{env_prefix}INSTANCE_ID": f"{name}-chaos"}
        procs[name] = Proc(module, env, tmp_path / f"{name}.log").start()

    crashed: Counter[str] = Counter()

    def supervise() -> None:
        """What Kubernetes or compose's restart policy does: a service that exited (e.g. it started while
        the broker was down and refused to run without it) is started again."""
        for name, proc in list(procs.items()):
            if not proc.alive():
                crashed[name] += 1
                start(name)

    def ready_supervised(name: str) -> bool:
        supervise()
        return _ready(ports[name])

    sent: Counter[str] = Counter()
    sent_ids: set[str] = set()
    via: Counter[str] = Counter()  # events by path: ingest (HTTP) or kafka
    sent_lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    http_retries: Counter[str] = Counter()
    refused: list[dict[str, Any]] = []

    def send_acknowledged(batch: list[dict[str, Any]]) -> None:
        """Produce ``batch`` and wait for every record's delivery report. ``flush() == 0`` is not enough:
        a record that timed out during the broker restart leaves the queue too, undelivered (a run counted
        such a batch as sent and then missed exactly its 50 events downstream)."""
        name = world.topic(USAGE_EVENTS)
        futures = [world.producer.send(name, world.encoder.encode(e), e["customer_id"]) for e in batch]
        for future in futures:
            future.result(timeout=60)  # raises the delivery error

    def counted(batch: list[dict[str, Any]], path: str) -> None:
        with sent_lock:
            for e in batch:
                sent[e["customer_id"]] += 1
                sent_ids.add(e["event_id"])
            via[path] += len(batch)

    def stream() -> None:
        pick = random.Random(rng.random())  # the main thread's rng drives the kills
        while not stop.is_set():
            batch = [usage_event(pick.choice(customers), ts=now_ms()) for _ in range(50)]
            while not stop.is_set():
                try:
                    send_acknowledged(batch)  # retried whole after a failure: the event ids dedup it
                    break
                except (AssertionError, Exception) as exc:  # the broker restarting under us
                    errors.append(exc)
                    time.sleep(0.5)
            else:
                return
            counted(batch, "kafka")
            time.sleep(0.05)

    def post_acknowledged(client: httpx.Client, customer: str, events: list[dict[str, Any]]) -> bool:
        """POST one batch to ingest until it answers 202, as the SDK does: the same event ids on every
        try (a request cut by a SIGKILL may have reached Kafka already; the event id dedups it
        downstream). False when the chaos ended first."""
        body = orjson.dumps({"batch": events})
        headers = {"Authorization": f"Bearer {keys[customer]}", "Content-Type": "application/json"}
        while not stop.is_set():
            try:
                url = f"http://127.0.0.1:{ports['ingest']}/v1/batch"
                response = client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:  # ingest killed or restarting
                http_retries[type(exc).__name__] += 1
                time.sleep(0.3)
                continue
            if response.status_code == 202:
                results = response.json()["results"]
                refused.extend(r for r in results if r["status"] != "accepted")
                return True
            # 503 (Kafka away, or starting), 429: retry the same events after a pause
            http_retries[str(response.status_code)] += 1
            time.sleep(min(float(response.headers.get("Retry-After", "0.3")), 1.0))
        return False

    def stream_ingest() -> None:
        pick = random.Random(rng.random())
        with httpx.Client(timeout=15) as client:
            while not stop.is_set():
                customer = pick.choice(customers)
                events = [
                    {
                        "event_id": str(uuid.uuid4()),
                        "name": "api_call_made",
                        "timestamp": now_ms(),
                        "properties": {},
                        "user_id": "u1",
                    }
                    for _ in range(50)
                ]
                if not post_acknowledged(client, customer, events):
                    return
                counted([{**e, "customer_id": customer} for e in events], "ingest")
                time.sleep(0.05)

    kills: Counter[str] = Counter()
    broker_restarts = 0
    started_at = time.monotonic()
    try:
        for name in SERVICES:
            start(name)
        for name in SERVICES:
            wait_for(lambda n=name: _ready(ports[n]), timeout=120, what=f"{name} ready")
        # The chaos's time counts from here, not from before the start-up: on a loaded machine start-up can
        # take most of the 45 s (a run counted from there got one SIGKILL and ten batches).
        started_at = time.monotonic()
        producer = threading.Thread(target=stream, daemon=True)
        producer.start()
        over_http = threading.Thread(target=stream_ingest, daemon=True)
        over_http.start()
        restart_at = started_at + DURATION / 3
        while time.monotonic() - started_at < DURATION:
            pause = time.monotonic() + rng.uniform(3.0, 5.0)
            while time.monotonic() < pause:
                supervise()
                time.sleep(0.2)
            victim = rng.choice(sorted(SERVICES))
            procs[victim].kill()  # SIGKILL: mid-transaction, mid-call to Stripe, leases held
            kills[victim] += 1
            start(victim)
            if broker_restarts == 0 and time.monotonic() >= restart_at:
                broker.kill()  # a crash mid-transaction (a clean stop of the only broker: PrivateKafka.kill)
                time.sleep(2)
                broker.start()
                broker_restarts += 1
        stop.set()
        producer.join(60)
        over_http.join(60)
        assert not refused, f"ingest refused events: {refused[:3]}"
        for name in SERVICES:
            wait_for(lambda n=name: ready_supervised(n), timeout=120, what=f"{name} ready after the chaos")
        double.faults(0.0)

        # Enriched (or dead-lettered with a reason): every unique event sent.
        def enriched_ids() -> set[str]:
            out = set()
            for _, value in world.read_all(USAGE_EVENTS_ENRICHED):
                if value is not None:
                    out.add(world.decoder.decode(value)["event_id"])
            return out

        def dead_lettered() -> int:
            return sum(1 for _, v in world.read_all(USAGE_EVENTS_DLQ) if v is not None)

        def settled(check: Any) -> Any:
            # Reads right after the chaos may meet a broker still electing leaders: try again, not fail.
            try:
                return check()
            except Exception as exc:
                print(f"  (retrying a read: {exc})")
                return None

        progress: dict[str, int] = {}

        def enriched_or_dead_lettered() -> bool:
            # What the plan refuses goes to the DLQ with a reason: those count; nothing else may be missing.
            progress["missing"] = len(sent_ids - enriched_ids())
            progress["dead_lettered"] = dead_lettered()
            return progress["missing"] <= progress["dead_lettered"]

        try:
            wait_for(lambda: settled(enriched_or_dead_lettered), timeout=180, interval=2, what="enriched")
        except AssertionError:
            raise AssertionError(f"events neither enriched nor dead-lettered: {progress}") from None
        enriched = enriched_ids() & sent_ids

        # Metered exactly once, billed exactly: Stripe == ledger == usage-aggregates == sent.
        def aggregate_totals() -> dict[tuple[str, str], Decimal]:
            totals: dict[tuple[str, str], Decimal] = {}
            for v in world.aggregates().values():
                if v["granularity"] == "MINUTE" and not v["group"] and v["customer_id"] in customers:
                    key = (v["customer_id"], v["meter"])
                    totals[key] = totals.get(key, Decimal(0)) + v["value"]
            return totals

        def ledger_totals() -> dict[tuple[str, str], Decimal]:
            with psycopg.connect(database_settings.url.get_secret_value()) as conn:
                rows = conn.execute(
                    "SELECT customer_id, meter, sum(quantity) FILTER (WHERE status = 'delivered')"
                    " FROM billing_reports WHERE customer_id = ANY(%s) GROUP BY 1, 2",
                    (customers,),
                ).fetchall()
            return {(c, m): Decimal(q or 0) for c, m, q in rows}

        def stripe_totals() -> dict[tuple[str, str], Decimal]:
            return {
                (cus[4:], m): Decimal(v) for (cus, m), v in double.totals().items() if cus[4:] in customers
            }

        expected = {(c, "api_requests"): Decimal(n) for c, n in sent.items()}
        last: dict[str, Any] = {}

        def agree() -> bool:
            last.update(aggregates=aggregate_totals(), ledger=ledger_totals(), stripe=stripe_totals())
            metered = {k: v for k, v in last["aggregates"].items() if k[1] == "api_requests"}
            billed = {k: v for k, v in last["stripe"].items() if k[1] == "api_requests"}
            return (
                metered == expected
                and last["aggregates"] == last["ledger"] == last["stripe"]
                and bool(billed)
            )

        try:
            wait_for(
                lambda: settled(agree), timeout=180, interval=2.0, what="sent == metered == ledger == Stripe"
            )
        except AssertionError:
            raise AssertionError(
                f"expected {expected}\nlast {last}\n"
                + "\n".join((tmp_path / f"{n}.log").read_text()[-1500:] for n in SERVICES)
            ) from None
        identifiers = double.accepted_identifiers
        assert len(identifiers) == len(set(identifiers)), "a meter event identifier was accepted twice"

        # Every group caught up, by Kafka's own tool and by our lag metrics.
        kafka_lag: dict[str, int] = {}
        ours: dict[str, float] = {}
        for name, group in CONSUMERS.items():
            group_id = f"{prefix}{group}"
            try:
                wait_for(
                    lambda g=group_id: _kafka_group_lag(broker.bootstrap, g) == 0,
                    timeout=60,
                    interval=2,
                    what=f"{group_id} caught up (ConsumerGroupCommand)",
                )
            except AssertionError:
                ours_now = sum(_metric(ports[name], "plg_consumer_group_lag_messages_sum"))
                theirs = _kafka_group_lag(broker.bootstrap, group_id)
                raise AssertionError(
                    f"{group_id}: ConsumerGroupCommand says lag {theirs},"
                    f" our plg_consumer_group_lag_messages_sum says {ours_now}"
                ) from None
            kafka_lag[name] = _kafka_group_lag(broker.bootstrap, group_id)
            wait_for(
                lambda n=name: sum(_metric(ports[n], "plg_consumer_group_lag_messages_sum")) == 0,
                timeout=30,
                what=f"{name}'s lag metric at 0",
            )
            ours[name] = sum(_metric(ports[name], "plg_consumer_group_lag_messages_sum"))
        assert kafka_lag == dict.fromkeys(CONSUMERS, 0) == ours
        print(
            f"\nchaos: {sum(sent.values())} events sent ({len(sent_ids)} unique; through ingest"
            f" {via['ingest']}, straight to Kafka {via['kafka']}) in {DURATION:.0f}s;"
            f" ingest client retries {dict(http_retries)};"
            f" SIGKILLs {dict(kills)}; broker restarts {broker_restarts}; exits restarted {dict(crashed)};"
            f" producer retries {len(errors)}\n"
            f"  enriched {len(enriched)} of {len(sent_ids)}, dead-lettered {dead_lettered()};"
            f" metered {sum(v for k, v in last['aggregates'].items() if k[1] == 'api_requests')};"
            f" ledger {sum(last['ledger'].values())}; Stripe {sum(last['stripe'].values())}"
            f" ({len(identifiers)} meter events accepted, faults {double.stats.faults})\n"
            f"  lag by ConsumerGroupCommand {kafka_lag}, by plg_consumer_group_lag_messages_sum {ours}"
        )
    finally:
        stop.set()
        for proc in procs.values():
            proc.terminate()
        world.close()
        double.close()


pytestmark = pytest.mark.chaos
