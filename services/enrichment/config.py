"""Settings of the enrichment service (env prefix ``ENRICHMENT_``; Kafka, registry, Postgres: theirs)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.kernel.settings import DevDefault, ExactlyOnceSettings

#: Only for a developer's stack: public, so pseudonyms made with it can be reversed by guessing. Production
#: refuses it; other environments but ``local`` warn (services.kernel.service.check_production).
DEV_PII_KEY = "plg-dev-only-pii-key-change-me"


class EnrichmentSettings(ExactlyOnceSettings):
    """``ENRICHMENT_PII_KEY=...``, ``ENRICHMENT_TENANT_CACHE_TTL_SECONDS=30`` and so on."""

    model_config = SettingsConfigDict(env_prefix="ENRICHMENT_")

    # Ops endpoints (/metrics, /livez, /readyz).
    port: int = Field(default=8093, ge=0, le=65535)

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
    # The identity graph (docs/enrichment.md#bounded-memory). ``rocksdb``: at most ``state_memory_keys``
    # identify links in memory (~200 bytes each), the rest in a local RocksDB store under
    # ``state_dir``/<instance id>/, sealed at the identity view's offsets at a clean stop and reused at the
    # next start (only records written since are read). ``memory``: every link in memory, every start reads
    # identity-links whole. Merged sets stay in memory, at most ``identity_max_merged_per_customer`` user ids
    # per customer (an abuse guard: further merges are refused and counted).
    state_store: Literal["rocksdb", "memory"] = "rocksdb"
    state_dir: Path = Path(".plg/state/enrichment")
    state_memory_keys: int = Field(default=2_000_000, ge=1000)
    # RocksDB's block cache (its memtables add up to 2 x 16 MiB while writing).
    state_cache_mb: int = Field(default=32, ge=1)
    identity_max_merged_per_customer: int = Field(default=100_000, ge=2)

    # One Kafka transaction per batch, small and frequent: the added latency stays low (the loop's other
    # knobs: ExactlyOnceSettings).
    max_batch_events: int = Field(default=5_000, ge=1)
    batch_wait_ms: int = Field(default=20, ge=1)

    def development_defaults(self) -> list[DevDefault]:
        found = super().development_defaults()
        if self.pii_key.get_secret_value() == DEV_PII_KEY:
            found.append(
                DevDefault(
                    "ENRICHMENT_PII_KEY",
                    "is the public development key: pseudonyms can be reversed by guessing",
                )
            )
        return found
