"""Fixtures for the ingest integration tests: a tenant with an API key, and the ingest service running
for real (uvicorn on a free loopback port, in a thread) against the suite's stack and a fresh topic prefix."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from confluent_kafka import DeserializingConsumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import StringDeserializer

from services.devstack.config import free_port
from services.ingest import store
from services.ingest.app import build_app
from services.ingest.config import IngestSettings
from services.kernel.db import migrate
from services.kernel.settings import DatabaseSettings, KafkaSettings, PlatformSettings, SchemaRegistrySettings


@dataclass(frozen=True)
class Tenant:
    customer_id: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


TenantFactory = Callable[[], Tenant]


@pytest.fixture
def new_tenant(database_settings: DatabaseSettings) -> TenantFactory:
    url = database_settings.url.get_secret_value()
    migrate(url)

    def make() -> Tenant:
        customer_id = f"cust-{uuid.uuid4().hex[:10]}"
        with psycopg.connect(url, autocommit=True) as conn:
            store.create_customer(conn, customer_id, "free", name="test tenant")
            key, token = store.create_key(conn, customer_id, "integration test")
        return Tenant(customer_id, token, key.key_id)

    return make


@pytest.fixture
def tenant(new_tenant: TenantFactory) -> Tenant:
    return new_tenant()


@dataclass
class RunningIngest:
    url: str
    settings: IngestSettings
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


IngestFactory = Callable[..., RunningIngest]


@pytest.fixture
def start_ingest(
    provisioned: Any,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
    database_settings: DatabaseSettings,
) -> Iterator[IngestFactory]:
    """Factory: ``start_ingest(**overrides)`` runs ingest on the test's topic prefix; stopped afterwards."""
    running: list[RunningIngest] = []

    def start(
        kafka: KafkaSettings | None = None, database: DatabaseSettings | None = None, **overrides: Any
    ) -> RunningIngest:
        port = free_port()
        settings = IngestSettings(
            host="127.0.0.1",
            port=port,
            kafka=kafka or kafka_settings,
            registry=registry_settings,
            database=database or database_settings,
            platform=PlatformSettings(topic_prefix=provisioned.prefix),
            **overrides,
        )
        config = uvicorn.Config(
            build_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"ingest-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        url = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            if server.started:
                break
            if not thread.is_alive():
                raise RuntimeError("ingest failed to start (see the log above)")
            time.sleep(0.05)
        else:
            raise RuntimeError("ingest did not start within 60 s")
        handle = RunningIngest(url, settings, server, thread)
        running.append(handle)
        return handle

    yield start
    for handle in reversed(running):
        handle.stop()


@pytest.fixture
def ingest(start_ingest: IngestFactory) -> RunningIngest:
    return start_ingest()


def read_topic(
    bootstrap: str, registry_url: str, topic: str, expected: int, timeout: float = 30.0, settle: float = 1.0
) -> list[Any]:
    """Every record of ``topic`` decoded with confluent-kafka's own AvroDeserializer and our registry:
    waits until ``expected`` arrived, then ``settle`` seconds more to catch any extra (duplicates)."""
    registry = SchemaRegistryClient({"url": registry_url})
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "key.deserializer": StringDeserializer("utf_8"),
            "value.deserializer": AvroDeserializer(registry),
        }
    )
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None:
                assert msg.error() is None, msg.error()
                records.append(msg)
            if len(records) >= expected:
                settle_until = settle_until or time.monotonic() + settle
                if time.monotonic() >= settle_until:
                    break
    finally:
        consumer.close()
    return records
