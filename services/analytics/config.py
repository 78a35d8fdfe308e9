"""Settings of the analytics service (env prefix ``ANALYTICS_``; Kafka, registry and Postgres use theirs)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.analytics.pql import PqlRules
from services.kernel.oidc import OidcSettings
from services.kernel.sessions import SessionSettings
from services.kernel.settings import DevDefault, StreamServiceSettings


class AnalyticsSettings(StreamServiceSettings):
    """``ANALYTICS_PORT=8086``, ``ANALYTICS_STORE=chdb``, ``ANALYTICS_PATH=.plg/analytics`` and so on."""

    model_config = SettingsConfigDict(env_prefix="ANALYTICS_")

    port: int = Field(default=8086, ge=0, le=65535)
    group_id: str = "analytics"
    # Stable per replica: static group membership, so a restarted replica takes its partitions back at once
    # instead of after the session timeout.
    instance_id: str = "0"
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    # chdb: ClickHouse's engine in this process, data under `path` (one process owns it);
    # clickhouse: a ClickHouse server at `clickhouse_url` (http://user:password@host:8123/), same SQL.
    store: Literal["chdb", "clickhouse"] = "chdb"
    path: Path = Path(".plg/analytics")
    clickhouse_url: SecretStr | None = None
    # activation.yaml (north star, thresholds); default $PLG_ACTIVATION_CONFIG, else deploy/config/.
    activation_path: Path | None = None
    # Freshness: an event is queryable about one batch_wait after enrichment wrote it.
    batch_wait_seconds: float = Field(default=0.2, gt=0)
    max_batch: int = Field(default=10_000, ge=1)
    # Default time range of a question without since/until: this many days back from now.
    default_days: int = Field(default=90, ge=1, le=3660)
    # The CS dashboard's address, linked from the console's navigation.
    health_url: str = "http://127.0.0.1:8084/"
    # Product-qualified leads (docs/analytics.md): which accounts sales looks at, the window of the signals,
    # how often the watcher evaluates them, and where qualifications go besides the pql topic.
    pql_plans: list[str] = Field(default_factory=lambda: ["free"])
    pql_trialing: bool = True
    pql_window_days: int = Field(default=14, ge=1, le=180)
    pql_min_growth: float = Field(default=1.5, gt=1.0)
    pql_min_events: int = Field(default=20, ge=1)
    pql_limit_percent: int = Field(default=80, ge=1, le=100)
    pql_interval_seconds: float = Field(default=60.0, gt=0)
    # Webhook URLs that receive every new lead (logged with path and query masked: often a credential).
    pql_webhook_urls: list[str] = Field(default_factory=list)
    # Signs every lead webhook like the alert webhooks (Plg-Signature, services/kernel/webhooks.py).
    pql_webhook_signing_secret: SecretStr | None = None

    def pql_rules(self) -> PqlRules:
        return PqlRules(
            plans=frozenset(self.pql_plans),
            trialing=self.pql_trialing,
            window_days=self.pql_window_days,
            min_growth=self.pql_min_growth,
            min_events=self.pql_min_events,
            limit_percent=self.pql_limit_percent,
        )

    # The console pages' sign-in, as the CS dashboard's: browser sessions (PLG_SESSION_*) and single sign-on
    # (PLG_OIDC_*; off while PLG_OIDC_ISSUER is unset, then operators sign in with a token).
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    oidc: OidcSettings = Field(default_factory=OidcSettings)

    def development_defaults(self) -> list[DevDefault]:
        found = [
            *super().development_defaults(),
            *self.sessions.development_defaults(),
            *self.oidc.development_defaults(),
        ]
        if self.pql_webhook_urls and self.pql_webhook_signing_secret is None:
            found.append(
                DevDefault(
                    "ANALYTICS_PQL_WEBHOOK_SIGNING_SECRET",
                    "is not set: lead webhooks go unsigned, a receiver cannot tell them from forgeries",
                )
            )
        return found
