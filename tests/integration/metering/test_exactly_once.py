"""The aggregator on the real stack: each unique event counted exactly once, into every window, whatever
the producer, the partition or the restarts."""

from __future__ import annotations

import threading
import time
import uuid
from decimal import Decimal

import httpx
import psycopg
import uvicorn
from confluent_kafka import SerializingProducer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import StringSerializer

from services.customers import Customer
from services.devstack.config import free_port
from services.ingest import store
from services.ingest.app import build_app as build_ingest
from services.ingest.config import IngestSettings
from services.kernel.kafka import Consumer, TopicPartition
from services.kernel.partitioning import consistent
from services.kernel.processing.state import read_changelog
from services.kernel.settings import PlatformSettings
from services.kernel.topics import METERING_CHANGELOG, USAGE_EVENTS, topic
from services.metering_aggregator.changelog import encode_value, restore
from services.metering_aggregator.model import PartitionState
from services.plans.loader import load_config
from tests.integration.metering.harness import Metering, now_ms, usage_event, wait_for


def test_duplicate_events_are_counted_once(metering: Metering):
    customer = metering.customer("pro")
    events = [usage_event(customer) for _ in range(50)]
    metering.send(events + events[:20])  # 20 duplicates in the same stream
    metering.start()
    wait_for(lambda: metering.period_total(customer) == (Decimal(50), 50), what="50 unique events")
    metering.send(events[10:30])  # re-sent later, after they were committed
    metering.send([usage_event(customer)])
    wait_for(lambda: metering.period_total(customer) == (Decimal(51), 51), what="51 unique events")


def test_duplicates_resent_after_a_restart_are_still_counted_once(metering: Metering):
    customer = metering.customer("pro")
    events = [usage_event(customer) for _ in range(30)]
    first = metering.start(instance_id="agg-a")
    metering.send(events)
    wait_for(lambda: metering.period_total(customer) == (Decimal(30), 30))
    first.close()
    # Another instance takes over: its dedup state comes from the changelog, not from memory.
    metering.start(instance_id="agg-b")
    metering.send([*events, usage_event(customer)])
    wait_for(lambda: metering.period_total(customer) == (Decimal(31), 31))


def avro_app(metering: Metering) -> tuple[SerializingProducer, str]:
    """An app producing straight to usage-events with confluent-kafka's own AvroSerializer."""
    spec = topic(USAGE_EVENTS, metering.prefix)
    assert spec.schema_path is not None
    client = SchemaRegistryClient({"url": metering.registry.url})
    serializer = AvroSerializer(
        client,
        spec.schema_path.read_text(),
        conf={"auto.register.schemas": False, "use.latest.version": True},
    )
    app = SerializingProducer(
        {
            "bootstrap.servers": metering.kafka.bootstrap_servers,
            "key.serializer": StringSerializer("utf_8"),
            "value.serializer": serializer,
            "enable.idempotence": True,
        }
    )
    return app, spec.name


def test_events_from_a_confluent_avro_serializer_app_are_metered_like_ingest(metering: Metering):
    customer = metering.customer("pro")
    app, name = avro_app(metering)
    event_ids = [str(uuid.uuid4()) for _ in range(10)]
    for event_id in event_ids + event_ids[:3]:
        app.produce(
            name,
            key=customer,
            value={
                "event_id": event_id,
                "customer_id": customer,
                "name": "api_call_made",
                "timestamp": now_ms(),
                "properties": {"path": "/v1/things", "latency_ms": 12},
                "user_id": "u-9",
            },
        )
    app.produce(
        name,
        key=customer,
        value={
            "event_id": str(uuid.uuid4()),
            "customer_id": customer,
            "name": "job_completed",
            "timestamp": now_ms(),
            "properties": {"duration_seconds": 2.5, "region": "eu"},
        },
    )
    assert app.flush(30) == 0
    metering.start()
    wait_for(lambda: metering.period_total(customer) == (Decimal(10), 10))
    wait_for(lambda: metering.period_total(customer, "compute_seconds") == (Decimal("2.5"), 1))


