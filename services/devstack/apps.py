"""The plg processes the local stack runs with ``python -m``: the schema registry and the app services.

To add a service to ``make run`` / ``make up``, append ONE line to ``APP_SERVICES``, e.g.::

    AppService("ingest", "services.ingest", port=8080, env_prefix="INGEST_"),

It is started after Kafka, Postgres, the registry and topic provisioning, with ``KAFKA_BOOTSTRAP_SERVERS``,
``SCHEMA_REGISTRY_URL`` and ``DATABASE_URL`` of the stack plus ``<env_prefix>HOST`` / ``<env_prefix>PORT``
set, and counts as up when ``GET http://host:port<health_path>`` (``/readyz`` unless given) answers 2xx.
A service whose package does not exist yet is skipped with a note, so the list can name work in progress.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AppService:
    name: str
    module: str
    port: int
    env_prefix: str
    # Readiness, as services.kernel.ops serves it: 200 once the service can do its work.
    health_path: str = "/readyz"
    # Extra environment for this service only.
    env: Mapping[str, str] = field(default_factory=dict)
    # A variable naming a data directory of the service's own, set to ``<stack root>/data/<name>`` (so a
    # test stack never shares the developer stack's files).
    data_dir_env: str | None = None
    # The variable naming the service's local state stores (docs/operations.md, "Warm restarts and state
    # volumes"), set to ``<stack root>/state/<name>``; docker-compose mounts a named volume there and the
    # Helm chart a StatefulSet's volume claim. Every service whose settings have a ``state_dir`` names it
    # here (tests/unit/devstack/test_compose_file.py checks both).
    state_dir_env: str | None = None

    @property
    def host_env(self) -> str:
        return f"{self.env_prefix}HOST"

    @property
    def port_env(self) -> str:
        return f"{self.env_prefix}PORT"

    def implemented(self) -> bool:
        """True when ``python -m <module>`` can run (the package and its ``__main__`` exist)."""
        try:
            return importlib.util.find_spec(f"{self.module}.__main__") is not None
        except ModuleNotFoundError:
            return False


# Infrastructure: started before topic provisioning, which registers the schemas in it.
SCHEMA_REGISTRY = AppService(
    "schema-registry", "services.schema_registry", port=8081, env_prefix="REGISTRY_", health_path="/readyz"
)

# App services, started in this order after provisioning and stopped in reverse. One line each.
APP_SERVICES: list[AppService] = [
    # one AppService(...) per line, in start order
    AppService("ingest", "services.ingest", port=8080, env_prefix="INGEST_"),
    AppService(
        "metering-aggregator",
        "services.metering_aggregator",
        port=8092,
        env_prefix="METERING_",
        health_path="/readyz",
        state_dir_env="METERING_STATE_DIR",
    ),
    AppService(
        "entitlements",
        "services.entitlements",
        port=8082,
        env_prefix="ENTITLEMENTS_",
        health_path="/readyz",
    ),
    AppService(
        "enrichment",
        "services.enrichment",
        port=8093,
        env_prefix="ENRICHMENT_",
        state_dir_env="ENRICHMENT_STATE_DIR",
    ),
    # Reads enrichment's output; serves the CS dashboard at http://127.0.0.1:8084/.
    AppService("health-score", "services.health_score", port=8084, env_prefix="HEALTH_"),
    # Needs stripe-mock (or STRIPE_API_BASE): the stack starts it before the app services.
    AppService("billing-reporter", "services.billing_reporter", port=8083, env_prefix="BILLING_"),
    AppService(
        "growth", "services.growth", port=8085, env_prefix="GROWTH_", state_dir_env="GROWTH_STATE_DIR"
    ),
    # Funnels, retention, the north star: enriched events in ClickHouse's engine (chDB) under its data dir.
    AppService(
        "analytics", "services.analytics", port=8086, env_prefix="ANALYTICS_", data_dir_env="ANALYTICS_PATH"
    ),
]
