"""Running the health-score service on the real stack, and producing enriched records to it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.devstack.config import free_port
from services.health_score.app import build_app
from services.health_score.config import HealthSettings
from services.kernel.kafka import Consumer, Producer
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import DatabaseSettings, KafkaSettings, PlatformSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_EVENTS_ENRICHED, topic
from tests.auth_support import operator_token
from tests.integration.metering.harness import RunningApi, serve, wait_for

__all__ = ["Health", "WebhookSink", "enriched", "wait_for"]


def enriched(
    customer: str, name: str, *, person: str | None = "p1", ts: int | None = None, **extra: Any
) -> dict[str, Any]:
    now = int(time.time() * 1000)
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "customer_id": customer,
        "name": name,
        "timestamp": ts if ts is not None else now,
        "properties": extra.pop("properties", {}),
        "user_id": person,
        "resolved_user_id": person,
        "person_id": person,
        "plan": extra.pop("plan", "starter"),
        "enriched_at": now,
        "tenant": extra.pop(
            "tenant",
            {
                "plan": "starter",
                "support_tier": "standard",
                "open_tickets": 0,
                "csm_owner": None,
                "billing_status": "active",
            },
        ),
    }
    event.update(extra)
    return event


@dataclass
class WebhookSink:
    """A local HTTP endpoint that records every alert POSTed to it."""

    received: list[dict[str, Any]] = field(default_factory=list)
    # each request's headers and exact body, for checking signatures
    raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.raw.append((dict(self.headers), body))
                sink.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@dataclass
class Health:
    prefix: str
    kafka: KafkaSettings
    registry_settings: SchemaRegistrySettings
    database: DatabaseSettings
    apis: list[RunningApi] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry = SchemaRegistry(self.registry_settings)
        spec = topic(USAGE_EVENTS_ENRICHED, self.prefix)
        assert spec.schema_path is not None
        self.encoder = self.registry.encoder(spec.value_subject, spec.schema_path, auto_register=False)
        self.producer = Producer(self.kafka, client_id="health-test")
        self.customer_prefix = f"{self.prefix}cus-"

    def customer(self, name: str) -> str:
        return f"{self.customer_prefix}{name}"

    def settings(self, **overrides: Any) -> HealthSettings:
        values: dict[str, Any] = {
            "port": free_port(),
            "kafka": self.kafka,
            "registry": self.registry_settings,
            "database": self.database,
            "platform": PlatformSettings(topic_prefix=self.prefix, log_format="text"),
            "batch_interval_seconds": 3600.0,
        }
        values.update(overrides)
        return HealthSettings(**values)

    def start(self, **overrides: Any) -> RunningApi:
        settings = self.settings(**overrides)
        token = operator_token(self.database, "viewer")
        api = serve(build_app(settings), settings.port, "health-score", token)
        self.apis.append(api)
        return api

    def send(self, *events: dict[str, Any]) -> None:
        name = topic(USAGE_EVENTS_ENRICHED, self.prefix).name
        for e in events:
            self.producer.send(name, self.encoder.encode(e), key=e["customer_id"]).result(timeout=30)

    def consume_all(self, name: str, group: str, seconds: float = 3.0) -> list[dict[str, Any]]:
        decoder = self.registry.decoder()
        consumer = Consumer(self.kafka, f"{self.prefix}{group}")
        consumer.subscribe([topic(name, self.prefix).name])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                for record in consumer.consume(500, 0.2):
                    out.append(decoder.decode(record.value()))
        finally:
            consumer.close()
        return out

    def close(self) -> None:
        for api in reversed(self.apis):
            api.close()
        self.producer.close()
        self.registry.close()


@pytest.fixture
def health(
    provisioned: Any,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
    database_settings: DatabaseSettings,
) -> Iterator[Health]:
    h = Health(provisioned.prefix, kafka_settings, registry_settings, database_settings)
    try:
        yield h
    finally:
        h.close()
