"""The stream runtime against the real broker, registry and PostgreSQL: the documented example service,
poison records, restarts, and the at-least-once loop with offsets kept beside the effect."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY

from services.devstack.config import free_port
from services.kernel.dlq import DlqCipher
from services.kernel.errors import KafkaFatalError
from services.kernel.kafka import Consumer, Producer, TopicPartition, TransactionalProducer
from services.kernel.lifecycle import Lifecycle
from services.kernel.processing import (
    AtLeastOnceLoop,
    Batch,
    Emit,
    ExactlyOnceLoop,
    RetryBatch,
    SinkHandler,
    StreamHandler,
    at_least_once,
    exactly_once,
)
from services.kernel.processing.example import ApiCallsSettings
from services.kernel.processing.example import build as build_example
from services.kernel.provision import admin_client, provision_all
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import DatabaseSettings, KafkaSettings, PlatformSettings, SchemaRegistrySettings
from services.kernel.topics import _REGISTRY, USAGE_EVENTS, USAGE_EVENTS_DLQ, TopicSpec, topic
from tests.integration.kernel.helpers import wait_for

EXAMPLE_OUTPUT = "api-calls"


@pytest.fixture
def topics(
    monkeypatch: pytest.MonkeyPatch,
    topic_prefix: str,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
) -> Iterator[str]:
    """The catalogue plus the example's output topic (usage events), under a fresh prefix."""
    monkeypatch.setitem(_REGISTRY, EXAMPLE_OUTPUT, TopicSpec(EXAMPLE_OUTPUT, 3, "usage_event"))
    created, _ = provision_all(kafka_settings, registry_settings, prefix=topic_prefix)
    yield topic_prefix
    admin = admin_client(kafka_settings)
    for future in admin.delete_topics(created, operation_timeout=30).values():
        with contextlib.suppress(Exception):
            future.result()


def usage_event(customer: str, name: str = "api_call_made", **properties: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "customer_id": customer,
        "name": name,
        "timestamp": 1_700_000_000_000,
        "properties": properties,
        "user_id": None,
        "anonymous_id": None,
        "session_id": None,
        "ingest": None,
    }


def example_settings(
    events: Events, kafka: KafkaSettings, registry: SchemaRegistrySettings
) -> ApiCallsSettings:
    return ApiCallsSettings(
        kafka=kafka,
        registry=registry,
        platform=PlatformSettings(topic_prefix=events.prefix),
        output=EXAMPLE_OUTPUT,
    )