def test_the_same_events_via_the_ingest_api_and_straight_from_an_app_count_once(metering: Metering):
    customer = metering.customer("pro")
    with psycopg.connect(metering.database.url.get_secret_value(), autocommit=True) as conn:
        _, api_key = store.create_key(conn, customer, "metering test")
    port = free_port()
    settings = IngestSettings(
        port=port,
        kafka=metering.kafka,
        registry=metering.registry,
        database=metering.database,
        platform=PlatformSettings(topic_prefix=metering.prefix),
    )
    server = uvicorn.Server(
        uvicorn.Config(
            build_ingest(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=60, what="ingest")
        ids = [str(uuid.uuid4()) for _ in range(10)]
        batch = {
            "batch": [
                {
                    "event_id": i,
                    "name": "api_call_made",
                    "timestamp": now_ms(),
                    "properties": {"path": "/v1/x"},
                }
                for i in ids[:6]
            ]
        }
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/batch",
            json=batch,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
    finally:
        server.should_exit = True
        thread.join(30)
    app, name = avro_app(metering)
    for event_id in ids[4:]:  # ids[4] and ids[5] went through ingest too: the same events, twice
        app.produce(
            name,
            key=customer,
            value={
                "event_id": event_id,
                "customer_id": customer,
                "name": "api_call_made",
                "timestamp": now_ms(),
            },
        )
    assert app.flush(30) == 0
    metering.start()
    wait_for(lambda: metering.period_total(customer) == (Decimal(10), 10))


def test_an_event_on_the_wrong_partition_is_counted_once_at_its_customers_home(metering: Metering):
    customer = metering.customer("pro")
    home = consistent(customer.encode(), 6)
    stray = usage_event(customer)
    metering.send([stray], partition=(home + 1) % 6)  # e.g. a Java producer's murmur2 partitioner
    metering.send([stray, usage_event(customer)], partition=home)  # and its duplicate at home
    metering.send([stray], partition=(home + 3) % 6)
    metering.start()
    wait_for(lambda: metering.period_total(customer) == (Decimal(2), 2))


def test_a_customer_created_after_start_is_metered(metering: Metering):
    metering.start()
    customer = metering.customer("free")
    metering.send([usage_event(customer)])
    wait_for(lambda: metering.period_total(customer) == (Decimal(1), 1))


def test_two_instances_share_the_partitions_and_count_exactly(metering: Metering):
    customers = [metering.customer("pro") for _ in range(12)]
    a = metering.start(instance_id="agg-1")
    metering.send(usage_event(c) for c in customers for _ in range(5))
    metering.start(instance_id="agg-2")
    batch = [usage_event(c) for c in customers for _ in range(5)]
    metering.send(batch + batch[:17])
    a.close()
    metering.send(usage_event(c) for c in customers)
    wait_for(lambda: all(metering.period_total(c) == (Decimal(11), 11) for c in customers), timeout=60)


def test_the_home_partition_is_where_producers_put_a_customers_events(metering: Metering):
    # If this drifted (another default partitioner), every event would take a detour through rerouting.
    reports = [metering.producer.send(metering.topic(USAGE_EVENTS), b"x", f"customer-{i}") for i in range(50)]
    for i, future in enumerate(reports):
        assert future.result(timeout=30).partition == consistent(f"customer-{i}".encode(), 6)


def test_a_new_owner_waits_for_the_changelog_to_catch_up_with_the_committed_offsets(metering: Metering):
    # After a commit the transaction coordinator writes its markers to every partition in parallel: for a
    # moment the group's offsets can already include a transaction whose changelog records the new owner
    # of the partition cannot read yet. Restoring then would lose that transaction's counts and ids.
    customer = metering.customer("pro")
    home = consistent(customer.encode(), 6)
    first, second, third = (usage_event(customer) for _ in range(3))
    metering.send([first])
    previous = metering.start(instance_id="agg-previous")
    wait_for(lambda: metering.period_total(customer) == (Decimal(1), 1), what="the first event")
    previous.close()
    metering.send([second])
    # The previous owner's last transaction counted `second`: its offsets are committed ...
    usage_events, changelog = metering.topic(USAGE_EVENTS), metering.topic(METERING_CHANGELOG)
    with Consumer(metering.kafka, f"{metering.prefix}metering-aggregator") as group:
        group.commit([TopicPartition(usage_events, home, 2)])
    # ... and its changelog records (what that owner would have written) land only a moment later.
    settings = metering.settings()
    state = PartitionState(home, load_config(), settings.rules())
    restore(state, read_changelog(metering.kafka, changelog, [home])[home].items())
    who = Customer(customer, "pro", 1)
    assert state.apply(second, now_ms(), who) is None
    records = [*state.drain(1, lambda _c: who).changelog, state.checkpoint(2)]
    metering.start(instance_id="agg-next")
    time.sleep(1.5)
    for record in records:
        assert record is not None
        key, value = record
        encoded = None if value is None else encode_value(value)
        metering.producer.produce(changelog, encoded, key, partition=home)
    assert metering.producer.flush(10) == 0
    metering.send([third])
    wait_for(lambda: metering.period_total(customer) == (Decimal(3), 3), what="all three events")


def test_a_duplicate_resent_minutes_later_is_counted_once_after_eviction_and_a_restart(metering: Metering):
    # Kafka time stands in for waiting: the original arrived 20 minutes ago, the re-send arrives now. In
    # between, later traffic moved the partition's clock past the original's minute and hour windows, and
    # (with a 5-minute grace) eviction dropped them; then the instance is replaced.
    customer = metering.customer("pro")
    earlier = now_ms() - 20 * 60_000
    original, later = usage_event(customer, ts=earlier), usage_event(customer)
    fast_eviction = {"grace_seconds": 300, "eviction_interval_seconds": 0.2}
    first = metering.start(instance_id="agg-minutes-1", **fast_eviction)
    metering.send([original], arrival=earlier + 1000)
    wait_for(lambda: metering.period_total(customer) == (Decimal(1), 1), what="the original")
    metering.send([later])
    wait_for(lambda: metering.period_total(customer) == (Decimal(2), 2), what="later traffic")
    time.sleep(1)  # a few eviction rounds at the new clock
    first.close()
    metering.start(instance_id="agg-minutes-2", **fast_eviction)
    metering.send([original, usage_event(customer)])  # the re-send (and one new event)
    wait_for(lambda: metering.period_total(customer) == (Decimal(3), 3), what="three unique events")
    assert not [d for d in metering.dead_letters() if d["customer_id"] == customer]  # a duplicate, not late
