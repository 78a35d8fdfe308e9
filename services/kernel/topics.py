"""The topic catalogue: every topic of the platform declared once, and provisioning from it.

Broker auto-creation is off, so a topic exists only because it is declared here. Each declaration
carries the Avro record file of its value (``schemas/<file>.avsc``), whose subject is ``<topic>-value``
(Confluent's TopicNameStrategy). Keys are plain UTF-8 strings, so they need no subject.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"

DAY_MS = 24 * 60 * 60 * 1000

CleanupPolicy = Literal["delete", "compact", "compact,delete"]


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, size, value schema and retention."""

    name: str
    partitions: int
    value_schema: str | None
    cleanup_policy: CleanupPolicy = "delete"
    retention_ms: int | None = 7 * DAY_MS
    description: str = ""
    config: Mapping[str, str] = field(default_factory=dict)

    @property
    def value_subject(self) -> str:
        return f"{self.name}-value"

    @property
    def schema_path(self) -> Path | None:
        return SCHEMAS_DIR / f"{self.value_schema}.avsc" if self.value_schema else None

    def broker_config(self) -> dict[str, str]:
        config: dict[str, str] = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        config.update(self.config)
        return config

    def prefixed(self, prefix: str) -> TopicSpec:
        return replace(self, name=f"{prefix}{self.name}") if prefix else self


USAGE_EVENTS = "usage-events"
USAGE_EVENTS_ENRICHED = "usage-events-enriched"
# Historical events (POST /v1/import, plg import): enriched and kept for analytics, never metered — the
# metering aggregator does not read this topic, so nothing on it can be billed or counted by entitlements.
USAGE_EVENTS_IMPORT = "usage-events-import"
#: The property enrichment sets on an imported event (boolean true) on ``usage-events-enriched``.
HISTORICAL_PROPERTY = "$historical"
USAGE_EVENTS_DLQ = "usage-events-dlq"
USAGE_AGGREGATES = "usage-aggregates"
USAGE_PERIODS = "usage-periods"
ENTITLEMENT_EVENTS = "entitlement-events"
BILLING_REPORTS = "billing-reports"
BILLING_INVOICES = "billing-invoices"
CUSTOMER_HEALTH = "customer-health"
CUSTOMER_ALERTS = "customer-alerts"
IDENTITY_LINKS = "identity-links"
ACTIVATION_EVENTS = "activation-events"
ABUSE_SIGNALS = "abuse-signals"
PRIVACY_ERASURES = "privacy-erasures"
# Product-qualified leads (services/analytics): free or trialing accounts worth a sales conversation.
PQL = "pql"