class Events:
    """Writes usage events (Avro, through the registry) and reads topics back read_committed."""

    def __init__(self, kafka: KafkaSettings, registry: SchemaRegistry, prefix: str) -> None:
        self.kafka, self.registry, self.prefix = kafka, registry, prefix
        spec = topic(USAGE_EVENTS, prefix)
        assert spec.schema_path is not None
        self.encoder = registry.encoder(spec.value_subject, spec.schema_path, auto_register=False)
        self.decoder = registry.decoder()
        self.producer = Producer(kafka, client_id="test-events")

    def send(self, events: list[dict[str, Any]], raw: list[bytes] = ()) -> None:  # type: ignore[assignment]
        name = topic(USAGE_EVENTS, self.prefix).name
        for event in events:
            self.producer.produce(name, self.encoder.encode(event), event["customer_id"] or "none")
        for data in raw:
            self.producer.produce(name, data, "garbage")
        assert self.producer.flush(10) == 0

    def read(self, logical: str, at_least: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every record of a topic once at least ``at_least`` are there (and a quiet second more)."""
        seen: list[dict[str, Any]] = []
        with Consumer(self.kafka, None) as reader:
            reader.assign_all([topic(logical, self.prefix).name])

            def more() -> bool:
                seen.extend(self.decoder.decode(r.value()) for r in reader.consume(1000, 0.2))
                return len(seen) >= at_least

            wait_for(more, timeout=timeout)
            for _ in range(5):
                seen.extend(self.decoder.decode(r.value()) for r in reader.consume(1000, 0.2))
        return seen

    def close(self) -> None:
        self.producer.close()


@pytest.fixture
def events(
    topics: str, kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings
) -> Iterator[Events]:
    registry = SchemaRegistry(registry_settings)
    e = Events(kafka_settings, registry, topics)
    yield e
    e.close()
    registry.close()


@contextlib.contextmanager
def running(
    make: Callable[[Lifecycle], ExactlyOnceLoop | AtLeastOnceLoop],
) -> Iterator[ExactlyOnceLoop | AtLeastOnceLoop]:
    """A loop running on a thread until the block ends (then stopped and closed like a service)."""
    life = Lifecycle("test")
    loop = make(life)
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            loop.run(stop)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        stop.set()
        thread.join(30)
        life.close()
    assert not failures, failures


def test_the_documented_example_keeps_api_calls_exactly_once_and_dead_letters_the_rest(
    events: Events, kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings
) -> None:
    calls = [usage_event("acme") for _ in range(40)]
    others = [usage_event("acme", "page_viewed") for _ in range(10)]
    nobody = usage_event("", "api_call_made")
    events.send(calls[:20] + others + [nobody], raw=[b"\x00\x00\x00\x00\x01garbage"])

    def make(life: Lifecycle) -> ExactlyOnceLoop:
        return build_example(example_settings(events, kafka_settings, registry_settings), life)

    with running(make):
        out = events.read(EXAMPLE_OUTPUT, 20)
    # A restarted instance goes on from the committed offsets: nothing twice, nothing lost.
    events.send(calls[20:])
    with running(make):
        out = events.read(EXAMPLE_OUTPUT, 40)
    assert sorted(e["event_id"] for e in out) == sorted(e["event_id"] for e in calls)
    letters = events.read(USAGE_EVENTS_DLQ, 2)
    assert sorted(letter["error_code"] for letter in letters) == ["invalid_event", "undecodable"]
    assert all(len(letter["error_message"]) < 300 for letter in letters)


class FailsOn(StreamHandler):
    """Forwards events, raising on those named ``poison`` — inside the iteration, or after it."""

    def __init__(self, after_iteration: bool = False) -> None:
        self.after_iteration = after_iteration

    def process(self, batch: Batch, out: Emit) -> None:
        bad = False
        for message in batch:
            assert message.value is not None
            if message.value["name"] == "poison":
                if not self.after_iteration:
                    raise ValueError(f"cannot handle {message.value['event_id']}")
                bad = True
            out.send(EXAMPLE_OUTPUT, message.value, key=message.key)
        if bad:
            raise ValueError("one of these was poison")


@pytest.mark.parametrize("after_iteration", [False, True], ids=["while-iterating", "after-iteration"])
def test_a_record_the_handler_raises_on_is_dead_lettered_and_the_partition_goes_on(
    events: Events,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
    after_iteration: bool,
) -> None:
    registry = SchemaRegistry(registry_settings)
    good = [usage_event("acme") for _ in range(30)]
    poison = usage_event("acme", "poison")
    events.send([*good[:15], poison, *good[15:]])

    def make(life: Lifecycle) -> ExactlyOnceLoop:
        return exactly_once(
            service="fails-on",
            kafka=kafka_settings,
            registry=registry,
            lifecycle=life,
            handler=FailsOn(after_iteration),
            inputs=[USAGE_EVENTS],
            outputs=[EXAMPLE_OUTPUT],
            group_id="fails-on",
            transactional_id="fails-on-0",
            topic_prefix=events.prefix,
        )

    with running(make) as loop:
        out = events.read(EXAMPLE_OUTPUT, 30)
        letters = events.read(USAGE_EVENTS_DLQ, 1)
        assert loop.ready()
    assert sorted(e["event_id"] for e in out) == sorted(e["event_id"] for e in good)
    assert [(d["error_code"], d["event_id"]) for d in letters] == [("processing_failed", None)]
    assert letters[0]["error_message"].startswith("ValueError:")
    original = DlqCipher.from_env().reveal(letters[0])["original_value"]  # encrypted in the letter
    assert events.decoder.decode(original)["event_id"] == poison["event_id"]
    registry.close()


class Ledger(SinkHandler):
    """A PostgreSQL sink that stores its rows and its offsets in one transaction, and 'crashes' once
    right after a commit (before the loop commits the Kafka offsets), to be redelivered."""

    def __init__(self, dsn: str, table: str) -> None:
        self.dsn, self.table = dsn, table
        self.crash_once = True
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} (event_id text PRIMARY KEY, customer text)")
            conn.execute(
                f"CREATE TABLE {table}_offsets (topic text, part int, next bigint, PRIMARY KEY (topic, part))"
            )

    def process(self, batch: Batch, out: Emit) -> None:
        with psycopg.connect(self.dsn) as conn:
            # No ON CONFLICT: a redelivered event would fail loudly, so the test proves none comes back.
            for message in batch:
                assert message.value is not None
                conn.execute(
                    f"INSERT INTO {self.table} VALUES (%s, %s)",
                    (message.value["event_id"], message.value["customer_id"]),
                )
            for (t, p), offset in batch.next_offsets.items():
                conn.execute(
                    f"INSERT INTO {self.table}_offsets VALUES (%s, %s, %s) "
                    "ON CONFLICT (topic, part) DO UPDATE SET next = excluded.next",
                    (t, p, offset),
                )
        if self.crash_once and len(batch):
            self.crash_once = False
            raise RetryBatch("simulated crash between the effect and the offset commit")

    def stored_offsets(self, partitions: Any) -> dict[tuple[str, int], int]:
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(f"SELECT topic, part, next FROM {self.table}_offsets").fetchall()
        return {(t, p): n for t, p, n in rows}

    def count(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]  # type: ignore[index,no-any-return]


def test_the_at_least_once_loop_applies_each_record_once_when_the_sink_stores_its_offsets(
    events: Events,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
    database_settings: DatabaseSettings,
) -> None:
    registry = SchemaRegistry(registry_settings)
    ledger = Ledger(database_settings.url.get_secret_value(), f"ledger_{uuid.uuid4().hex[:8]}")
    sent = [usage_event(f"c{i % 5}") for i in range(60)]
    events.send(sent[:30], raw=[b"not avro at all"])

    def make(life: Lifecycle) -> AtLeastOnceLoop:
        return at_least_once(
            service="ledger",
            kafka=kafka_settings,
            registry=registry,
            lifecycle=life,
            handler=ledger,
            inputs=[USAGE_EVENTS],
            dead_letters=USAGE_EVENTS_DLQ,
            group_id="ledger",
            topic_prefix=events.prefix,
        )

    with running(make):
        wait_for(lambda: ledger.count() == 30)
    assert not ledger.crash_once  # the redelivery happened, and changed nothing
    events.send(sent[30:])
    with running(make):
        wait_for(lambda: ledger.count() == 60)
    letters = events.read(USAGE_EVENTS_DLQ, 1)
    assert [d["error_code"] for d in letters] == ["undecodable"]
    registry.close()


def test_a_zombie_with_the_same_transactional_id_is_fenced_and_nothing_is_written_twice(
    events: Events, kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings
) -> None:
    calls = [usage_event(f"c{i % 7}") for i in range(60)]

    def make(life: Lifecycle) -> ExactlyOnceLoop:
        return build_example(example_settings(events, kafka_settings, registry_settings), life)

    zombie_life = Lifecycle("zombie")
    zombie = make(zombie_life)
    stop = threading.Event()
    outcome: list[BaseException | None] = []

    def run_zombie() -> None:
        try:
            zombie.run(stop)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        zombie_life.close()  # as the process would on exit: leave the group, its partitions move on

    thread = threading.Thread(target=run_zombie, daemon=True)
    thread.start()
    events.send(calls[:20])
    events.read(EXAMPLE_OUTPUT, 20)
    # A new incarnation under the same transactional.id (a restarted pod while the old one hangs on).
    with running(make) as successor:
        wait_for(lambda: successor.running)  # its init_transactions has fenced the zombie's epoch
        events.send(calls[20:])
        thread.join(60)
        out = events.read(EXAMPLE_OUTPUT, 60)
    stop.set()
    thread.join(30)
    assert outcome, "the zombie never stopped"
    assert isinstance(outcome[0], KafkaFatalError), outcome
    assert sorted(e["event_id"] for e in out) == sorted(e["event_id"] for e in calls)


def test_the_example_runs_as_a_service_process_and_stops_cleanly_on_sigterm(
    events: Events, stack: Any
) -> None:
    """``python -m services.kernel.processing.example``: run_service, ops endpoints, SIGTERM → exit 0."""
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": stack.registry_url,
        "DATABASE_URL": stack.database_url,
        "PLG_TOPIC_PREFIX": events.prefix,
        "PLG_LOG_FORMAT": "text",
        "API_CALLS_PORT": str(port),
        "API_CALLS_OUTPUT": EXAMPLE_OUTPUT,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.kernel.processing.example"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=60)
        calls = [usage_event("acme") for _ in range(5)]
        events.send(calls)
        out = events.read(EXAMPLE_OUTPUT, 5)
        assert sorted(e["event_id"] for e in out) == sorted(e["event_id"] for e in calls)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'plg_stream_transactions_total{result="committed",service="api-calls"}' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Collects(SinkHandler):
    """An at-least-once sink that only remembers the event ids it applied."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def process(self, batch: Batch, out: Emit) -> None:
        self.seen.extend(m.value["event_id"] for m in batch if m.value is not None)


@pytest.mark.parametrize("kind", ["at-least-once", "exactly-once"])
def test_a_group_reading_transactional_input_commits_past_the_last_marker_so_kafka_sees_no_lag(
    kind: str, events: Events, kafka_settings: KafkaSettings, registry_settings: SchemaRegistrySettings
) -> None:
    # The `make chaos` finding: Kafka's ConsumerGroupCommand said lag 6 (one per partition) for the billing
    # reporter, reading the transactional usage-aggregates, while our position-based gauge said 0. Each
    # transaction ends with a commit marker the consumer never returns: a batch ending on a transaction's
    # last record committed the offset *of the marker*, and nothing moved it on while the input idled.
    registry = SchemaRegistry(registry_settings)
    name = topic(USAGE_EVENTS, events.prefix).name
    group = f"markers-{kind}-{uuid.uuid4().hex[:6]}"
    committed_events: list[dict[str, Any]] = []
    with TransactionalProducer(kafka_settings, f"test-markers-{uuid.uuid4().hex}") as writer:
        writer.init_transactions()
        for outcome in ("commit", "abort", "commit", "commit"):
            batch = [usage_event(f"c{i}") for i in range(6)]
            writer.begin()
            for event in batch:
                writer.produce(name, events.encoder.encode(event), event["customer_id"])
            writer.flush(30)
            if outcome == "commit":
                writer.commit()
                committed_events.extend(batch)
            else:
                writer.abort()
    sink = Collects()

    def make(life: Lifecycle) -> ExactlyOnceLoop | AtLeastOnceLoop:
        common: dict[str, Any] = {
            "kafka": kafka_settings,
            "registry": registry,
            "lifecycle": life,
            "inputs": [USAGE_EVENTS],
            "group_id": group,
            "topic_prefix": events.prefix,
        }
        if kind == "at-least-once":
            return at_least_once(service=group, handler=sink, **common)
        return exactly_once(
            service=group,
            handler=ApiCallsToSink(sink),
            transactional_id=f"{group}-0",
            **common,
        )

    def kafka_lag(probe: Consumer) -> int:
        """What ConsumerGroupCommand computes: partition end (high watermark) - committed offset."""
        total = 0
        partitions = [TopicPartition(name, p) for p in range(topic(USAGE_EVENTS, events.prefix).partitions)]
        for tp in probe.committed(partitions, timeout=10):
            _, high = probe.watermark_offsets(name, tp.partition)
            total += high - max(tp.offset, 0)
        return total

    def our_lag() -> float | None:
        return REGISTRY.get_sample_value(
            "plg_consumer_group_lag_messages_sum", {"group": events.prefix + group}
        )

    with running(make), Consumer(kafka_settings, events.prefix + group) as probe:  # the loop prefixes it
        wait_for(lambda: len(sink.seen) >= len(committed_events), timeout=60)
        wait_for(lambda: kafka_lag(probe) == 0, timeout=60)
        wait_for(lambda: our_lag() == 0.0, timeout=60)
    assert sorted(sink.seen) == sorted(e["event_id"] for e in committed_events)
    registry.close()


class ApiCallsToSink(StreamHandler):
    """The exactly-once counterpart of :class:`Collects` (no outputs: the offsets alone commit)."""

    def __init__(self, sink: Collects) -> None:
        self.sink = sink

    def process(self, batch: Batch, out: Emit) -> None:
        self.sink.process(batch, out)
