"""Composition root of the metering aggregator: ``build_app(settings)`` opens and wires every resource."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from services.kernel.db import open_pool
from services.kernel.dlq import DeadLetterPublisher
from services.kernel.kafka import Consumer, TransactionalProducer, check_reachable
from services.kernel.lag import ConsumerLagTracker
from services.kernel.lifecycle import Lifecycle
from services.kernel.ops import OpsServer
from services.kernel.provision import admin_client
from services.kernel.serde import SchemaRegistry, ValueEncoder
from services.kernel.topics import (
    ENTITLEMENT_EVENTS,
    METERING_CHANGELOG,
    USAGE_AGGREGATES,
    USAGE_EVENTS,
    USAGE_EVENTS_DLQ,
    topic,
)
from services.metering_aggregator.config import MeteringSettings
from services.metering_aggregator.customers import CustomerDirectory
from services.metering_aggregator.processor import SERVICE, Encoders, MeteringProcessor, Topics
from services.metering_aggregator.routing import home_partitioner
from services.plans.loader import load_config

log = logging.getLogger(__name__)


@dataclass
class AggregatorApp:
    processor: MeteringProcessor
    lifecycle: Lifecycle
    ops: OpsServer

    def run(self, stop: threading.Event | None = None) -> None:
        self.processor.start()
        self.processor.run(stop or self.lifecycle.stop)

    def close(self) -> None:
        self.lifecycle.close()


def partition_count(settings: MeteringSettings, name: str) -> int:
    """Partitions of a topic (the home-partition maths depends on the input's count)."""
    metadata = admin_client(settings.kafka).list_topics(name, timeout=10).topics.get(name)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise RuntimeError(f"topic {name} does not exist: provision the catalogue first (make up)")
    return len(metadata.partitions)


def build_app(settings: MeteringSettings, lifecycle: Lifecycle | None = None) -> AggregatorApp:
    life = lifecycle or Lifecycle(SERVICE)
    try:
        return _build(settings, life)
    except BaseException:
        life.close()
        raise


def _build(settings: MeteringSettings, life: Lifecycle) -> AggregatorApp:
    config = load_config(settings.config_path)
    prefix = settings.platform.topic_prefix
    specs = {
        name: topic(name, prefix)
        for name in (USAGE_EVENTS, USAGE_AGGREGATES, ENTITLEMENT_EVENTS, USAGE_EVENTS_DLQ, METERING_CHANGELOG)
    }
    topics = Topics(
        *(
            specs[n].name
            for n in (
                USAGE_EVENTS,
                USAGE_AGGREGATES,
                ENTITLEMENT_EVENTS,
                USAGE_EVENTS_DLQ,
                METERING_CHANGELOG,
            )
        )
    )

    check_reachable(settings.kafka, timeout=10)
    registry = life.push(SchemaRegistry(settings.registry), "schema registry")

    def encoder(name: str) -> ValueEncoder:
        spec = specs[name]
        assert spec.schema_path is not None
        return registry.encoder(
            spec.value_subject, spec.schema_path, auto_register=settings.auto_register_schemas
        )

    usage_schema = specs[USAGE_EVENTS].schema_path
    decoder = registry.decoder(reader_schema=usage_schema)
    encoders = Encoders(aggregate=encoder(USAGE_AGGREGATES), entitlement=encoder(ENTITLEMENT_EVENTS))

    pool = life.push(open_pool(settings.database, name=SERVICE), "database pool")
    directory = life.push(CustomerDirectory(pool, settings.customers_refresh_seconds).start(), "customers")

    group: dict[str, Any] = {
        # Cooperative: a rebalance moves only the partitions that change owner, the rest keep their
        # in-memory state instead of being restored from the changelog.
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(1000, settings.session_timeout_ms // 5),
    }
    if settings.static_membership:
        group["group.instance.id"] = settings.instance_id
    consumer = life.push(
        Consumer(
            settings.kafka,
            f"{prefix}{settings.group_id}",
            client_id=f"{SERVICE}-{settings.instance_id}",
            **group,
        ),
        "consumer",
    )
    partitions = partition_count(settings, topics.usage_events)
    changelog_partitions = partition_count(settings, topics.changelog)
    if changelog_partitions < partitions:
        raise RuntimeError(
            f"{topics.changelog} has {changelog_partitions} partitions but {topics.usage_events} has "
            f"{partitions}: the changelog must be co-partitioned with the input"
        )

    def new_producer() -> TransactionalProducer:
        return TransactionalProducer(
            settings.kafka,
            f"{prefix}{settings.transactional_id}",
            transaction_timeout_ms=settings.transaction_timeout_ms,
            # librdkafka requires a record's delivery timeout to fit in the transaction's.
            message_timeout_ms=min(30_000, settings.transaction_timeout_ms),
        )

    producer = new_producer()
    # Before the processor, which feeds it positions from its poll loop; closed before the consumer.
    lag = life.push(ConsumerLagTracker(consumer).start(), "lag tracker")
    dead_letters = DeadLetterPublisher(producer, encoder(USAGE_EVENTS_DLQ), topics.dead_letters, SERVICE)
    processor = MeteringProcessor(
        kafka=settings.kafka,
        consumer=consumer,
        producer=producer,
        decoder=decoder,
        encoders=encoders,
        dead_letters=dead_letters,
        directory=directory,
        config=config,
        rules=settings.rules(),
        topics=topics,
        home_partition=home_partitioner(settings.home_partitioner, partitions),
        upgrade_url=settings.upgrade_url,
        max_batch_events=settings.max_batch_events,
        batch_wait=settings.batch_wait_ms / 1000,
        eviction_interval=settings.eviction_interval_seconds,
        kafka_timeout=settings.commit_timeout_seconds,
        producer_factory=new_producer,
        lag=lag,
    )
    # Closes whichever producer the processor holds by then (it replaces one that hit a fatal error).
    life.callback(lambda: processor.producer.close(timeout=10), "transactional producer")
    ops = life.push(
        OpsServer(
            settings.host,
            settings.port,
            readiness={
                "aggregator": lambda: processor.running and not processor.restoring,
                "customers": lambda: directory.loaded,
            },
        ).start(),
        "ops server",
    )
    log.info(
        "metering aggregator ready",
        extra={
            "instance_id": settings.instance_id,
            "input": topics.usage_events,
            "partitions": partitions,
            "config_version": config.version,
            "meters": [m.slug for m in config.meters],
            "ops": ops.url,
        },
    )
    return AggregatorApp(processor, life, ops)
