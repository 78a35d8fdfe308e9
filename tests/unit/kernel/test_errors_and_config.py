"""Kafka errors translate into the project's own types; client configs carry the safe defaults."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.schema_registry.error import SchemaRegistryError as ConfluentRegistryError

from services.kernel import metrics
from services.kernel.errors import (
    IncompatibleSchemaError,
    InvalidSchemaError,
    KafkaClientError,
    KafkaFatalError,
    KafkaUnavailableError,
    SchemaNotFoundError,
    SchemaRegistryUnavailableError,
    TopicNotFoundError,
    TransactionAbortableError,
    is_ignored,
    is_transient,
    translate_kafka_error,
    translate_registry_error,
)
from services.kernel.kafka import consumer_config, producer_config
from services.kernel.ops import readiness_response
from services.kernel.settings import KafkaSettings


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (KafkaError(KafkaError._MSG_TIMED_OUT), KafkaUnavailableError),
        (KafkaError(KafkaError._TRANSPORT), KafkaUnavailableError),
        (KafkaError(KafkaError._ALL_BROKERS_DOWN), KafkaUnavailableError),
        (KafkaError(KafkaError.REQUEST_TIMED_OUT), KafkaUnavailableError),
        (KafkaError(KafkaError.NOT_ENOUGH_REPLICAS), KafkaUnavailableError),
        (KafkaError(KafkaError.UNKNOWN, retriable=True), KafkaUnavailableError),
        (KafkaError(KafkaError._FENCED), KafkaFatalError),
        (KafkaError(KafkaError.PRODUCER_FENCED), KafkaFatalError),
        (KafkaError(KafkaError.UNKNOWN, fatal=True), KafkaFatalError),
        (KafkaError(KafkaError._TIMED_OUT, txn_requires_abort=True), TransactionAbortableError),
        (KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART), TopicNotFoundError),
        (KafkaError(KafkaError._UNKNOWN_TOPIC), TopicNotFoundError),
        (KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), KafkaClientError),
    ],
)
def test_kafka_errors_translate_by_flag_then_code(
    error: KafkaError, expected: type[KafkaClientError]
) -> None:
    translated = translate_kafka_error(KafkaException(error), "produce to t")

    assert type(translated) is expected
    assert translated.code == error.code()
    assert str(translated).startswith("produce to t: ")


def test_fatal_flag_wins_over_abortable_and_retriable() -> None:
    error = KafkaError(KafkaError._TIMED_OUT, fatal=True, retriable=True, txn_requires_abort=True)

    assert isinstance(translate_kafka_error(error), KafkaFatalError)


def test_a_full_local_queue_is_unavailability() -> None:
    translated = translate_kafka_error(BufferError("Local: Queue full"), "produce to t")

    assert isinstance(translated, KafkaUnavailableError)
    assert translated.retriable


def test_end_of_partition_and_nothing_to_commit_are_ignored_and_broker_trouble_is_transient() -> None:
    assert is_ignored(KafkaError(KafkaError._PARTITION_EOF))
    assert is_ignored(KafkaError(KafkaError._NO_OFFSET))
    assert is_transient(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert not is_transient(KafkaError(KafkaError._ALL_BROKERS_DOWN, fatal=True))
    assert not is_transient(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (404, 40401, SchemaNotFoundError),
        (404, 40403, SchemaNotFoundError),
        (409, 409, IncompatibleSchemaError),
        (422, 42201, InvalidSchemaError),
        (503, 50003, SchemaRegistryUnavailableError),
    ],
)
def test_registry_errors_translate_by_error_code(status: int, code: int, expected: type[Exception]) -> None:
    translated = translate_registry_error(ConfluentRegistryError(status, code, "nope"), "register s")

    assert type(translated) is expected
    assert translated.error_code == code


def test_registry_transport_failures_are_unavailability() -> None:
    assert isinstance(
        translate_registry_error(ConnectionRefusedError("refused")), SchemaRegistryUnavailableError
    )


def test_producer_config_is_idempotent_with_acks_all_and_takes_overrides() -> None:
    config = producer_config(
        KafkaSettings(bootstrap_servers="b:9092", extra={"socket.timeout.ms": "5000"}),
        linger_ms=20,
        **{"compression.type": "zstd"},
    )

    assert config["bootstrap.servers"] == "b:9092"
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["linger.ms"] == 20
    assert config["compression.type"] == "zstd"
    assert config["socket.timeout.ms"] == "5000"


def test_consumer_config_commits_manually_and_reads_committed() -> None:
    config = consumer_config(KafkaSettings(), "metering", auto_offset_reset="latest")

    assert config["group.id"] == "metering"
    assert config["enable.auto.commit"] is False
    assert config["isolation.level"] == "read_committed"
    assert config["auto.offset.reset"] == "latest"


def test_metric_helpers_return_the_same_collector_when_asked_twice() -> None:
    registry = metrics.CollectorRegistry()
    first = metrics.counter("plg_test_things", "Things.", ("kind",), registry)

    assert metrics.counter("plg_test_things", "Things.", ("kind",), registry) is first
    with pytest.raises(ValueError, match="different"):
        metrics.gauge("plg_test_things", "Things.", ("kind",), registry)


def test_readiness_lists_every_failing_check_including_ones_that_raise() -> None:
    def broken() -> bool:
        raise RuntimeError("db down")

    status, body = readiness_response({"kafka": lambda: True, "db": broken, "registry": lambda: False})

    assert status == 503
    assert body == b'{"status": "not ready", "failing": ["db", "registry"]}'
    assert readiness_response({"kafka": lambda: True}) == (200, b'{"status": "ready"}')


def test_a_degraded_dependency_is_reported_without_failing_readiness() -> None:
    ready = {"kafka": lambda: True, "database": lambda: True}
    assert readiness_response(ready, {"database": lambda: False}) == (
        200,
        b'{"status": "ready", "degraded": ["database"]}',
    )
    assert readiness_response(ready, {"database": lambda: True}) == (200, b'{"status": "ready"}')
    status, body = readiness_response({"database": lambda: False}, {"database": lambda: False})
    assert (status, body) == (
        503,
        b'{"status": "not ready", "failing": ["database"], "degraded": ["database"]}',
    )
