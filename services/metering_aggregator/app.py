"""Composition root of the metering aggregator: ``build_app(settings)`` opens and wires every resource."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from services.customers import CustomerDirectory, suspension
from services.kernel.db import open_pool
from services.kernel.kafka import check_reachable
from services.kernel.lifecycle import Lifecycle
from services.kernel.ops import ReadinessCheck
from services.kernel.partitioning import key_partitioner
from services.kernel.processing import ExactlyOnceLoop, exactly_once_service
from services.kernel.processing.store import LocalStore, store_path
from services.kernel.provision import partition_count
from services.kernel.serde import SchemaRegistry
from services.kernel.service import LoadedFiles
from services.kernel.topics import METERING_CHANGELOG, USAGE_AGGREGATES, USAGE_EVENTS, USAGE_EVENTS_DLQ, topic
from services.metering_aggregator.config import MeteringSettings
from services.metering_aggregator.processor import INPUTS, OUTPUTS, SERVICE, MeteringHandler, Topics
from services.metering_aggregator.retention import RetentionSweeper
from services.metering_aggregator.store import PartitionStore
from services.plans.loader import plans_file
from services.plans.model import PlansConfig

PLANS_FILE = plans_file()  # the one file it reads (__main__ declares it)

log = logging.getLogger(__name__)


@dataclass
class AggregatorApp:
    """The worker ``run_service`` runs (it serves the ops endpoints with ``readiness``)."""

    loop: ExactlyOnceLoop
    handler: MeteringHandler
    lifecycle: Lifecycle
    readiness: Mapping[str, ReadinessCheck]

    sweeper: RetentionSweeper | None = None

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or self.lifecycle.stop
        if self.sweeper is not None:
            sweeper = threading.Thread(target=self.sweeper.run, args=(stop,), name="retention", daemon=True)
            sweeper.start()
        self.loop.run(stop)

    def close(self) -> None:
        self.lifecycle.close()


def build_app(
    settings: MeteringSettings, lifecycle: Lifecycle | None = None, files: LoadedFiles | None = None
) -> AggregatorApp:
    life = lifecycle or Lifecycle(SERVICE)
    try:
        return _build(settings, life, PLANS_FILE.of(settings, files))  # as run_service loaded it
    except BaseException:
        life.close()
        raise


def _build(settings: MeteringSettings, life: Lifecycle, config: PlansConfig) -> AggregatorApp:
    prefix = settings.platform.topic_prefix
    topics = Topics(topic(USAGE_EVENTS, prefix).name, topic(METERING_CHANGELOG, prefix).name)

    check_reachable(settings.kafka, timeout=10)
    registry = life.push(SchemaRegistry(settings.registry), "schema registry")
    pool = life.push(open_pool(settings.database, name=SERVICE), "database pool")
    directory = life.push(CustomerDirectory(pool, settings.customers_refresh_seconds).start(), "customers")

    partitions = partition_count(settings.kafka, topics.usage_events)
    changelog_partitions = partition_count(settings.kafka, topics.changelog)
    if changelog_partitions < partitions:
        raise RuntimeError(
            f"{topics.changelog} has {changelog_partitions} partitions but {topics.usage_events} has "
            f"{partitions}: the changelog must be co-partitioned with the input"
        )

    def on_abuse(signals: list[dict[str, Any]]) -> None:
        """Committed abuse signals: kept for customer success, and a suspension where the plan says so
        (through services/customers, the table's owner). Runs after the transaction that wrote them."""
        with pool.connection() as conn:
            for signal in signals:
                suspension.record_signal(conn, signal)
                if signal["action"] != "suspend":
                    continue
                plan = config.plan(signal["plan"])
                hours = plan.abuse.cool_down_hours if plan is not None else None
                applied = suspension.suspend_automatically(
                    conn,
                    signal["customer_id"],
                    reason=signal["reason"],
                    cool_down=None if hours is None else timedelta(hours=hours),
                )
                if applied:
                    log.warning(
                        "customer suspended by the abuse guard",
                        extra={"customer_id": signal["customer_id"], "kind": signal["kind"]},
                    )

    store_factory = None
    if settings.state_store == "rocksdb":
        # One directory per instance id: two instances on one host never share a store (and a store held
        # open by another process is refused, not wiped).
        def store_factory(partition: int) -> PartitionStore:
            path = store_path(settings.state_dir, settings.instance_id, f"{topics.changelog}-{partition}")
            return PartitionStore(LocalStore(path, cache_mb=settings.state_cache_mb), partition)

    handler = MeteringHandler(
        kafka=settings.kafka,
        directory=directory,
        config=config,
        rules=settings.rules(),
        topics=topics,
        home_partition=key_partitioner(partitions, settings.home_partitioner),
        upgrade_url=settings.upgrade_url,
        eviction_interval=settings.eviction_interval_seconds,
        on_abuse=on_abuse,
        store_factory=store_factory,
        dedup_memory_ids=settings.dedup_memory_ids,
        window_memory_windows=settings.window_memory_windows,
    )
    # Closed after the loop (newest first): the stores are sealed once the last transaction is done.
    life.push(handler, "local state stores")
    loop = exactly_once_service(
        settings,
        service=SERVICE,
        registry=registry,
        lifecycle=life,
        handler=handler,
        inputs=INPUTS,
        outputs=OUTPUTS,
        dead_letters=USAGE_EVENTS_DLQ,
    )
    readiness: dict[str, ReadinessCheck] = {"aggregator": loop.ready, "customers": lambda: directory.loaded}
    log.info(
        "metering aggregator ready",
        extra={
            "instance_id": settings.instance_id,
            "input": topics.usage_events,
            "partitions": partitions,
            "config_version": config.version,
            "meters": [m.slug for m in config.meters],
        },
    )
    sweeper = None
    if settings.retention_sweep_interval_seconds > 0:
        # One instance sweeps: the one holding input partition 0 (any other pass would repeat it).
        sweeper = RetentionSweeper(
            settings.kafka,
            topic(USAGE_AGGREGATES, prefix).name,
            settings.retention(),
            settings.retention_sweep_interval_seconds,
            active=lambda: (topics.usage_events, 0) in loop.assigned,
        )
    return AggregatorApp(loop, handler, life, readiness, sweeper)
