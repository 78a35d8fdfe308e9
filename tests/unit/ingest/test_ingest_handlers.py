"""The Kafka breaker's fail-fast behaviour, and that the documented OpenAPI examples pass the real checks."""

from __future__ import annotations

import orjson

from services.ingest.config import IngestSettings
from services.ingest.handlers import KafkaBreaker
from services.ingest.model import Limits, RequestContext, normalise_batch, normalise_cloudevents
from services.ingest.openapi import Batch, CloudEvent, Event, component_schemas


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_fails_fast_after_an_outage_and_probes_once_per_interval() -> None:
    clock = Clock()
    breaker = KafkaBreaker(probe_interval=1.0, clock=clock)
    assert breaker.allow()
    breaker.failed()
    assert breaker.is_open
    assert not breaker.allow()
    clock.now = 1.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one per interval
    breaker.succeeded()
    assert breaker.allow()
    assert not breaker.is_open


def test_documented_models_describe_bodies_the_checks_accept() -> None:
    now = 1_760_000_000_000
    ctx = RequestContext("acme", "k", "r", now)
    event = Event(event_id="e1", name="api_call", timestamp="2025-10-09T08:53:00Z", properties={"n": 1})
    body = Batch(batch=[event]).model_dump_json(exclude_none=True).encode()
    assert normalise_batch(body, ctx, Limits()).rejections == []
    ce = CloudEvent(specversion="1.0", id="c1", source="s", type="api_call", subject="acme", data={"n": 1})
    out = normalise_cloudevents(orjson.dumps([ce.model_dump(exclude_none=True)]), ctx, Limits(), batch=True)
    assert out.rejections == []
    assert {"Event", "Batch", "CloudEvent", "Accepted", "Error", "EventResult"} <= set(component_schemas())


def test_settings_limits_follow_the_documented_defaults() -> None:
    limits = IngestSettings().limits()
    assert (limits.max_event_bytes, limits.max_batch_bytes, limits.max_batch_events) == (32768, 512000, 500)
    assert (limits.max_future_ms, limits.max_age_ms) == (300_000, 35 * 86_400_000)
