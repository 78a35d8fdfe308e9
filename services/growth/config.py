"""Settings of the growth service (env prefix ``GROWTH_``; Kafka, registry and Postgres use theirs)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.kernel.settings import DevDefault, ExactlyOnceSettings

#: The admin token docker-compose.yml once fell back to: public, so never a credential.
PUBLIC_DEV_ADMIN_TOKEN = "plg-dev-only-admin-token-change-me"  # noqa: S105 - listed to be refused


class GrowthSettings(ExactlyOnceSettings):
    """``GROWTH_PORT=8085``, ``GROWTH_ADMIN_TOKEN=...`` and so on."""

    model_config = SettingsConfigDict(env_prefix="GROWTH_")

    port: int = Field(default=8085, ge=0, le=65535)
    # A shared bearer token of the flag admin API, taken as an admin operator named GROWTH_ADMIN_TOKEN in
    # the audit. Optional: operator tokens (`plg operators create`) and browser sessions are the way in.
    admin_token: SecretStr | None = None

    # Config files; default $PLG_FLAGS_CONFIG / $PLG_ONBOARDING_CONFIG / $PLG_ACTIVATION_CONFIG or
    # deploy/config/{flags,onboarding,activation}.yaml.
    flags_path: Path | None = None
    onboarding_path: Path | None = None
    activation_path: Path | None = None

    # SSE: a comment line this often keeps proxies from closing an idle stream.
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # Flags are re-read this often even without a NOTIFY (a lost LISTEN connection heals within this).
    flags_poll_seconds: float = Field(default=30.0, gt=0)
    # Exposure events ($flag_exposure on usage-events) are sent once per identity, flag version and
    # variant per process, remembering this many.
    exposure_memory: int = Field(default=100_000, ge=0)
    # Server-side sticky assignments kept in memory (the table holds them all).
    sticky_cache_size: int = Field(default=100_000, ge=0)
    # Flag overrides (set_flag actions) cached per (customer, person) for 2 s; the least recently used
    # beyond this many are dropped and read again (docs/operations.md#memory-bounds).
    overrides_cache_size: int = Field(default=100_000, ge=0)
    # A sticky assignment unused this long is deleted (a person who comes back is bucketed again); one in
    # use is kept. Checked every sticky_prune_interval_seconds.
    sticky_retention_days: int = Field(default=90, ge=1)
    sticky_prune_interval_seconds: float = Field(default=3600.0, gt=0)

    # The activation loop (usage-events-enriched -> activation-events), run in this process.
    activation_enabled: bool = True
    # An abuse guard (docs/growth.md#bounded-state): persons each partition tracks per customer; a new person
    # past it counts only in the customer scope. Not a memory bound: memory is state_memory_keys.
    activation_max_persons_per_customer: int = Field(default=1_000_000, ge=1)
    # Where the activation state lives besides its changelog (the kernel's local store, docs/kernel.md):
    # ``rocksdb`` keeps at most ``state_memory_keys`` entries (counters, crossings; ~1 KB each in memory)
    # for this instance, shared by its partitions, and the rest in a RocksDB store per partition under
    # ``state_dir``/<instance id>/, reused on restart instead of replaying the changelog when it is sealed
    # at the committed offset. ``memory``: everything in memory, every restore replays.
    state_store: Literal["rocksdb", "memory"] = "rocksdb"
    state_dir: Path = Path(".plg/state/growth")
    state_memory_keys: int = Field(default=1_000_000, ge=1000)
    # RocksDB's block cache per partition store (its memtables add up to 2 x 16 MiB while writing).
    state_cache_mb: int = Field(default=16, ge=1)
    # Its group (the loop's other knobs, instance id and transactional.id: ExactlyOnceSettings).
    group_id: str = "growth-activation"

    def development_defaults(self) -> list[DevDefault]:
        found = super().development_defaults()
        if self.admin_token is not None and self.admin_token.get_secret_value() == PUBLIC_DEV_ADMIN_TOKEN:
            found.append(
                DevDefault("GROWTH_ADMIN_TOKEN", "is the public development token: anyone can change flags")
            )
        return found
