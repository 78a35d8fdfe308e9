"""Settings of the ingest service (env prefix ``INGEST_``; Kafka, registry and Postgres use theirs)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.ingest.model import Limits
from services.kernel.settings import StreamServiceSettings


class IngestSettings(StreamServiceSettings):
    """``INGEST_PORT=8080``, ``INGEST_RATE_LIMIT_EVENTS_PER_SECOND=...`` and so on."""

    model_config = SettingsConfigDict(env_prefix="INGEST_")

    port: int = Field(default=8080, ge=1, le=65535)
    # uvicorn worker processes; each has its own producer, key cache and rate-limit buckets.
    workers: int = Field(default=1, ge=1, le=64)

    # Size limits (Segment's: 32 KB per event, 500 KB and 500 events per request).
    max_event_bytes: int = Field(default=32 * 1024, ge=256)
    max_batch_bytes: int = Field(default=500 * 1024, ge=1024)
    max_batch_events: int = Field(default=500, ge=1)
    # Accepted event-time window (Stripe's: 5 minutes ahead, 35 days back).
    max_future_seconds: int = Field(default=300, ge=0)
    max_age_days: int = Field(default=35, ge=1)

    # Token bucket per API key, in events; 0 turns the limit off. Per process.
    rate_limit_events_per_second: float = Field(default=10_000, ge=0)
    rate_limit_burst: float = Field(default=20_000, ge=0)
    # Token buckets kept (one per API key): full → all are dropped and refilled (each key starts again
    # with a full burst; docs/operations.md#memory-bounds).
    rate_limit_max_keys: int = Field(default=100_000, ge=1)

    # Customers (for the abuse guard's `suspended` notice) are re-read this often; a suspension reaches
    # ingest within about a second anyway (the customers trigger's notification).
    customers_refresh_seconds: float = Field(default=30.0, gt=0)

    # How long a key's row is trusted before it is read again: revocation takes effect within this time.
    key_cache_ttl_seconds: float = Field(default=30.0, ge=0)
    # How long an unknown key id is remembered as unknown (a new key is usable at once unless tried before).
    key_negative_cache_ttl_seconds: float = Field(default=5.0, ge=0)

    # A batch not acknowledged by the broker within this time is answered 503 (and librdkafka gives up on
    # its records at the same moment, so nothing answered 503 is written later).
    produce_timeout_ms: int = Field(default=10_000, ge=100)
    # librdkafka's linger: how long records wait to fill a batch. A request's records arrive together, so
    # batches fill without waiting; a short linger mostly saves acknowledgement latency.
    producer_linger_ms: float = Field(default=1.0, ge=0, le=1000)
    # Retry-After sent with 503 when Kafka cannot take the write.
    unavailable_retry_after_seconds: int = Field(default=5, ge=1)
    # After a broker outage is detected, fail fast (503 at once) except one probe request per interval.
    breaker_probe_interval_seconds: float = Field(default=1.0, ge=0)

    # A request body not fully received this long after ingest started reading it is answered 408 and its
    # connection closed: a client trickling bytes ("slowloris") cannot hold a connection for long.
    body_read_timeout_seconds: float = Field(default=30.0, gt=0)

    # Register the usage-events / identity-links schemas if missing (provisioning normally has).
    auto_register_schemas: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> IngestSettings:
        if self.max_event_bytes > self.max_batch_bytes:
            raise ValueError("max_event_bytes must not exceed max_batch_bytes")
        return self

    def limits(self) -> Limits:
        return Limits(
            max_event_bytes=self.max_event_bytes,
            max_batch_bytes=self.max_batch_bytes,
            max_batch_events=self.max_batch_events,
            max_future_ms=self.max_future_seconds * 1000,
            max_age_ms=self.max_age_days * 86_400_000,
        )
