"""confluent-kafka's own ``SchemaRegistryClient``, ``AvroSerializer`` and ``AvroDeserializer`` against a
real registry process (``python -m services.schema_registry`` on a free port, admin token on, Basic auth
from ``basic.auth.user.info`` as Confluent users configure it)."""

from __future__ import annotations

import json
import struct
import uuid

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.schema_registry_client import (
    ConfigCompatibilityLevel,
    Metadata,
    MetadataProperties,
    ServerConfig,
)
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.integration.schema_registry.support import ADMIN_TOKEN

USER_V1 = json.dumps(
    {
        "type": "record",
        "name": "SignUp",
        "namespace": "io.plg.test.v1",
        "fields": [{"name": "user_id", "type": "string"}, {"name": "plan", "type": "string"}],
    }
)
USER_V2 = json.dumps(
    {
        "type": "record",
        "name": "SignUp",
        "namespace": "io.plg.test.v1",
        "fields": [
            {"name": "user_id", "type": "string"},
            {"name": "plan", "type": "string"},
            {"name": "seats", "type": "int", "default": 1},
        ],
    }
)
USER_BAD = json.dumps(
    {
        "type": "record",
        "name": "SignUp",
        "namespace": "io.plg.test.v1",
        "fields": [{"name": "user_id", "type": "long"}, {"name": "plan", "type": "string"}],
    }
)


@pytest.fixture(scope="module")
def server(registry_database, start_registry):
    return start_registry(registry_database, REGISTRY_ADMIN_TOKEN=ADMIN_TOKEN)


@pytest.fixture
def client(server):
    with SchemaRegistryClient({"url": server.url, "basic.auth.user.info": f"plg:{ADMIN_TOKEN}"}) as c:
        yield c


@pytest.fixture
def anonymous(server):
    with SchemaRegistryClient({"url": server.url, "max.retries": 0}) as c:
        yield c


@pytest.fixture
def topic() -> str:
    return f"signups-{uuid.uuid4().hex[:8]}"


def test_register_fetch_and_look_up_with_the_confluent_client(client, topic):
    subject = f"{topic}-value"
    schema_id = client.register_schema(subject, Schema(USER_V1, "AVRO"))
    assert client.register_schema(f"{topic}-copy", Schema(USER_V1, "AVRO")) == schema_id
    fetched = client.get_schema(schema_id)
    assert json.loads(fetched.schema_str) == json.loads(USER_V1)
    assert fetched.schema_type == "AVRO"
    found = client.lookup_schema(subject, Schema(USER_V1, "AVRO"))
    assert (found.schema_id, found.version, found.subject) == (schema_id, 1, subject)
    latest = client.get_latest_version(subject)
    assert (latest.schema_id, latest.version) == (schema_id, 1)
    assert latest.guid
    assert client.get_version(subject, 1).schema_id == schema_id
    assert client.get_versions(subject) == [1]
    assert subject in client.get_subjects()
    pairs = {(v.subject, v.version) for v in client.get_schema_versions(schema_id)}
    assert pairs == {(subject, 1), (f"{topic}-copy", 1)}
    assert sorted(client.get_subjects_by_schema_id(schema_id)) == sorted([subject, f"{topic}-copy"])
    assert client.get_schema_types() == ["AVRO"]


def test_evolution_and_compatibility_through_the_client(client, topic):
    subject = f"{topic}-value"
    client.register_schema(subject, Schema(USER_V1, "AVRO"))
    assert client.test_compatibility(subject, Schema(USER_V2, "AVRO")) is True
    assert client.test_compatibility(subject, Schema(USER_BAD, "AVRO")) is False
    assert client.register_schema_full_response(subject, Schema(USER_V2, "AVRO")).version == 2
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(USER_BAD, "AVRO"))
    assert refused.value.http_status_code == 409
    assert refused.value.error_code == 409
    assert client.get_versions(subject) == [1, 2]


def test_config_through_the_client(client, topic):
    subject = f"{topic}-value"
    assert client.set_compatibility(subject, "full_transitive") == {"compatibility": "FULL_TRANSITIVE"}
    assert client.get_compatibility(subject) == "FULL_TRANSITIVE"
    config = client.set_config(subject, ServerConfig(compatibility=ConfigCompatibilityLevel.NONE))
    assert config == {"compatibility": "NONE"}
    assert client.get_config(subject).compatibility_level is ConfigCompatibilityLevel.NONE
    assert client.delete_config(subject).compatibility_level is ConfigCompatibilityLevel.NONE
    assert client.get_config().compatibility_level is ConfigCompatibilityLevel.BACKWARD
    assert client.update_mode(subject, "READONLY") == "READONLY"
    assert client.get_mode(subject) == "READONLY"
    assert client.delete_mode(subject) == "READONLY"
    assert client.get_global_mode() == "READWRITE"


