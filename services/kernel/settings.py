"""Settings shared by every plg service: Kafka, the schema registry, PostgreSQL, the platform.

Each group reads its own environment prefix (``KAFKA_``, ``SCHEMA_REGISTRY_``, ``DATABASE_``, ``PLG_``)
so the same variables configure every service. A service's settings extend :class:`ServiceSettings`
(database + platform + its own ``host``/``port``) or :class:`StreamServiceSettings` (plus Kafka and the
registry) and add only their own fields under their own prefix (``INGEST_``, ``METERING_``...)::

    class EntitlementsSettings(StreamServiceSettings):
        model_config = SettingsConfigDict(env_prefix="ENTITLEMENTS_")
        port: int = Field(default=8082, ge=0, le=65535)
        upgrade_url: str = "http://127.0.0.1:3000/billing/upgrade"

Nested values can also be set through the service's prefix with ``__`` (``INGEST_KAFKA__CLIENT_ID``).
"""

from __future__ import annotations

import logging
import socket
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_SCHEMA_REGISTRY_URL = "http://127.0.0.1:8081"
DEFAULT_DATABASE_URL = "postgresql://plg@127.0.0.1:5433/plg"


class KafkaSettings(BaseSettings):
    """``KAFKA_BOOTSTRAP_SERVERS`` and friends."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP
    client_id: str | None = None
    # Extra librdkafka properties, e.g. KAFKA_EXTRA='{"security.protocol": "SASL_SSL"}'. Logged and
    # printed with secret-looking keys (sasl.*, *password*, ...) masked: see services/kernel/logs.py.
    extra: dict[str, str] = Field(default_factory=dict)


class SchemaRegistrySettings(BaseSettings):
    """``SCHEMA_REGISTRY_URL`` and the optional admin token for writes."""

    model_config = SettingsConfigDict(env_prefix="SCHEMA_REGISTRY_", extra="ignore")

    url: str = DEFAULT_SCHEMA_REGISTRY_URL
    # Bearer token sent on writes (register, delete, config) when the registry protects them.
    admin_token: SecretStr | None = None


class DatabaseSettings(BaseSettings):
    """``DATABASE_URL`` (libpq connection string or URI)."""

    model_config = SettingsConfigDict(env_prefix="DATABASE_", extra="ignore")

    url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    pool_min_size: int = 1
    pool_max_size: int = 10


class PlatformSettings(BaseSettings):
    """``PLG_*``: settings of the platform as a whole."""

    model_config = SettingsConfigDict(env_prefix="PLG_", extra="ignore")

    # Prefix for every topic name (and so every subject). Empty in production; tests use it to give each
    # run its own topics on a shared broker.
    topic_prefix: str = ""
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    environment: str = "local"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        # Checked here so a typo is an invalid-config exit (2) listed with the other errors, not a crash
        # in logging.setLevel after start-up began.
        level = value.strip().upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level


class AuthSettings(BaseSettings):
    """``PLG_AUTH_*``: how every HTTP service checks credentials (services/kernel/auth.py)."""

    model_config = SettingsConfigDict(env_prefix="PLG_AUTH_", extra="ignore")

    # How long a key's or operator token's row is trusted before it is read again: revocation takes
    # effect within this time.
    key_cache_ttl_seconds: float = Field(default=30.0, ge=0)
    # How long an unknown id is remembered as unknown (a new key is usable at once unless tried before).
    key_negative_cache_ttl_seconds: float = Field(default=5.0, ge=0)
    # While PostgreSQL is down, a key seen less than this long ago keeps working from the cache.
    key_stale_ttl_seconds: float = Field(default=3600.0, ge=0)


class ServiceSettings(BaseSettings):
    """Base of every service's settings: where it listens, its database, the platform group.

    ``host``/``port`` are the service's HTTP API, or for a worker its ops endpoints (``/metrics``,
    ``/livez``, ``/readyz``); a subclass redeclares ``port`` with its own default.
    """

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    # PLG_LOG_LEVEL / PLG_LOG_FORMAT / PLG_TOPIC_PREFIX, shared by every service.
    platform: PlatformSettings = Field(default_factory=PlatformSettings)
    # PLG_AUTH_*: the credential cache of every HTTP service.
    auth: AuthSettings = Field(default_factory=AuthSettings)


class StreamServiceSettings(ServiceSettings):
    """A service on Kafka: adds the broker (``KAFKA_*``) and the schema registry (``SCHEMA_REGISTRY_*``)."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)


class ExactlyOnceSettings(StreamServiceSettings):
    """A service that runs the kernel's exactly-once loop: its identity in the group and the loop's knobs.

    A subclass sets ``group_id``'s default (the service's name) and, if it wants, other defaults; every
    field reads the service's own prefix (``METERING_INSTANCE_ID``, ``ENRICHMENT_MAX_BATCH_EVENTS``...).
    ``services.kernel.processing.exactly_once_service(settings, ...)`` builds the loop from it.
    """

    # Stable identity of this instance across restarts: it becomes the transactional.id (a restarted
    # instance fences its dead predecessor's open transaction at once) and, with static_membership, the
    # group.instance.id. Give every replica its own, e.g. the StatefulSet pod name.
    instance_id: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    group_id: str = Field(default="", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    # One Kafka transaction per consumed batch: at most this many records, waiting at most this long.
    max_batch_events: int = Field(default=10_000, ge=1)
    batch_wait_ms: int = Field(default=100, ge=1)
    # A crashed instance's partitions move after this long.
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    # Static group membership (group.instance.id = instance_id): a restart takes its partitions back
    # without a rebalance. Off by default: with librdkafka, a static member whose session times out during
    # a coordinator outage is fenced for good on rejoin (librdkafka issue #3437) and the process must exit.
    static_membership: bool = False
    # An open transaction of a dead instance that never comes back is aborted by the broker after this.
    transaction_timeout_ms: int = Field(default=30_000, ge=1_000)
    # How long a commit (or send_offsets, abort) retries while the broker is away before the batch is
    # given up and retried with back-off.
    commit_timeout_seconds: float = Field(default=30.0, gt=0)
    # Register our output schemas if missing (provisioning normally has).
    auto_register_schemas: bool = False

    @property
    def transactional_id(self) -> str:
        return f"{self.group_id}-{self.instance_id}"

    def consumer_config(self) -> dict[str, int | str]:
        """The group settings the loop's consumer gets from these fields."""
        config: dict[str, int | str] = {
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(1000, self.session_timeout_ms // 5),
        }
        if self.static_membership:
            config["group.instance.id"] = self.instance_id
        return config
