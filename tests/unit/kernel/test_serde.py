"""Avro serde in the Confluent wire format: round trips, interop with confluent's serializers, errors."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from services.kernel.errors import SchemaNotFoundError, SerializationError, UnknownSchemaIdError
from services.kernel.serde import SchemaRegistry, ValueDecoder, ValueEncoder, header, schema_id_of
from services.kernel.settings import SchemaRegistrySettings
from services.kernel.topics import SCHEMAS_DIR

USAGE_EVENT = SCHEMAS_DIR / "usage_event.avsc"


def usage_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "0190a5c4-8c1e-7bb2-9a1d-3f5e6a7b8c9d",
        "customer_id": "cus_123",
        "name": "api_call_made",
        "timestamp": 1_717_000_000_123,
        "properties": {"endpoint": "/v1/search", "count": 3, "ok": True, "ratio": 0.5, "none": None},
        "user_id": "u_1",
        "anonymous_id": None,
        "session_id": None,
        "ingest": {
            "received_at": 1_717_000_000_456,
            "source": "http",
            "api_key_id": "key_1",
            "request_id": None,
            "library": None,
            "registry_version": 3,
        },
        "consent": {"analytics": True},
    }
    event.update(overrides)
    return event


@pytest.fixture
def registry() -> SchemaRegistry:
    # confluent's in-memory registry: one per test, so ids never leak between tests.
    return SchemaRegistry(SchemaRegistrySettings(url=f"mock://{uuid.uuid4().hex}"))


def test_value_round_trips_with_a_schema_id_given_directly() -> None:
    schema_str = USAGE_EVENT.read_text()
    encoder = ValueEncoder(USAGE_EVENT, 42)
    decoder = ValueDecoder({42: schema_str}.__getitem__)

    data = encoder.encode(usage_event())

    assert data[:5] == b"\x00\x00\x00\x00\x2a"
    assert schema_id_of(data) == 42
    assert decoder.decode(data) == usage_event()


def test_value_round_trips_through_the_registry_and_fetches_each_writer_schema_once(
    registry: SchemaRegistry,
) -> None:
    encoder = registry.encoder("usage-events-value", USAGE_EVENT)
    fetched: list[int] = []

    def fetch(schema_id: int) -> str:
        fetched.append(schema_id)
        return registry.schema_str(schema_id)

    decoder = ValueDecoder(fetch)
    for i in range(3):
        assert decoder.decode(encoder.encode(usage_event(event_id=str(i))))["event_id"] == str(i)

    assert fetched == [encoder.schema_id]


def test_encoder_without_auto_register_finds_a_registered_schema_and_refuses_an_unknown_one(
    registry: SchemaRegistry,
) -> None:
    schema_id = registry.register("usage-events-value", USAGE_EVENT)

    assert registry.encoder("usage-events-value", USAGE_EVENT, auto_register=False).schema_id == schema_id
    with pytest.raises(SchemaNotFoundError):
        registry.encoder("other-value", USAGE_EVENT, auto_register=False)


def _confluent(registry: SchemaRegistry) -> tuple[AvroSerializer, AvroDeserializer, SerializationContext]:
    client: SchemaRegistryClient = registry.client
    serializer = AvroSerializer(
        client,
        USAGE_EVENT.read_text(),
        conf={"subject.name.strategy.type": "TOPIC", "auto.register.schemas": True},
    )
    return serializer, AvroDeserializer(client), SerializationContext("usage-events", MessageField.VALUE)


def test_bytes_are_identical_to_confluents_avro_serializer(registry: SchemaRegistry) -> None:
    serializer, _, ctx = _confluent(registry)
    theirs = serializer(usage_event(), ctx)
    # The mock registry keys schemas by exact text and confluent registers a reformatted copy, so take the
    # id it got; against a real registry both register the same id (tests/integration/kernel).
    encoder = ValueEncoder(USAGE_EVENT, schema_id_of(theirs))

    assert encoder.encode(usage_event()) == theirs


def test_confluents_deserializer_reads_kernel_bytes_and_kernel_reads_confluents(
    registry: SchemaRegistry,
) -> None:
    serializer, deserializer, ctx = _confluent(registry)
    encoder = registry.encoder("usage-events-value", USAGE_EVENT)
    decoder = registry.decoder(timestamps="datetime")
    event = usage_event()

    from_kernel = deserializer(encoder.encode(event), ctx)
    from_confluent = decoder.decode(serializer(event, ctx))

    expected = dict(event)
    expected["timestamp"] = dt.datetime(2024, 5, 29, 16, 26, 40, 123000, tzinfo=dt.UTC)
    expected["ingest"] = dict(
        event["ingest"], received_at=dt.datetime(2024, 5, 29, 16, 26, 40, 456000, tzinfo=dt.UTC)
    )
    assert from_kernel == expected
    assert from_confluent == expected


def test_timestamps_decode_to_epoch_millis_by_default_and_encoding_accepts_datetimes() -> None:
    encoder = ValueEncoder(USAGE_EVENT, 1)
    decoder = ValueDecoder({1: USAGE_EVENT.read_text()}.__getitem__)
    when = dt.datetime(2024, 5, 29, 16, 26, 40, 123000, tzinfo=dt.UTC)

    decoded = decoder.decode(encoder.encode(usage_event(timestamp=when)))

    assert decoded["timestamp"] == 1_717_000_000_123
    assert isinstance(decoded["timestamp"], int)


def test_decimals_round_trip_exactly() -> None:
    schema = SCHEMAS_DIR / "usage_aggregate.avsc"
    schema_json = json.loads(schema.read_text())
    record = _sample(schema_json)
    record["value"] = Decimal("12345678901234567890.123456789")
    encoder = ValueEncoder(schema, 7)
    decoder = ValueDecoder({7: schema.read_text()}.__getitem__)

    decoded = decoder.decode(encoder.encode(record))

    assert decoded["value"] == Decimal("12345678901234567890.123456789")
    assert isinstance(decoded["value"], Decimal)


def test_old_values_are_read_with_a_newer_reader_schema() -> None:
    v1 = {
        "type": "record",
        "name": "Thing",
        "namespace": "io.plg.test.v1",
        "fields": [{"name": "id", "type": "string"}, {"name": "gone", "type": "long"}],
    }
    v2 = {
        "type": "record",
        "name": "Thing",
        "namespace": "io.plg.test.v1",
        "fields": [{"name": "id", "type": "string"}, {"name": "region", "type": "string", "default": "eu"}],
    }
    data = ValueEncoder(v1, 1).encode({"id": "a", "gone": 5})
    decoder = ValueDecoder({1: json.dumps(v1), 2: json.dumps(v2)}.__getitem__, reader_schema=v2)

    assert decoder.decode(data) == {"id": "a", "region": "eu"}
    assert decoder.decode(ValueEncoder(v2, 2).encode({"id": "b", "region": "us"})) == {
        "id": "b",
        "region": "us",
    }


def test_every_schema_in_the_repository_round_trips_a_sample_record() -> None:
    for path in sorted(SCHEMAS_DIR.glob("*.avsc")):
        schema_json = json.loads(path.read_text())
        record = _sample(schema_json)
        decoder = ValueDecoder({3: path.read_text()}.__getitem__)
        assert decoder.decode(ValueEncoder(path, 3).encode(record)) == record, path.name


# ------------------------------------------------------------------------------------------ errors


def test_a_value_without_the_magic_byte_is_refused_clearly() -> None:
    decoder = ValueDecoder({1: USAGE_EVENT.read_text()}.__getitem__)

    with pytest.raises(SerializationError, match="magic byte 0x7b"):
        decoder.decode(b'{"event_id": "json, not avro"}')


def test_a_value_shorter_than_the_header_is_refused_clearly() -> None:
    decoder = ValueDecoder({1: USAGE_EVENT.read_text()}.__getitem__)

    with pytest.raises(SerializationError, match="shorter than the 5-byte"):
        decoder.decode(b"\x00\x00\x01")


def test_a_tombstone_is_a_serialization_error_not_a_crash() -> None:
    # A null value (a delete marker, or a stray producer) must reach the dead-letter path like any other
    # undecodable record, not escape as a TypeError that kills the consumer loop.
    decoder = ValueDecoder({1: USAGE_EVENT.read_text()}.__getitem__)

    with pytest.raises(SerializationError, match="no value"):
        decoder.decode(None)  # type: ignore[arg-type]


def test_a_writer_the_reader_schema_cannot_resolve_is_named_as_such() -> None:
    writer = {"type": "record", "name": "X", "fields": [{"name": "a", "type": "string"}]}
    reader = {"type": "record", "name": "X", "fields": [{"name": "b", "type": "long"}]}
    decoder = ValueDecoder({7: json.dumps(writer)}.__getitem__, reader)

    with pytest.raises(SerializationError, match="cannot be read with the reader schema") as info:
        decoder.decode(ValueEncoder(writer, 7).encode({"a": "x"}))
    assert "No default value for field b" in str(info.value)
    assert "truncated" not in str(info.value)


def test_a_value_naming_an_unknown_schema_id_is_a_serialization_error(registry: SchemaRegistry) -> None:
    decoder = registry.decoder()

    with pytest.raises(SerializationError, match="unknown to the registry") as info:
        decoder.decode(header(9999) + b"\x02a")
    assert isinstance(info.value, UnknownSchemaIdError)


def test_every_truncation_of_a_value_is_refused() -> None:
    encoder = ValueEncoder(USAGE_EVENT, 1)
    decoder = ValueDecoder({1: USAGE_EVENT.read_text()}.__getitem__)
    data = encoder.encode(usage_event())

    for cut in range(len(data)):
        with pytest.raises(SerializationError):
            decoder.decode(data[:cut])


def test_trailing_bytes_after_the_body_are_refused() -> None:
    encoder = ValueEncoder(USAGE_EVENT, 1)
    decoder = ValueDecoder({1: USAGE_EVENT.read_text()}.__getitem__)

    with pytest.raises(SerializationError, match="trailing bytes"):
        decoder.decode(encoder.encode(usage_event()) + b"\x00")


def test_a_record_missing_a_required_field_is_refused_naming_the_field() -> None:
    encoder = ValueEncoder(USAGE_EVENT, 1)
    event = usage_event()
    del event["customer_id"]

    with pytest.raises(SerializationError, match="customer_id"):
        encoder.encode(event)
    with pytest.raises(SerializationError, match="customer_id"):
        encoder.validate(event)


def test_a_field_of_the_wrong_type_is_refused() -> None:
    encoder = ValueEncoder(USAGE_EVENT, 1)

    with pytest.raises(SerializationError, match="properties"):
        encoder.encode(usage_event(properties={"nested": {"not": "allowed"}}))


def test_an_invalid_schema_is_refused_at_encoder_creation() -> None:
    with pytest.raises(SerializationError, match="invalid Avro schema"):
        ValueEncoder({"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}, 1)


def test_registry_resolves_the_schema_text_for_an_id(registry: SchemaRegistry) -> None:
    schema_id = registry.register("usage-events-value", USAGE_EVENT)
    other = SchemaRegistry(client=registry.client)  # fresh kernel cache, same registry

    assert json.loads(other.schema_str(schema_id)) == json.loads(USAGE_EVENT.read_text())
    assert registry.latest("usage-events-value").schema_id == schema_id


def test_schema_registered_by_confluent_client_gets_the_same_id_from_the_kernel(
    registry: SchemaRegistry,
) -> None:
    confluent_id = registry.client.register_schema(
        "usage-events-value", Schema(USAGE_EVENT.read_text(), "AVRO")
    )

    assert registry.register("usage-events-value", USAGE_EVENT) == confluent_id


# ----------------------------------------------------------------------------------------- helpers


def _sample(schema: Any, names: dict[str, Any] | None = None) -> Any:
    """A deterministic valid value for an Avro schema (non-null branch of unions, one map entry)."""
    names = {} if names is None else names
    if isinstance(schema, str):
        return names[schema] if schema in names else _PRIMITIVES[schema]
    if isinstance(schema, list):
        non_null = [s for s in schema if s != "null"]
        return _sample(non_null[0], names) if non_null else None
    kind = schema["type"]
    logical = schema.get("logicalType")
    if logical == "decimal":
        return Decimal("1.5")
    if logical in ("timestamp-millis", "timestamp-micros"):
        return 1_717_000_000_000
    if kind == "record":
        record = {f["name"]: _sample(f["type"], names) for f in schema["fields"]}
        names[schema["name"]] = record
        return record
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "array":
        return [_sample(schema["items"], names)]
    if kind == "map":
        return {"k": _sample(schema["values"], names)}
    if kind == "fixed":
        return b"\x01" * schema["size"]
    return _sample(kind, names)


_PRIMITIVES: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "int": 7,
    "long": 1_717_000_000_000,
    "float": 1.5,
    "double": 2.25,
    "bytes": b"\x00\xff",
    "string": "text",
}