def test_soft_and_permanent_delete_through_the_client(client, topic):
    subject = f"{topic}-value"
    schema_id = client.register_schema(subject, Schema(USER_V1, "AVRO"))
    client.register_schema(subject, Schema(USER_V2, "AVRO"))
    with pytest.raises(SchemaRegistryError) as not_soft:
        client.delete_version(subject, 1, permanent=True)
    assert not_soft.value.error_code == 40407
    assert client.delete_version(subject, 1) == 1
    assert client.get_versions(subject) == [2]
    assert client.get_versions(subject, deleted=True) == [1, 2]
    assert client.get_version(subject, 1, deleted=True).schema_id == schema_id
    assert client.delete_version(subject, 1, permanent=True) == 1
    assert client.delete_subject(subject) == [2]
    assert subject not in client.get_subjects()
    assert subject in client.get_subjects(deleted=True)
    assert client.delete_subject(subject, permanent=True) == [2]
    with pytest.raises(SchemaRegistryError) as gone:
        client.get_versions(subject, deleted=True)
    assert gone.value.error_code == 40401


def test_error_codes_reach_the_client(client, topic):
    with pytest.raises(SchemaRegistryError) as no_schema:
        client.get_schema(2_000_000_000)
    assert no_schema.value.error_code == 40403
    with pytest.raises(SchemaRegistryError) as no_subject:
        client.get_latest_version(f"{topic}-missing")
    assert no_subject.value.error_code == 40401
    client.register_schema(f"{topic}-value", Schema(USER_V1, "AVRO"))
    with pytest.raises(SchemaRegistryError) as no_version:
        client.get_version(f"{topic}-value", 5)
    assert no_version.value.error_code == 40402
    with pytest.raises(SchemaRegistryError) as invalid:
        client.register_schema(f"{topic}-value", Schema('{"type": "recrd"}', "AVRO"))
    assert invalid.value.error_code == 42201
    assert "recrd" in invalid.value.error_message
    with pytest.raises(SchemaRegistryError) as bad_level:
        client.set_compatibility(f"{topic}-value", "SIDEWAYS")
    assert bad_level.value.error_code == 42203


def test_writes_without_credentials_are_refused_but_reads_work(client, anonymous, topic):
    schema_id = client.register_schema(f"{topic}-value", Schema(USER_V1, "AVRO"))
    with pytest.raises(SchemaRegistryError) as refused:
        anonymous.register_schema(f"{topic}-other", Schema(USER_V2, "AVRO"))
    assert refused.value.http_status_code == 401
    assert refused.value.error_code == 40101
    assert json.loads(anonymous.get_schema(schema_id).schema_str) == json.loads(USER_V1)


def test_metadata_is_stored_and_found_through_the_client(client, topic):
    subject = f"{topic}-value"
    owned = Schema(USER_V1, "AVRO", metadata=Metadata(None, MetadataProperties({"owner": "growth"}), None))
    first = client.register_schema(subject, owned)
    second = client.register_schema(subject, Schema(USER_V2, "AVRO"))
    assert first != second
    found = client.get_latest_with_metadata(subject, {"owner": "growth"})
    assert (found.schema_id, found.version) == (first, 1)
    assert found.schema.metadata.properties.properties == {"owner": "growth"}
    with pytest.raises(SchemaRegistryError) as missing:
        client.get_latest_with_metadata(subject, {"owner": "billing"})
    assert missing.value.error_code == 40402


def test_a_static_bearer_token_as_the_kernel_configures_it_is_accepted(server, topic):
    conf = {
        "url": server.url,
        "bearer.auth.credentials.source": "STATIC_TOKEN",
        "bearer.auth.token": ADMIN_TOKEN,
        "bearer.auth.logical.cluster": "plg",
    }
    with SchemaRegistryClient(conf) as bearer:
        schema_id = bearer.register_schema(f"{topic}-value", Schema(USER_V1, "AVRO"))
        assert bearer.delete_subject(f"{topic}-value") == [1]
    assert schema_id > 0


def test_avro_serializer_and_deserializer_round_trip_through_our_registry(client, topic):
    serializer = AvroSerializer(client, USER_V2)
    value = {"user_id": "u-42", "plan": "growth", "seats": 12}
    ctx = SerializationContext(topic, MessageField.VALUE)
    payload = serializer(value, ctx)
    assert payload is not None
    magic, schema_id = struct.unpack(">bI", payload[:5])
    assert magic == 0
    assert schema_id == client.get_latest_version(f"{topic}-value").schema_id
    # A fresh client (empty cache) must fetch the writer schema by id from the registry.
    with SchemaRegistryClient({"url": client.config()["url"]}) as reader_client:
        assert AvroDeserializer(reader_client)(payload, ctx) == value
        # A consumer on the older reader schema resolves the new data (BACKWARD evolution in practice).
        old_reader = AvroDeserializer(reader_client, USER_V1)
        assert old_reader(payload, ctx) == {"user_id": "u-42", "plan": "growth"}


def test_serializer_without_auto_register_uses_the_registered_latest_version(client, topic):
    schema_id = client.register_schema(f"{topic}-value", Schema(USER_V1, "AVRO"))
    with SchemaRegistryClient({"url": client.config()["url"]}) as read_only:
        serializer = AvroSerializer(
            read_only, USER_V1, conf={"auto.register.schemas": False, "use.latest.version": True}
        )
        payload = serializer(
            {"user_id": "u-1", "plan": "free"}, SerializationContext(topic, MessageField.VALUE)
        )
    assert payload is not None
    assert struct.unpack(">I", payload[1:5])[0] == schema_id
