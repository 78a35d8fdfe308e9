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
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_SCHEMA_REGISTRY_URL = "http://127.0.0.1:8081"
DEFAULT_DATABASE_URL = "postgresql://plg@127.0.0.1:5433/plg"

#: ``PLG_ENVIRONMENT`` of a developer's machine (``make up``/``make run`` and the test stack set it): the
#: only environment where development defaults pass without a warning.
LOCAL = "local"
#: ``PLG_ENVIRONMENT`` in which a service refuses to start while any development default is in use.
PRODUCTION = "production"


@dataclass(frozen=True)
class DevDefault:
    """A development default still in use: the variable to set and what it risks, never its value."""

    variable: str
    problem: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.problem}"


def _allows_none(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


class PlgSettings(BaseSettings):
    """Base of every settings group: a secret given as an empty (or blank) string is never a secret.

    An empty ``GROWTH_ADMIN_TOKEN=`` would otherwise be a token that an empty ``Authorization: Bearer``
    matches. An optional secret left empty counts as unset (the feature it guards stays closed) and is
    remembered, so production mode can name it (:meth:`blank_secrets`); a required one (a signing key) is
    a validation error.
    """

    model_config = SettingsConfigDict(extra="ignore")

    _blank_secrets: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _blank_secrets_are_unset(cls, data: Any, handler: Any) -> Any:
        if not isinstance(data, dict):  # an instance (a group's default, revalidated): already checked
            return handler(data)
        blank: list[str] = []
        data = dict(data)
        for name, field in cls.model_fields.items():
            value = data.get(name)
            raw = value.get_secret_value() if isinstance(value, SecretStr) else value
            if not (_is_secret(field.annotation) and isinstance(raw, str) and not raw.strip()):
                continue
            if not _allows_none(field.annotation):
                raise ValueError(f"{cls.env_name(name)} is empty: a secret cannot be empty")
            data[name] = None
            blank.append(cls.env_name(name))
        model = handler(data)
        if isinstance(model, PlgSettings):
            model._blank_secrets = blank
        return model

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of ``field`` (``STRIPE_WEBHOOK_SECRET``)."""
        return f"{cls.model_config.get('env_prefix') or ''}{field}".upper()

    def blank_secrets(self) -> list[DevDefault]:
        """Optional secrets that were set to an empty string, in this group and the groups it holds."""
        found = [
            DevDefault(name, "is set but empty, so it is not used; set a real value")
            for name in self._blank_secrets
        ]
        for name in type(self).model_fields:
            value = getattr(self, name, None)
            if isinstance(value, PlgSettings):
                found.extend(value.blank_secrets())
        return found


class KafkaSettings(PlgSettings):
    """``KAFKA_BOOTSTRAP_SERVERS`` and friends."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP
    client_id: str | None = None
    # Extra librdkafka properties, e.g. KAFKA_EXTRA='{"security.protocol": "SASL_SSL"}'. Logged and
    # printed with secret-looking keys (sasl.*, *password*, ...) masked: see services/kernel/logs.py.
    extra: dict[str, str] = Field(default_factory=dict)


class SchemaRegistrySettings(PlgSettings):
    """``SCHEMA_REGISTRY_URL`` and the optional admin token for writes."""

    model_config = SettingsConfigDict(env_prefix="SCHEMA_REGISTRY_", extra="ignore")

    url: str = DEFAULT_SCHEMA_REGISTRY_URL
    # Bearer token sent on writes (register, delete, config) when the registry protects them.
    admin_token: SecretStr | None = None


class DatabaseSettings(PlgSettings):
    """``DATABASE_URL`` (libpq connection string or URI)."""

    model_config = SettingsConfigDict(env_prefix="DATABASE_", extra="ignore")

    url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    pool_min_size: int = 1
    pool_max_size: int = 10


class PlatformSettings(PlgSettings):
    """``PLG_*``: settings of the platform as a whole."""

    model_config = SettingsConfigDict(env_prefix="PLG_", extra="ignore")

    # Prefix for every topic name (and so every subject). Empty in production; tests use it to give each
    # run its own topics on a shared broker.
    topic_prefix: str = ""
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    # Where this runs: ``local`` (a developer's machine: ``make up``/``make run`` and the test stack set it),
    # ``production`` (every development default refuses the start), anything else (``staging``...: each
    # development default is warned about). Unset is ``unspecified``, which warns: a deployment that forgot
    # to say where it runs is not known to be a laptop.
    environment: str = Field(default="unspecified", pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    # Topics the provisioner creates: copies of each partition, and how many must have a write before it is
    # acknowledged (acks=all). The local stack's single broker needs 1 and 1; production at least 3 and 2,
    # so losing one broker's disk loses no acknowledged event.
    topic_replication_factor: int = Field(default=1, ge=1, le=32)
    topic_min_insync_replicas: int = Field(default=1, ge=1, le=32)
    # Server-sent event streams a service keeps open: per credential (API key, operator token, session)
    # and in all; beyond either, 503 with Retry-After (services/kernel/sse.py).
    sse_max_streams_per_key: int = Field(default=10, ge=1)
    sse_max_streams: int = Field(default=1000, ge=1)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        # Checked here so a typo is an invalid-config exit (2) listed with the other errors, not a crash
        # in logging.setLevel after start-up began.
        level = value.strip().upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> PlatformSettings:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(
                "PLG_TOPIC_MIN_INSYNC_REPLICAS cannot exceed PLG_TOPIC_REPLICATION_FACTOR (no write could "
                "ever be acknowledged)"
            )
        return self

    def development_defaults(self) -> list[DevDefault]:
        found = []
        if self.topic_replication_factor < 3:
            found.append(
                DevDefault(
                    "PLG_TOPIC_REPLICATION_FACTOR",
                    f"is {self.topic_replication_factor}: losing one broker loses acknowledged events; "
                    "use at least 3",
                )
            )
        if self.topic_min_insync_replicas < 2:
            found.append(
                DevDefault(
                    "PLG_TOPIC_MIN_INSYNC_REPLICAS",
                    f"is {self.topic_min_insync_replicas}: a write acknowledged by one replica is lost with "
                    "it; use at least 2",
                )
            )
        return found


class AuthSettings(PlgSettings):
    """``PLG_AUTH_*``: how every HTTP service checks credentials (services/kernel/auth.py)."""

    model_config = SettingsConfigDict(env_prefix="PLG_AUTH_", extra="ignore")

    # How long a key's or operator token's row is trusted before it is read again: revocation takes
    # effect within this time.
    key_cache_ttl_seconds: float = Field(default=30.0, ge=0)
    # How long an unknown id is remembered as unknown (a new key is usable at once unless tried before).
    key_negative_cache_ttl_seconds: float = Field(default=5.0, ge=0)
    # While PostgreSQL is down, a key seen less than this long ago keeps working from the cache.
    key_stale_ttl_seconds: float = Field(default=3600.0, ge=0)
    # Failed credential attempts (malformed, unknown, wrong secret, revoked) per client address: after this
    # many within the window, the address is answered 429 with Retry-After until the window ends, without
    # a database lookup (a credential the cache already holds as valid still passes). 0 turns it off.
    failed_attempts_limit: int = Field(default=50, ge=0)
    failed_attempts_window_seconds: float = Field(default=60.0, gt=0)
    # Memory bounds (docs/operations.md#memory-bounds): credential rows cached per cache (keys, operator
    # tokens; the least recently used go first), and client addresses whose failed attempts are counted
    # (the oldest windows are forgotten first).
    key_cache_size: int = Field(default=100_000, ge=1)
    failed_attempts_max_clients: int = Field(default=100_000, ge=1)


class ServiceSettings(PlgSettings):
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

    def development_defaults(self) -> list[DevDefault]:
        """Every development default these settings still use (production refuses them, other
        environments but ``local`` warn). A service adds its own: ``[*super().development_defaults(), ...]``.
        """
        return [*self.platform.development_defaults(), *self.blank_secrets()]


#: The dead-letter key's development value: public, so production refuses it (docs/privacy.md).
DEV_DLQ_KEY = "plg-dev-dlq-key-not-secret"


class DlqSettings(PlgSettings):
    """``PLG_DLQ_*``: the key dead letters' original bytes are encrypted with (services/kernel/dlq.py; every
    service and the CLI need the same one)."""

    model_config = SettingsConfigDict(env_prefix="PLG_DLQ_", extra="ignore")

    key: SecretStr = SecretStr(DEV_DLQ_KEY)

    def development_defaults(self) -> list[DevDefault]:
        if self.key.get_secret_value() == DEV_DLQ_KEY:
            return [DevDefault("PLG_DLQ_KEY", "is the public development key: anyone can read dead letters")]
        return []


class StreamServiceSettings(ServiceSettings):
    """A service on Kafka: adds the broker (``KAFKA_*``) and the schema registry (``SCHEMA_REGISTRY_*``),
    and the dead-letter key (``PLG_DLQ_*``)."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    dlq: DlqSettings = Field(default_factory=DlqSettings)

    def development_defaults(self) -> list[DevDefault]:
        return [*super().development_defaults(), *self.dlq.development_defaults()]


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
