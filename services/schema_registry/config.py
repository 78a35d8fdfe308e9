"""Settings of the schema registry: ``REGISTRY_*`` for the service itself, ``DATABASE_URL`` for its store."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.kernel.settings import DevDefault, ServiceSettings
from services.schema_registry.model import Compatibility


class RegistrySettings(ServiceSettings):
    """``REGISTRY_HOST``, ``REGISTRY_PORT``, ``REGISTRY_ADMIN_TOKEN``... and the kernel's ``DATABASE_*``."""

    model_config = SettingsConfigDict(env_prefix="REGISTRY_")

    port: int = Field(default=8081, ge=1, le=65535)
    # When set, writes (register, delete, config, mode) need it as a Bearer token or as the password of
    # HTTP Basic auth (Confluent clients send ``basic.auth.user.info``); unset = open registry (local dev;
    # production refuses it). An empty REGISTRY_ADMIN_TOKEN= counts as unset (kernel PlgSettings), never as
    # the empty password.
    admin_token: SecretStr | None = None
    # Also require the token on reads (schemas, subjects, config); health and metrics stay open.
    protect_reads: bool = False
    # Compatibility level while no global one has been PUT (Confluent's default is BACKWARD).
    default_compatibility: Compatibility = Compatibility.BACKWARD
    # Apply the SQL migrations at start-up (safe with several instances: the runner takes a lock).
    migrate: bool = True
    # Schemas (and their parsed form) kept in memory per instance; ids are immutable, so never stale.
    cache_size: int = Field(default=10_000, ge=1)
    # Seconds a request waits for a database connection before answering 503.
    db_timeout_seconds: float = Field(default=5.0, gt=0)
    # Request bodies above this are refused (42209) before being read; real schemas are a few KB.
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A request body not fully received this long after the registry started reading it is answered 408
    # (and the connection closed), so a client trickling bytes cannot hold a connection.
    body_read_timeout_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _reads_need_token(self) -> RegistrySettings:
        if self.protect_reads and self.admin_token is None:
            raise ValueError("REGISTRY_PROTECT_READS=true needs REGISTRY_ADMIN_TOKEN to be set")
        return self

    def development_defaults(self) -> list[DevDefault]:
        found = super().development_defaults()
        if self.admin_token is None:
            found.append(
                DevDefault(
                    "REGISTRY_ADMIN_TOKEN",
                    "is not set: registry writes are open, anyone who reaches the port can register or "
                    "delete schemas",
                )
            )
        return found
