"""Prometheus metrics of the ingest service (served on ``/metrics``)."""

from __future__ import annotations

from services.ingest import model
from services.kernel import metrics

REQUESTS = metrics.counter(
    "plg_ingest_requests", "HTTP requests to the ingest API, by endpoint and status.", ("endpoint", "status")
)
EVENTS = metrics.counter(
    "plg_ingest_events",
    "Events received, by outcome (accepted | rejected | failed) and code (accepted, a rejection code, or "
    "kafka_unavailable for events of requests answered 503).",
    ("outcome", "code"),
)
PRODUCE_SECONDS = metrics.histogram(
    "plg_ingest_produce_seconds",
    "Time from handing a request's records to the producer to the broker's last acknowledgement.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REQUEST_SECONDS = metrics.histogram(
    "plg_ingest_request_seconds",
    "Time to answer an ingest request, by endpoint.",
    ("endpoint",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_EVENTS = metrics.histogram(
    "plg_ingest_batch_events",
    "Events per request.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500),
)
KAFKA_BREAKER_OPEN = metrics.gauge(
    "plg_ingest_kafka_breaker_open",
    "1 while ingest answers 503 at once because Kafka was found unavailable (with several workers, one "
    "series per worker pid).",
)

MEMO = metrics.gauge(
    "plg_ingest_memo_entries",
    "Strings remembered to skip work on the next event, by cache: valid_names and valid_keys (event names "
    "and "
    "property keys that passed their checks, 50 000 each), encoded_names and encoded_keys (their Avro bytes, "
    "10 000 each per encoder); each is emptied when full (docs/operations.md#memory-bounds).",
    ("cache",),
)
metrics.track_size(MEMO.labels("valid_names"), model._VALID_NAMES, len)
metrics.track_size(MEMO.labels("valid_keys"), model._VALID_KEYS, len)

ACCEPTED = EVENTS.labels("accepted", "accepted")
