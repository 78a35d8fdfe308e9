"""Crash test: the aggregator is SIGKILLed and restarted while events flow, a second instance joins and
leaves, and at the end every customer's total — on usage-aggregates and from the entitlement API — equals
its number of unique events exactly; each threshold event exists exactly once."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from services.devstack.config import free_port
from services.kernel.db import migrate
from tests.auth_support import bearer, operator_token
from tests.integration.metering.harness import Metering, usage_event, wait_for
from tests.processes import Proc

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def world(provisioned, kafka_settings, registry_settings, database_settings, stack, tmp_path):
    migrate(database_settings.url.get_secret_value())
    world = Metering(provisioned.prefix, kafka_settings, registry_settings, database_settings)
    procs: list[Proc] = []
    base_env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": stack.registry_url,
        "DATABASE_URL": stack.database_url,
        "PLG_TOPIC_PREFIX": provisioned.prefix,
        "PLG_LOG_FORMAT": "text",
        "METERING_SESSION_TIMEOUT_MS": "6000",
        "METERING_BATCH_WAIT_MS": "50",
        "METERING_CUSTOMERS_REFRESH_SECONDS": "2",
    }

    def spawn(module: str, name: str, **env: str) -> Proc:
        proc = Proc(module, {**base_env, **env}, tmp_path / f"{name}.log").start()
        procs.append(proc)
        return proc

    world.spawn = spawn  # type: ignore[attr-defined]
    world.logs = tmp_path  # type: ignore[attr-defined]
    try:
        yield world
    finally:
        for proc in procs:
            proc.terminate()
        world.close()


def test_totals_are_exact_after_sigkills_restarts_and_a_rebalance(world: Metering):
    rng = random.Random(7)
    pro = [world.customer("pro") for _ in range(16)]
    free = [world.customer("free") for _ in range(3)]  # api_requests limit 1000: thresholds will fire
    unique: Counter[str] = Counter()
    sent_ids: list[dict] = []
    sent = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def stream() -> None:
        # ~1500 events/s for the duration, a fifth of them re-sends of earlier events (duplicates).
        try:
            while not stop.is_set():
                batch = []
                for _ in range(150):
                    if sent_ids and rng.random() < 0.2:
                        batch.append(rng.choice(sent_ids))
                        continue
                    customer = rng.choice(free) if rng.random() < 0.15 else rng.choice(pro)
                    event = usage_event(customer, event_id=str(uuid.uuid4()))
                    unique[customer] += 1
                    sent_ids.append(event)
                    batch.append(event)
                sent[0] += world.send(batch)
                time.sleep(0.1)
        except BaseException as exc:
            errors.append(exc)

    api_port = free_port()
    api = world.spawn(
        "services.entitlements",
        "entitlements",  # type: ignore[attr-defined]
        ENTITLEMENTS_PORT=str(api_port),
        ENTITLEMENTS_CUSTOMERS_REFRESH_SECONDS="2",
    )

    ports: dict[str, int] = {}

    def aggregator(instance: str) -> Proc:
        ports[instance] = free_port()
        return world.spawn(
            "services.metering_aggregator",
            f"aggregator-{instance}",  # type: ignore[attr-defined]
            METERING_INSTANCE_ID=instance,
            METERING_PORT=str(ports[instance]),
        )

    def owns_partitions(instance: str) -> bool:
        try:
            text = httpx.get(f"http://127.0.0.1:{ports[instance]}/metrics", timeout=2).text
        except httpx.HTTPError:
            return False
        gauge = [ln for ln in text.splitlines() if ln.startswith("plg_metering_assigned_partitions ")]
        return bool(gauge) and float(gauge[0].split()[1]) > 0

    producer = threading.Thread(target=stream, daemon=True)
    producer.start()
    a = aggregator("crash-a")
    started = time.monotonic()
    b: Proc | None = None
    try:
        for round_ in range(5):
            time.sleep(rng.uniform(3.0, 6.0))
            a.kill()  # SIGKILL: no flush, no abort, no leave — a transaction may be open
            a = aggregator("crash-a")
            if round_ == 1:
                b = aggregator("crash-b")  # joins: partitions are shared
                wait_for(lambda: owns_partitions("crash-b"), timeout=30, what="the second instance owns some")
            if round_ == 3 and b is not None:
                b.terminate()  # leaves
        time.sleep(3)
    finally:
        stop.set()
        producer.join(30)
    assert not errors, errors
    assert a.alive(), (world.logs / "aggregator-crash-a.log").read_text()[-3000:]  # type: ignore[attr-defined]
    total_unique = sum(unique.values())
    assert total_unique > 5000

    def totals_match() -> bool:
        aggregates = world.aggregates()
        found = {
            v["customer_id"]: (v["value"], v["event_count"])
            for v in aggregates.values()
            if v["granularity"] == "BILLING_PERIOD" and v["meter"] == "api_requests" and not v["group"]
        }
        return all(found.get(c) == (Decimal(n), n) for c, n in unique.items())

    wait_for(totals_match, timeout=60, interval=1.0, what="aggregate totals = unique events")
    operator = bearer(operator_token(world.database, "viewer"))
    with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10, headers=operator) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=30, what="entitlement API")
        wait_for(
            lambda: all(
                client.get(f"/v1/entitlements/{c}/api_requests").json()["usage"] == n
                for c, n in unique.items()
            ),
            timeout=30,
            what="entitlement usage = unique",
        )
    thresholds = Counter((t["customer_id"], t["threshold_percent"]) for t in world.thresholds())
    assert all(n == 1 for n in thresholds.values()), thresholds
    for c in free:
        expected = {p for p in (80, 90, 100) if unique[c] * 100 >= p * 1000}
        assert {p for (cid, p) in thresholds if cid == c} == expected
    assert {cid for cid, _ in thresholds} <= set(free)
    assert api.alive()
    print(
        f"crash test: {total_unique} unique events, {sent[0]} sent with duplicates, "
        f"{time.monotonic() - started:.0f}s"
    )
