"""Settings shared by every plg service: Kafka, the schema registry, PostgreSQL, observability.

Each group reads its own environment prefix (``KAFKA_``, ``SCHEMA_REGISTRY_``, ``DATABASE_``, ``PLG_``)
so the same variables configure every service; a service nests these groups in its own settings class
with its own prefix (``INGEST_``, ``METERING_``...). Nested values can also be set with ``__``.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_SCHEMA_REGISTRY_URL = "http://127.0.0.1:8081"
DEFAULT_DATABASE_URL = "postgresql://plg@127.0.0.1:5433/plg"


class KafkaSettings(BaseSettings):
    """``KAFKA_BOOTSTRAP_SERVERS`` and friends."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP
    client_id: str | None = None
    # Extra librdkafka properties, e.g. KAFKA_EXTRA='{"security.protocol": "SASL_SSL"}'.
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
    log_format: str = "json"  # json | text
    environment: str = "local"
