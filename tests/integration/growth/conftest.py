"""Fixtures of the growth integration tests: the service for real (uvicorn on a free loopback port, in a
thread) against the suite's stack and a fresh topic prefix, and an SSE reader."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from services.devstack.config import free_port
from services.growth.app import build_app
from services.growth.config import GrowthSettings
from services.kernel.settings import DatabaseSettings, KafkaSettings, PlatformSettings, SchemaRegistrySettings
from tests.auth_support import bearer, operator_token

# The ingest tests' fixtures (a tenant with an API key, ingest in a thread) for the whole-path test.
from tests.integration.ingest.conftest import new_tenant, start_ingest, tenant  # noqa: F401

ADMIN_TOKEN = "test-admin-token"
# A sticky 50/50 experiment: what the sticky-assignment tests evaluate.
STICKY_AB_FLAG = {
    "sticky": True,
    "variants": {"a": "A", "b": "B"},
    "off_variant": "a",
    "default": {"split": [{"variant": "a", "weight": 1}, {"variant": "b", "weight": 1}]},
}
DEFAULT = "<the default operator>"


@dataclass
class RunningGrowth:
    url: str
    settings: GrowthSettings
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, token: str | None = DEFAULT, **kw: Any) -> httpx.Client:
        """A client sending ``token`` (default: an admin operator's; None: no credential)."""
        if token == DEFAULT:
            token = operator_token(self.settings.database)
        if token:
            kw["headers"] = {**bearer(token), **kw.get("headers", {})}
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def admin(self, actor: str = "ann@plg.dev") -> httpx.Client:
        """A client of the operator named ``actor`` (admin): audit rows name them."""
        return self.client(token=operator_token(self.settings.database, "admin", name=actor))

    def auth_headers(self) -> dict[str, str]:
        return bearer(operator_token(self.settings.database))

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


GrowthFactory = Callable[..., RunningGrowth]


@pytest.fixture
def start_growth(
    provisioned: Any,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
    database_settings: DatabaseSettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GrowthFactory]:
    """``start_growth(**overrides)``: the service on the test's topic prefix, stopped afterwards."""
    state_dir = tmp_path_factory.mktemp("growth-state")  # the local stores: never the checkout's .plg
    running: list[RunningGrowth] = []

    def start(**overrides: Any) -> RunningGrowth:
        port = free_port()
        fields: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "kafka": kafka_settings,
            "registry": registry_settings,
            "database": database_settings,
            "platform": PlatformSettings(topic_prefix=provisioned.prefix),
            "admin_token": ADMIN_TOKEN,
            "instance_id": f"test-{port}",
            "state_dir": state_dir,
            **overrides,
        }
        settings = GrowthSettings(**fields)
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
            )
        )
        thread = threading.Thread(target=server.run, name=f"growth-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("growth failed to start (see the log above)")
            time.sleep(0.05)
        handle = RunningGrowth(f"http://127.0.0.1:{port}", settings, server, thread)
        running.append(handle)
        return handle

    yield start
    for handle in reversed(running):
        handle.stop()


@pytest.fixture
def growth(start_growth: GrowthFactory) -> RunningGrowth:
    return start_growth()


class SseReader:
    """Reads a server-sent event stream in a thread; ``next(event, timeout)`` returns the next event's
    parsed JSON data (and its arrival time)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[tuple[str, Any, float]] = queue.Queue()
        self._client = httpx.Client(timeout=httpx.Timeout(30, read=None), headers=headers)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()

    def _read(self, url: str) -> None:
        with self._client.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            event, data = "message", []
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    self.events.put((event, json.loads("\n".join(data)), time.monotonic()))
                    event, data = "message", []

    def next(self, event: str, timeout: float = 10.0) -> tuple[Any, float]:
        deadline = time.monotonic() + timeout
        while True:
            name, data, at = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if name == event:
                return data, at

    def close(self) -> None:
        self._stop.set()
        self._client.close()


class EnrichedProducer:
    """Writes usage-events-enriched records as the enrichment service would (tests of activation)."""

    def __init__(self, kafka: KafkaSettings, registry: SchemaRegistrySettings, prefix: str) -> None:
        from services.kernel.kafka import Producer
        from services.kernel.serde import SchemaRegistry
        from services.kernel.topics import USAGE_EVENTS_ENRICHED, topic

        spec = topic(USAGE_EVENTS_ENRICHED, prefix)
        assert spec.schema_path is not None
        self.registry = SchemaRegistry(registry)
        self.encoder = self.registry.encoder(spec.value_subject, spec.schema_path, auto_register=False)
        self.topic = spec.name
        self.producer = Producer(kafka, client_id="test-enriched")

    def send(
        self,
        customer: str,
        person: str | None,
        name: str,
        *,
        plan: str | None = "free",
        timestamp_ms: int | None = None,
        count: int = 1,
    ) -> None:
        import uuid as _uuid

        now = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        for _ in range(count):
            record = {
                "event_id": str(_uuid.uuid4()),
                "customer_id": customer,
                "name": name,
                "timestamp": now,
                "properties": {},
                "user_id": person,
                "anonymous_id": None,
                "session_id": None,
                "resolved_user_id": person,
                "plan": plan,
                "scrubbed_properties": [],
                "received_at": now,
                "enriched_at": now,
                "person_id": person,
            }
            self.producer.send(self.topic, self.encoder.encode(record), customer)
        assert self.producer.flush(30) == 0

    def close(self) -> None:
        self.producer.close()
        self.registry.close()


@pytest.fixture
def enriched(
    provisioned: Any, kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings
) -> Iterator[EnrichedProducer]:
    producer = EnrichedProducer(kafka_settings, registry_settings, provisioned.prefix)
    yield producer
    producer.close()


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {value!r})")
        time.sleep(0.1)
