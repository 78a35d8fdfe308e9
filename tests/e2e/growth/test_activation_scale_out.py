"""Growth's activation loop scaled out: two processes share usage-events-enriched's partitions, one is
SIGKILLed mid-stream and restarted, and every threshold still fires exactly once per subject — nothing
lost (its partitions' counts are restored from the changelog by whichever instance takes them) and
nothing doubled (the crossings and the offsets commit in one transaction)."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from services.devstack.config import free_port
from services.kernel.reading import read_to_end
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import ACTIVATION_EVENTS, topic
from tests.integration.growth.conftest import EnrichedProducer, wait_for
from tests.processes import Proc

pytestmark = pytest.mark.integration
CUSTOMERS = 40


@pytest.fixture
def enriched(provisioned, kafka_settings, registry_settings) -> Iterator[EnrichedProducer]:
    producer = EnrichedProducer(kafka_settings, registry_settings, provisioned.prefix)
    yield producer
    producer.close()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _activations(kafka: KafkaSettings, registry: SchemaRegistrySettings, prefix: str) -> list[dict]:
    decoder = SchemaRegistry(registry).decoder()
    name = topic(ACTIVATION_EVENTS, prefix).name
    return [decoder.decode(r.value()) for r in read_to_end(kafka, name, 30, "test-activations")]


def test_two_instances_and_a_sigkill_fire_each_threshold_exactly_once(
    provisioned, stack, kafka_settings, registry_settings, enriched: EnrichedProducer, tmp_path
) -> None:
    base = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": stack.registry_url,
        "DATABASE_URL": stack.database_url,
        "PLG_TOPIC_PREFIX": provisioned.prefix,
        "PLG_LOG_FORMAT": "text",
        "GROWTH_SESSION_TIMEOUT_MS": "6000",
        "GROWTH_BATCH_WAIT_MS": "20",
        "GROWTH_MAX_BATCH_EVENTS": "50",
    }
    ports = {"steady": free_port(), "killed": free_port()}

    def start(name: str) -> Proc:
        env = {
            **base,
            "GROWTH_PORT": str(ports[name]),
            "GROWTH_INSTANCE_ID": f"{name}-{uuid.uuid4().hex[:4]}",
        }
        return Proc("services.growth", env, tmp_path / f"{name}.log").start()

    steady, killed = start("steady"), start("killed")
    try:
        for name in ports:
            wait_for(lambda n=name: _ready(ports[n]), timeout=90, what=f"{name} ready")
        customers = [f"act-{uuid.uuid4().hex[:8]}" for _ in range(CUSTOMERS)]
        # Three project_created per person cross the person's and the customer's threshold (3 each); the
        # SIGKILL lands between the second and the third wave, with uncommitted work in flight.
        for wave in range(3):
            for customer in customers:
                enriched.send(customer, "user-1", "project_created")
            if wave == 1:
                time.sleep(0.3)
                killed.kill()
                killed = start("killed")
        wait_for(lambda: _ready(ports["killed"]), timeout=90, what="restarted instance ready")
        expected = 2 * CUSTOMERS
        seen: list[dict] = []

        def all_fired() -> bool:
            seen[:] = [
                e
                for e in _activations(kafka_settings, registry_settings, provisioned.prefix)
                if e["customer_id"] in customers
            ]
            return len(seen) >= expected

        wait_for(all_fired, timeout=90, what=f"{expected} activation events")
        time.sleep(3)  # anything doubled would arrive now
        all_fired()
        counts = Counter((e["customer_id"], e["scope"], e["threshold"], e["person_id"]) for e in seen)
        assert len(counts) == expected, "a threshold did not fire"
        assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:5]
        assert steady.alive(), (tmp_path / "steady.log").read_text()[-3000:]
        print(
            f"\nactivation scale-out: {3 * CUSTOMERS} events, 2 instances, 1 SIGKILL, {len(seen)} activations"
        )
    finally:
        killed.terminate()
        steady.terminate()
