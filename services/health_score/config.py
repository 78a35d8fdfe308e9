"""Settings of the health-score service (env prefix ``HEALTH_``; Kafka, registry and Postgres use theirs)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.kernel.oidc import OidcSettings
from services.kernel.sessions import SessionSettings
from services.kernel.settings import DevDefault, StreamServiceSettings


class HealthSettings(StreamServiceSettings):
    """``HEALTH_PORT=8084``, ``HEALTH_BATCH_INTERVAL_SECONDS=300`` and so on."""

    model_config = SettingsConfigDict(env_prefix="HEALTH_")

    port: int = Field(default=8084, ge=0, le=65535)
    # What this process runs: "all" (scorer, alert sender and API, one process), "scorer" (the loop and the
    # alert sender; its HTTP port serves ops endpoints and the API too), or "api" (only the API and the
    # dashboard, answered from the compacted customer-health and customer-alerts topics read as views and
    # the history in PostgreSQL — any number of these, each off the scorer's GIL; docs/health-score.md).
    role: Literal["all", "scorer", "api"] = "all"
    group_id: str = "health-score"
    # Names this instance in its claims of home partitions (health_partition_owners.owner) and its Kafka
    # client ids: give each scorer replica its own (the pod name).
    instance_id: str = "0"
    # A crashed scorer's partitions (and so its customers) move to the others after this long.
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    # How often a scorer folds its homes' inbox: entitlement events and strays read by another instance
    # reach the customer's score within about this much
    # (docs/health-score.md#scaling-out-several-scorer-instances).
    inbox_interval_seconds: float = Field(default=1.0, gt=0)
    # The metric registry; default $HEALTH_CONFIG_PATH or deploy/config/health.yaml.
    config_path: Path | None = None
    # Meters-and-plans file (seats per plan); default $PLG_METERING_CONFIG or deploy/config/metering.yaml.
    plans_path: Path | None = None
    # The batch path: every customer recomputed from PostgreSQL's history this often.
    batch_interval_seconds: float = Field(default=300.0, gt=0)
    # Webhook URLs that receive every alert (added to health.yaml's `webhooks`). Logged and printed with
    # their path and query masked (they often hold the receiver's credential).
    webhook_urls: list[str] = Field(default_factory=list)
    # Signs every alert webhook (HMAC-SHA256, header Plg-Signature: t=...,v1=...; docs/health-score.md).
    # Unset: webhooks go unsigned, which only the local stack accepts.
    webhook_signing_secret: SecretStr | None = None
    # The real-time path's batches: the latency of a changed score is about batch_wait plus one transaction.
    batch_wait_seconds: float = Field(default=0.05, gt=0)
    max_batch: int = Field(default=5000, ge=1)
    # Days of daily scores the API and the sparklines show.
    history_days: int = Field(default=56, ge=1, le=400)
    # Persons whose key actions a customer-day keeps (active users); more are counted as events only, so a
    # flood of made-up person ids cannot grow a customer's facts without bound (docs/health-score.md).
    max_persons_per_day: int = Field(default=10_000, ge=1)
    # Customers whose facts the scorer keeps in memory; past it the least recently scored go, and are
    # loaded again from PostgreSQL when they come back (the facts there are the truth).
    cache_customers: int = Field(default=100_000, ge=1)
    # Python's GIL switch interval for this process (sys.setswitchinterval): the API's tail latency while
    # the scorer computes. Python's default is 0.005.
    gil_switch_interval_seconds: float = Field(default=0.001, gt=0, le=0.1)
    # Apply migrations at start (the stack does it too; safe to repeat).
    migrate: bool = True
    # The CS dashboard's sign-in: browser sessions (PLG_SESSION_*) and single sign-on (PLG_OIDC_*; off
    # while PLG_OIDC_ISSUER is unset, then operators sign in with a token).
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    oidc: OidcSettings = Field(default_factory=OidcSettings)

    def development_defaults(self) -> list[DevDefault]:
        found = [
            *super().development_defaults(),
            *self.sessions.development_defaults(),
            *self.oidc.development_defaults(),
        ]
        if self.webhook_signing_secret is None:
            found.append(
                DevDefault(
                    "HEALTH_WEBHOOK_SIGNING_SECRET",
                    "is not set: alert webhooks go unsigned, a receiver cannot tell them from forgeries",
                )
            )
        return found