# Compacted topics keep the latest value per key forever; "delete" topics keep records for retention.ms.
PLATFORM_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        USAGE_EVENTS,
        6,
        "usage_event",
        retention_ms=35 * DAY_MS,
        description="Raw usage and telemetry events from ingest and direct producers (key customer_id).",
    ),
    TopicSpec(
        USAGE_EVENTS_IMPORT,
        6,
        "usage_event",
        retention_ms=7 * DAY_MS,
        description="Imported history (POST /v1/import): enriched and stored for analytics, never metered.",
    ),
    TopicSpec(
        USAGE_EVENTS_ENRICHED,
        6,
        "enriched_usage_event",
        retention_ms=35 * DAY_MS,
        description="Validated, identity-resolved, PII-scrubbed events for CS dashboards.",
    ),
    TopicSpec(
        USAGE_EVENTS_DLQ,
        3,
        "dead_letter",
        retention_ms=35 * DAY_MS,
        description="Records a service could not process, with the original bytes and the reason.",
    ),
    TopicSpec(
        USAGE_AGGREGATES,
        6,
        "usage_aggregate",
        cleanup_policy="compact",
        retention_ms=None,
        description="Exactly-once running totals per customer, meter and window (minute and hour windows "
        "are tombstoned after their retention by the aggregator's sweeper; see docs/metering.md).",
    ),
    TopicSpec(
        USAGE_PERIODS,
        6,
        "usage_aggregate",
        # Compacted, and deleted by age as a backstop. A limit counts usage over the invoice's usage
        # period (docs/billing.md "Billing windows"): a month, or up to 36 months (the longest custom
        # window) when a price bills usage per_period, whose first month's record must survive a restart
        # of the entitlement view. A record is written at most ~5 min before its month starts and months
        # last at most 31 days, so 36 * 31 + 40 days never drops a month of a current or just-closed usage
        # period, and the topic holds at most ~38 monthly totals per series whatever its age.
        cleanup_policy="compact,delete",
        retention_ms=(36 * 31 + 40) * DAY_MS,
        description="The ungrouped billing-period totals of usage-aggregates, for readers that need only "
        "current periods (the entitlement view): bounded whatever the deployment's age.",
        config={"segment.ms": str(DAY_MS)},
    ),
    TopicSpec(
        ENTITLEMENT_EVENTS,
        3,
        "entitlement_event",
        retention_ms=35 * DAY_MS,
        description="Plan-limit threshold crossings (80/90/100 %).",
    ),
    TopicSpec(
        BILLING_REPORTS,
        3,
        "billing_report",
        retention_ms=400 * DAY_MS,
        description="Usage reported to Stripe.",
    ),
    TopicSpec(
        BILLING_INVOICES,
        3,
        "billing_invoice",
        retention_ms=400 * DAY_MS,
        description="Final invoices, one per customer and closed billing period.",
    ),
    TopicSpec(
        CUSTOMER_HEALTH,
        3,
        "customer_health",
        cleanup_policy="compact",
        retention_ms=None,
        description="Latest health score per customer.",
    ),
    TopicSpec(
        CUSTOMER_ALERTS,
        3,
        "customer_alert",
        retention_ms=90 * DAY_MS,
        description="Health alerts: churn risk, band dropped, usage anomaly, with hysteresis.",
    ),
    TopicSpec(
        IDENTITY_LINKS,
        3,
        "identity_link",
        cleanup_policy="compact",
        retention_ms=None,
        description="anonymous_id -> user_id links from identify calls.",
    ),
    TopicSpec(
        ACTIVATION_EVENTS,
        3,
        "activation_event",
        retention_ms=35 * DAY_MS,
        description="Activation thresholds crossed, once per person (or customer) and threshold (growth).",
    ),
    TopicSpec(
        ABUSE_SIGNALS,
        3,
        "abuse_signal",
        retention_ms=90 * DAY_MS,
        description="Free-tier abuse guard: per-customer anomalies and cap breaches with their evidence "
        "(metering); a signal whose action is suspend suspends the customer.",
    ),
    TopicSpec(
        PRIVACY_ERASURES,
        3,
        "privacy_erasure",
        # Long: a service that was down (or is deployed later, e.g. an analytics store) still applies every
        # erasure when it comes back. The records name persons only by salted hashes (docs/privacy.md).
        retention_ms=400 * DAY_MS,
        description="Erasure requests (plg privacy forget): every service forgets the person they name.",
    ),
    TopicSpec(
        PQL,
        3,
        "pql",
        retention_ms=90 * DAY_MS,
        description="Product-qualified leads: a free or trialing account qualified by its activation, usage "
        "growth and limit hits, with the evidence (analytics; once per account, pql_id deduplicates).",
    ),
)

_REGISTRY: dict[str, TopicSpec] = {t.name: t for t in PLATFORM_TOPICS}


def declare(spec: TopicSpec) -> TopicSpec:
    """Add a service-owned topic (e.g. a changelog) to the catalogue; declaring it twice is an error."""
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"topic {spec.name!r} is already declared differently")
    _REGISTRY[spec.name] = spec
    return spec


def catalogue(prefix: str = "") -> list[TopicSpec]:
    """Every declared topic, with ``prefix`` applied to the names."""
    return [t.prefixed(prefix) for t in _REGISTRY.values()]


def topic(name: str, prefix: str = "") -> TopicSpec:
    """The declaration of one topic by its unprefixed name."""
    try:
        return _REGISTRY[name].prefixed(prefix)
    except KeyError:
        raise KeyError(f"topic {name!r} is not declared in the catalogue") from None


def with_schemas(specs: Iterable[TopicSpec]) -> list[TopicSpec]:
    return [t for t in specs if t.value_schema]


# The metering aggregator's state changelog (JSON, not Avro: internal, never read by other services).
# Partition p holds the state of usage-events partition p, so it has the same partition count; compaction
# keeps the latest value per key, tombstones drop expired state. See docs/metering.md.
METERING_CHANGELOG = "metering-aggregator-changelog"
declare(
    TopicSpec(
        METERING_CHANGELOG,
        _REGISTRY[USAGE_EVENTS].partitions,
        None,
        cleanup_policy="compact",
        retention_ms=None,
        description="Metering aggregator state (dedup ids, windows, thresholds fired) per input partition.",
        # Roll segments every 10 minutes: compaction never touches the active segment, and everything not
        # compacted yet is read again by a restore.
        config={"segment.ms": str(10 * 60 * 1000), "min.cleanable.dirty.ratio": "0.25"},
    )
)


# The growth service's activation state (counts per person/customer and event, thresholds fired), JSON,
# co-partitioned with its input usage-events-enriched like the metering changelog. See docs/growth.md.
GROWTH_CHANGELOG = "growth-activation-changelog"
declare(
    TopicSpec(
        GROWTH_CHANGELOG,
        _REGISTRY[USAGE_EVENTS_ENRICHED].partitions,
        None,
        cleanup_policy="compact",
        retention_ms=None,
        description="Growth activation state (counts, day buckets, thresholds fired) per input partition.",
        config={"segment.ms": str(10 * 60 * 1000), "min.cleanable.dirty.ratio": "0.25"},
    )
)
