"""Settings of the entitlement API (env prefix ``ENTITLEMENTS_``; Kafka, registry and Postgres use theirs)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kernel.settings import StreamServiceSettings


class EntitlementsSettings(StreamServiceSettings):
    """``ENTITLEMENTS_PORT=8082``, ``ENTITLEMENTS_UPGRADE_URL=https://app.example.com/upgrade`` and so on."""

    model_config = SettingsConfigDict(env_prefix="ENTITLEMENTS_")

    port: int = Field(default=8082, ge=0, le=65535)
    # Meters-and-plans file; default $PLG_METERING_CONFIG or deploy/config/metering.yaml.
    config_path: Path | None = None
    # Base of the link the front end opens to upgrade; customer_id, feature and plan are appended.
    upgrade_url: str = "http://127.0.0.1:3000/billing/upgrade"
    # Customers (plan, anchor day) are re-read this often; an unknown id is looked up at once.
    customers_refresh_seconds: float = Field(default=30.0, gt=0)
    # An id found absent is answered 404 from memory for this long (protects the database).
    unknown_customer_ttl_seconds: float = Field(default=1.0, ge=0)
    # Customers whose credit grants and trial features are cached (each cache): the least recently used
    # beyond are dropped and read again on their next check (docs/operations.md#memory-bounds).
    customer_cache_size: int = Field(default=100_000, ge=1)
    # How many monthly periods per customer and meter the view keeps (current + late updates to previous);
    # raised at start to cover the longest usage period of the price book (a price billing usage
    # ``per_period`` over a year is limited over its 12 months).
    periods_kept: int = Field(default=3, ge=1)
