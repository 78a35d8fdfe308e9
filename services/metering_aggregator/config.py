"""Settings of the metering aggregator (env prefix ``METERING_``; Kafka, registry and Postgres use theirs)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.kernel.settings import ExactlyOnceSettings
from services.metering_aggregator.model import Rules
from services.metering_aggregator.retention import RetentionPolicy
from services.plans.periods import DAY_MS, HOUR_MS, MINUTE_MS


class MeteringSettings(ExactlyOnceSettings):
    """``METERING_INSTANCE_ID=agg-1``, ``METERING_GRACE_SECONDS=3600`` and so on."""

    model_config = SettingsConfigDict(env_prefix="METERING_")

    # Ops endpoints (/metrics, /livez, /readyz) of the aggregator process (``host`` from the base).
    port: int = Field(default=8092, ge=0, le=65535)

    group_id: str = "metering-aggregator"
    # Meters-and-plans file; default $PLG_METERING_CONFIG or deploy/config/metering.yaml.
    config_path: Path | None = None

    # Events older than this when they reached Kafka (event time vs. the partition's clock: the records'
    # Kafka timestamps, never ahead of the wall clock) are dead-lettered as late_event. A backlog after an
    # outage is judged by when it arrived, not by when the aggregator gets to it.
    grace_seconds: int = Field(default=3600, ge=0)
    # Event ids are remembered this long after their event time, on the same clock (>= grace: dedup is
    # then exact).
    dedup_horizon_seconds: int = Field(default=86_400, ge=0)
    # Events further ahead of their arrival than this are dead-lettered as future_event (clock skew).
    future_tolerance_seconds: int = Field(default=300, ge=0)

    # One Kafka transaction per consumed batch (the loop's other knobs: ExactlyOnceSettings).
    max_batch_events: int = Field(default=50_000, ge=1)
    # How often expired state is dropped (and tombstoned in the changelog).
    eviction_interval_seconds: float = Field(default=10.0, gt=0)

    # How a producer picks the partition of a customer's events: librdkafka's default (``consistent``,
    # CRC32 of the key — the kernel producer and confluent-kafka apps) or the Java client's ``murmur2``.
    # Events found on another partition are moved to their customer's home partition (in the transaction),
    # so each customer's dedup and totals live in exactly one place.
    home_partitioner: Literal["consistent", "murmur2"] = "consistent"

    # Where partition state lives besides the changelog (docs/metering.md#state-on-disk): ``rocksdb`` keeps
    # at most ``dedup_memory_ids`` dedup ids in memory (this instance's, shared by its partitions; ~93 MB
    # per million) and the rest in a local RocksDB store per partition under ``state_dir``/<instance id>/,
    # which a restart or a partition coming back reuses instead of replaying the changelog when it is
    # sealed at the committed offset. ``memory``: everything in memory, every restore replays.
    state_store: Literal["rocksdb", "memory"] = "rocksdb"
    state_dir: Path = Path(".plg/state/metering")
    dedup_memory_ids: int = Field(default=5_000_000, ge=1000)
    # At most this many windows (this instance's, shared by its partitions) stay in memory with
    # ``rocksdb``; the least recently touched series (customer, meter, group) beyond it move to the store
    # with all their windows and come back on their next event (one point lookup).
    window_memory_windows: int = Field(default=1_000_000, ge=1)
    # RocksDB's block cache per partition store (its memtables add up to 2 x 16 MiB while writing).
    state_cache_mb: int = Field(default=32, ge=1)

    # Customers (plan, anchor day) are re-read this often; unknown ones are looked up at once.
    customers_refresh_seconds: float = Field(default=30.0, gt=0)
    # Base of the upgrade link in threshold events and entitlement answers.
    upgrade_url: str = "http://127.0.0.1:3000/billing/upgrade"

    # Retention by window size on usage-aggregates (docs/metering.md): expired windows are tombstoned by a
    # sweep every ``retention_sweep_interval_seconds`` (0 turns the sweep off). Counted from the window's
    # end; unset (null) keeps that size forever. Billing periods are kept by default: invoices need them.
    minute_retention_hours: float | None = Field(default=48.0, gt=0)
    hour_retention_days: float | None = Field(default=90.0, gt=0)
    day_retention_days: float | None = Field(default=None, gt=0)
    period_retention_days: float | None = Field(default=None, gt=0)
    retention_sweep_interval_seconds: float = Field(default=3600.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> MeteringSettings:
        self.rules()  # raises when the dedup horizon is shorter than the grace
        return self

    def retention(self) -> RetentionPolicy:
        # A window is still written until its end + grace: expiring it sooner would only make the sweep and
        # the aggregator take turns, so a retention under the grace (a backfill raises it) is raised to it.
        floor = self.grace_seconds * 1000 + MINUTE_MS

        def ms(value: float | None, unit_ms: int) -> int | None:
            return None if value is None else max(floor, int(value * unit_ms))

        return RetentionPolicy(
            minute_ms=ms(self.minute_retention_hours, HOUR_MS),
            hour_ms=ms(self.hour_retention_days, DAY_MS),
            day_ms=ms(self.day_retention_days, DAY_MS),
            period_ms=ms(self.period_retention_days, DAY_MS),
        )

    def rules(self) -> Rules:
        return Rules(
            grace_ms=self.grace_seconds * 1000,
            dedup_horizon_ms=self.dedup_horizon_seconds * 1000,
            future_tolerance_ms=self.future_tolerance_seconds * 1000,
        )
