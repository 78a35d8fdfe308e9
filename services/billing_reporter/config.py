"""Settings of the billing reporter (env prefix ``BILLING_``; Stripe's own ``STRIPE_*``; Kafka, registry
and Postgres use theirs). Secrets are ``SecretStr``: never logged, masked by ``--check-config``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.kernel.settings import DevDefault, PlgSettings, StreamServiceSettings

# Local defaults (docs/billing.md): stripe-mock of `make up` and a test-mode-looking key it accepts; the
# webhook secret signs the local stack's test webhooks. None of them reaches a real Stripe account.
LOCAL_STRIPE_API_BASE = "http://127.0.0.1:12120"  # the Stripe emulator of `make up`
LOCAL_STRIPE_API_KEY = "sk_test_plglocal"  # stripe-mock accepts any sk_test_ key
LOCAL_STRIPE_WEBHOOK_SECRET = "whsec_plg_local"  # noqa: S105 - a documented local default


class StripeSettings(PlgSettings):
    """``STRIPE_API_BASE``, ``STRIPE_API_KEY``, ``STRIPE_WEBHOOK_SECRET``."""

    model_config = SettingsConfigDict(env_prefix="STRIPE_", extra="ignore")

    api_base: str = LOCAL_STRIPE_API_BASE
    api_key: SecretStr = SecretStr(LOCAL_STRIPE_API_KEY)
    webhook_secret: SecretStr = SecretStr(LOCAL_STRIPE_WEBHOOK_SECRET)
    # Seconds one call may take; a meter event that timed out is retried with the same identifier.
    timeout_seconds: float = Field(default=10.0, gt=0)
    # Signed webhooks older than this are refused (Stripe's SDK default).
    webhook_tolerance_seconds: int = Field(default=300, ge=1)

    def development_defaults(self) -> list[DevDefault]:
        found = []
        if self.webhook_secret.get_secret_value() == LOCAL_STRIPE_WEBHOOK_SECRET:
            found.append(
                DevDefault(
                    "STRIPE_WEBHOOK_SECRET",
                    "is the public development secret: anyone can sign a webhook that grants a plan; use "
                    "the endpoint's signing secret (whsec_...) from Stripe",
                )
            )
        if self.api_key.get_secret_value().startswith(("sk_test_", "rk_test_")):
            found.append(DevDefault("STRIPE_API_KEY", "is a Stripe test-mode key: nothing is really billed"))
        host = urlsplit(self.api_base).hostname or ""
        if (
            self.api_base.rstrip("/") == LOCAL_STRIPE_API_BASE
            or host in ("localhost", "::1")
            or host.startswith("127.")
        ):
            found.append(
                DevDefault(
                    "STRIPE_API_BASE", "points at the local Stripe emulator; use https://api.stripe.com"
                )
            )
        return found


class BillingSettings(StreamServiceSettings):
    """``BILLING_PORT=8083``, ``BILLING_REQUESTS_PER_SECOND=20`` and so on."""

    model_config = SettingsConfigDict(env_prefix="BILLING_")

    port: int = Field(default=8083, ge=0, le=65535)
    group_id: str = "billing-reporter"
    instance_id: str = "0"
    # A crashed reporter's partitions move to another after this long (librdkafka's default is 45 s).
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    # Meters-and-plans file; default $PLG_METERING_CONFIG or deploy/config/metering.yaml.
    config_path: Path | None = None

    # The reporting window: each customer's meter is reported at most once per window (plus corrections).
    report_granularity: Literal["MINUTE", "HOUR", "DAY"] = "HOUR"
    # A window is reported this long after it ends (late events inside it come as corrections later).
    settle_seconds: float = Field(default=60.0, ge=0)
    # Level meters (MAX, LATEST, UNIQUE_COUNT) send their period-to-date value at most this often
    # (default: once per reporting window).
    level_interval_seconds: float | None = Field(default=None, ge=0)
    # Late corrections of one window are coalesced: at most one revision per this many seconds.
    correction_interval_seconds: float = Field(default=300.0, ge=0)
    # How often closed windows are looked for when no aggregates arrive.
    plan_interval_seconds: float = Field(default=5.0, gt=0)

    # The outbox sender: calls to Stripe per second (sandbox ~25/s, live meter events 1000/s), back-off,
    # circuit breaker.
    requests_per_second: float = Field(default=20.0, gt=0)
    backoff_base_seconds: float = Field(default=0.5, gt=0)
    backoff_cap_seconds: float = Field(default=60.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=1.0, gt=0)
    send_batch: int = Field(default=200, ge=1)
    # A claimed report is the claimer's this long: a sender killed mid-call leaves it to the next after it.
    lease_seconds: float = Field(default=30.0, gt=0)
    # Run the sender in this process (off: only the API and the ledger writer).
    send: bool = True

    # Period close: a period's final invoice is written this long after the period ended (late events
    # within the aggregator's grace, 1 h by default, and the settle delay must have been reported first).
    close_grace_seconds: float = Field(default=2 * 3600.0, ge=0)
    close_check_seconds: float = Field(default=60.0, gt=0)

    # Subscriptions: how long a past_due customer keeps their plan before dropping to free.
    past_due_grace_seconds: float = Field(default=7 * 86_400.0, ge=0)
    # How often past-due customers whose grace ran out are moved to the free plan.
    grace_check_seconds: float = Field(default=5.0, gt=0)
    free_plan: str = "free"
    # Where Checkout sends the customer back.
    checkout_success_url: str = "http://127.0.0.1:3000/billing/success?session_id={CHECKOUT_SESSION_ID}"
    checkout_cancel_url: str = "http://127.0.0.1:3000/billing/cancel"
    # Stripe's proration_behavior for a new subscription's first, partial period (checkout starts Stripe's
    # cycle at the customer's next plg period) and for plan changes (items moved): "none" (default: like
    # plg's invoice, no partial amounts; the new price applies from the next invoice) or
    # "create_prorations" (Stripe charges/credits the rest of the period). docs/billing.md.
    checkout_proration: Literal["none", "create_prorations"] = "none"
    plan_change_proration: Literal["none", "create_prorations", "always_invoice"] = "none"

    # Apply migrations at start (the stack does it too; safe to repeat).
    migrate: bool = True

    stripe: StripeSettings = Field(default_factory=StripeSettings)

    def development_defaults(self) -> list[DevDefault]:
        return [*super().development_defaults(), *self.stripe.development_defaults()]
