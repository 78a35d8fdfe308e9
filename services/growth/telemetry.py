"""Telemetry the growth service writes itself: ``usage-events`` records (the same Avro as ingest's) for
flag exposures, onboarding completions and activation crossings, through the kernel producer."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from services.kernel import metrics
from services.kernel.kafka import DeliveryReport, Producer
from services.kernel.serde import ValueEncoder

log = logging.getLogger(__name__)

EVENTS = metrics.counter(
    "plg_growth_telemetry_events",
    "Telemetry events the growth service wrote, by name and outcome.",
    ("name", "outcome"),
)

SOURCE = "growth"
Scalar = None | bool | int | float | str


def usage_event(
    *,
    event_id: str,
    customer_id: str,
    name: str,
    properties: Mapping[str, Scalar],
    user_id: str | None = None,
    anonymous_id: str | None = None,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """A ``usage-events`` record as the growth service writes it (``ingest.source = "growth"``)."""
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "name": name,
        "timestamp": now,
        "properties": dict(properties),
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "session_id": None,
        "ingest": {
            "received_at": now,
            "source": SOURCE,
            "api_key_id": None,
            "request_id": None,
            "library": "plg-growth",
        },
    }


def stable_event_id(*parts: str) -> str:
    """An event id derived from what the event is about, so a retry writes the same id (dedup downstream)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "plg-growth:" + "|".join(parts)))


class TelemetryWriter:
    def __init__(self, producer: Producer, topic: str, encoder: ValueEncoder) -> None:
        self.producer = producer
        self.topic = topic
        self.encoder = encoder

    def send(self, record: Mapping[str, Any]) -> Future[DeliveryReport]:
        """Enqueue one event (key = its customer); the future resolves once Kafka has it."""
        future = self.producer.send(self.topic, self.encoder.encode(record), record["customer_id"])
        name = str(record["name"])

        def counted(done: Future[DeliveryReport]) -> None:
            EVENTS.labels(name, "failed" if done.exception() else "written").inc()

        future.add_done_callback(counted)
        return future

    def fire_and_forget(self, record: Mapping[str, Any]) -> None:
        """For events whose loss costs only analytics (exposures): never blocks, never raises."""
        try:
            self.send(record).add_done_callback(_log_failure)
        except Exception as exc:
            EVENTS.labels(str(record["name"]), "dropped").inc()
            log.warning("telemetry event dropped", extra={"event": record["name"], "error": str(exc)})


def _log_failure(done: Future[DeliveryReport]) -> None:
    exc = done.exception()
    if exc is not None:
        log.warning("telemetry event not delivered", extra={"error": str(exc)})
