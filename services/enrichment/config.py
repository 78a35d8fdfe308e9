"""Settings of the enrichment service (env prefix ``ENRICHMENT_``; Kafka, registry, Postgres: theirs)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.kernel.settings import StreamServiceSettings

#: Only for a developer's stack: ``--check-config`` and the start-up log show that it is the default.
DEV_PII_KEY = "plg-dev-only-pii-key-change-me"


class EnrichmentSettings(StreamServiceSettings):
    """``ENRICHMENT_PII_KEY=...``, ``ENRICHMENT_TENANT_CACHE_TTL_SECONDS=30`` and so on."""

    model_config = SettingsConfigDict(env_prefix="ENRICHMENT_")

    # Ops endpoints (/metrics, /livez, /readyz).
    port: int = Field(default=8093, ge=0, le=65535)

    # Stable per instance (becomes the transactional.id: a restarted instance fences its predecessor).
    instance_id: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    group_id: str = "enrichment"

    # Tracking plan (default $PLG_TRACKING_PLAN or deploy/config/tracking-plan.yaml) and the meters-and-plans
    # file it is checked against (default $PLG_METERING_CONFIG or deploy/config/metering.yaml).
    plan_path: Path | None = None
    config_path: Path | None = None

    # HMAC-SHA-256 key of PII pseudonyms. Rotating it changes every pseudonym (joins across the rotation
    # break), so keep it stable and secret; set it in every non-local deployment.
    pii_key: SecretStr = SecretStr(DEV_PII_KEY)

    # Tenant context cache: entries kept at most (LRU) and how long one is trusted without a change
    # notification (PostgreSQL NOTIFY invalidates at once; the TTL bounds staleness after a missed one).
    tenant_cache_size: int = Field(default=10_000, ge=1)
    tenant_cache_ttl_seconds: float = Field(default=60.0, gt=0)

    # One Kafka transaction per batch: at most this many records, waiting at most this long for them.
    max_batch_events: int = Field(default=5_000, ge=1)
    batch_wait_ms: int = Field(default=20, ge=1)
    transaction_timeout_ms: int = Field(default=30_000, ge=1_000)
    commit_timeout_seconds: float = Field(default=30.0, gt=0)
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    # Register our output schemas if missing (provisioning normally has).
    auto_register_schemas: bool = False

    @property
    def transactional_id(self) -> str:
        return f"{self.group_id}-{self.instance_id}"
