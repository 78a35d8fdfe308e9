"""Composition root of the enrichment service: ``build_app(settings, lifecycle)`` wires everything."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from services.enrichment.config import EnrichmentSettings
from services.enrichment.handlers import Enricher
from services.enrichment.identity import IdentityGraph
from services.enrichment.pii import Scrubber
from services.enrichment.plan import TrackingPlan, load_plan
from services.enrichment.processor import INPUTS, OUTPUTS, SERVICE, EnrichmentHandler, apply_identity
from services.enrichment.tenants import PostgresTenants
from services.kernel.kafka import check_reachable
from services.kernel.lifecycle import Lifecycle
from services.kernel.privacy import APPLIED, Erasure, ErasureFollower, follow_erasures
from services.kernel.processing import ExactlyOnceLoop, exactly_once_service
from services.kernel.processing.store import LocalStore, store_path
from services.kernel.processing.view import MaterializedView, ViewCheckpoint
from services.kernel.serde import SchemaRegistry
from services.kernel.service import ConfigFile, LoadedFiles
from services.kernel.topics import IDENTITY_LINKS, USAGE_EVENTS, USAGE_EVENTS_DLQ, USAGE_EVENTS_IMPORT, topic
from services.plans.loader import load_config

#: Kafka's default delete.retention.ms (identity-links does not set its own): how long a tombstone stays.
TOMBSTONE_RETENTION_SECONDS = 86_400.0

log = logging.getLogger(__name__)


@dataclass
class EnrichmentApp:
    loop: ExactlyOnceLoop
    handler: EnrichmentHandler
    identity_view: MaterializedView
    tenants: PostgresTenants
    lifecycle: Lifecycle
    erasures: ErasureFollower

    @property
    def readiness(self) -> dict[str, Any]:
        return {
            "loop": self.loop.ready,
            "identity_view": self.identity_view.healthy,
            "tenant_invalidation": self.tenants.listening.is_set,
            "privacy_erasures": self.erasures.healthy,
        }

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or self.lifecycle.stop
        # Events enriched with a half-restored graph would carry wrong persons: start consuming once the
        # identity view has read identity-links up to where it stood at start (the handler checks it too).
        while not self.identity_view.ready.wait(0.1):
            if stop.is_set():
                return
        self.loop.run(stop)

    def close(self) -> None:
        self.lifecycle.close()


def _plan(settings: EnrichmentSettings) -> TrackingPlan:
    return load_plan(settings.plan_path, load_config(settings.config_path))


def plan_file() -> ConfigFile[EnrichmentSettings]:
    """The tracking plan as a config file: validated (with the meters it is checked against) before the
    service builds, every error listed (exit 2), summarised by ``--check-config``."""

    def summary(plan: TrackingPlan) -> dict[str, Any]:
        return {
            "version": plan.version,
            "effective_date": str(plan.effective_date),
            "mode": plan.mode.value,
            "unplanned_events": plan.unplanned_events.value,
            "events": sorted(plan.events),
            "pii_action": plan.pii.action.value,
            "sampling": {s.event: s.rate for s in plan.sampling},
        }

    return ConfigFile("tracking-plan", _plan, summary)


def build_app(
    settings: EnrichmentSettings, lifecycle: Lifecycle | None = None, files: LoadedFiles | None = None
) -> EnrichmentApp:
    life = lifecycle or Lifecycle(SERVICE)
    try:
        return _build(settings, life, plan_file().of(settings, files))  # as run_service loaded it
    except BaseException:
        life.close()
        raise


def _build(settings: EnrichmentSettings, life: Lifecycle, plan: TrackingPlan) -> EnrichmentApp:
    metering = load_config(settings.config_path)  # the meters only (the plan was checked against them)
    prefix = settings.platform.topic_prefix
    key = settings.pii_key.get_secret_value()  # a development key is warned about (or refused) by run_service
    scrubber = Scrubber(key.encode(), plan.pii.action, plan.pii.detect, plan.pii.scan_ids)
    store = None
    if settings.state_store == "rocksdb":
        links_name = topic(IDENTITY_LINKS, prefix).name
        path = store_path(settings.state_dir, settings.instance_id, links_name)
        # Closed after the identity view (pushed before it): the view seals it on its way out.
        store = life.push(LocalStore(path, cache_mb=settings.state_cache_mb), "identity store")
    graph = IdentityGraph(
        settings.identity_max_merged_per_customer, store=store, memory_links=settings.state_memory_keys
    )
    enricher = Enricher(
        plan,
        frozenset(m.event for m in metering.meters),
        scrubber,
        graph,
    )

    check_reachable(settings.kafka, timeout=10)
    registry = life.push(SchemaRegistry(settings.registry), "schema registry")
    tenants = life.push(
        PostgresTenants(
            settings.database.url.get_secret_value(),
            settings.tenant_cache_size,
            settings.tenant_cache_ttl_seconds,
        ).start(),
        "tenant context",
    )
    links = topic(IDENTITY_LINKS, prefix)
    checkpoint = None
    if store is not None:
        checkpoint = ViewCheckpoint(
            store,
            load=graph.load,
            write_all=graph.write_all,
            seal_content=graph.seal_content,
            # Tombstones on identity-links are kept this long: a store sealed longer ago may miss one.
            max_age_seconds=TOMBSTONE_RETENTION_SECONDS,
        )
    view = life.push(
        MaterializedView(
            settings.kafka,
            links.name,
            registry.decoder(reader_schema=links.schema_path),
            apply_identity(enricher),
            name=f"{SERVICE}-identity",
            checkpoint=checkpoint,
        ).start(),
        "identity view",
    )

    def forget(erasure: Erasure, new: bool) -> None:
        # Older requests were erased from identity-links (tombstones) before the view read it.
        if new:
            enricher.graph.forget(erasure.customer_id, erasure.matches)
            scrubber.forget_clean()
            APPLIED.labels(SERVICE, "memory").inc()

    erasures = follow_erasures(life, settings, registry, SERVICE, forget)
    handler = EnrichmentHandler(
        enricher,
        tenants.cache,
        input_topic=topic(USAGE_EVENTS, prefix).name,
        links_topic=links.name,
        graph_ready=view.ready.is_set,
        import_topic=topic(USAGE_EVENTS_IMPORT, prefix).name,
    )
    loop = exactly_once_service(
        settings,
        service=SERVICE,
        registry=registry,
        lifecycle=life,
        handler=handler,
        inputs=INPUTS,
        outputs=OUTPUTS,
        dead_letters=USAGE_EVENTS_DLQ,
        tombstones=True,  # identity-links tombstones erase links; usage-events ones are dead-lettered
    )
    log.info(
        "enrichment ready",
        extra={
            "instance_id": settings.instance_id,
            "tracking_plan_version": plan.version,
            "events": len(plan.events),
            "mode": plan.mode.value,
            "pii_action": plan.pii.action.value,
        },
    )
    return EnrichmentApp(loop, handler, view, tenants, life, erasures)
