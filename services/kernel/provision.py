"""Provisioning from the topic catalogue: create the declared topics, register their value schemas.

Idempotent, so every start-up (``make up``, each test's prefixed catalogue, a service's own start) can
run it: topics that exist are left alone — with a warning when they differ from their declaration (fewer
partitions, or a config such as ``cleanup.policy`` the broker holds differently: a state topic created
with ``delete`` instead of ``compact`` would lose its state after the retention period), since changing a
live topic is a deliberate act — and registering an unchanged schema returns its existing id.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # re-exported by .admin, but not for mypy
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from pydantic import ValidationError

from services.kernel.settings import (
    LOCAL,
    PRODUCTION,
    KafkaSettings,
    PlatformSettings,
    SchemaRegistrySettings,
)
from services.kernel.topics import TopicSpec, catalogue, with_schemas

log = logging.getLogger(__name__)


class ProvisioningError(RuntimeError):
    """A topic could not be created or a schema could not be registered."""


def admin_client(kafka: KafkaSettings) -> AdminClient:
    conf: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap_servers, **kafka.extra}
    if kafka.client_id:
        conf["client.id"] = kafka.client_id
    return AdminClient(conf)


def partition_count(kafka: KafkaSettings, name: str) -> int:
    """Partitions of a topic as the broker has them (a key's home partition is its hash modulo this: the
    metering aggregator's and the health scorers' partition maths)."""
    metadata = admin_client(kafka).list_topics(name, timeout=10).topics.get(name)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise RuntimeError(f"topic {name} does not exist: provision the catalogue first (make up)")
    return len(metadata.partitions)


def wait_for_broker(kafka: KafkaSettings, timeout: float = 60.0) -> int:
    """Block until the cluster answers a metadata request naming at least one broker; returns their count.

    An open port is not enough: a KRaft broker accepts connections before it has caught up with the
    metadata log, and until then it answers with no brokers.
    """
    admin = admin_client(kafka)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            if metadata.brokers:
                return len(metadata.brokers)
        except KafkaException as exc:
            last_error = exc
        time.sleep(0.2)
    raise ProvisioningError(
        f"Kafka at {kafka.bootstrap_servers} not ready after {timeout:.0f}s: {last_error}"
    )


def _with_durability(specs: Sequence[TopicSpec], min_insync_replicas: int | None) -> list[TopicSpec]:
    # min.insync.replicas is the deployment's (PLG_TOPIC_MIN_INSYNC_REPLICAS), not the catalogue's: the same
    # topic needs 1 on a laptop's single broker and 2 in production. Applied at creation, compared as drift.
    if min_insync_replicas is None:
        return list(specs)
    return [
        replace(spec, config={**spec.config, "min.insync.replicas": str(min_insync_replicas)})
        for spec in specs
    ]


def provision_topics(
    kafka: KafkaSettings,
    specs: Sequence[TopicSpec],
    *,
    replication_factor: int = 1,
    min_insync_replicas: int | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create every topic in ``specs`` that does not exist yet; returns the names created now.

    Topics are created with ``replication_factor`` copies and, when given, ``min.insync.replicas`` (the
    provisioner's ``PLG_TOPIC_REPLICATION_FACTOR`` / ``PLG_TOPIC_MIN_INSYNC_REPLICAS``).
    """
    specs = _with_durability(specs, min_insync_replicas)
    admin = admin_client(kafka)
    existing = admin.list_topics(timeout=timeout).topics
    to_create: list[NewTopic] = []
    for spec in specs:
        found = existing.get(spec.name)
        if found is None:
            to_create.append(
                NewTopic(
                    spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=replication_factor,
                    config=spec.broker_config(),
                )
            )
        else:
            replicas = min((len(p.replicas) for p in found.partitions.values()), default=replication_factor)
            if replicas < replication_factor:
                log.warning(
                    "topic %s has %d replicas per partition but %d are configured; left as is (raise it "
                    "deliberately with a partition reassignment)",
                    spec.name,
                    replicas,
                    replication_factor,
                )
        if found is not None and len(found.partitions) < spec.partitions:
            log.warning(
                "topic %s has %d partitions but the catalogue declares %d; left as is (adding partitions "
                "moves keys to other partitions, do it deliberately)",
                spec.name,
                len(found.partitions),
                spec.partitions,
            )
    existing_specs = [spec for spec in specs if spec.name in existing]
    for name, differences in _config_drift(admin, existing_specs, timeout).items():
        log.warning(
            "topic %s exists with a config that differs from the catalogue: %s; left as is (change it "
            "deliberately, e.g. with kafka-configs --alter)",
            name,
            "; ".join(
                f"{key}={actual} (declared {declared})" for key, (declared, actual) in differences.items()
            ),
        )
    if not to_create:
        return []
    created: list[str] = []
    errors: list[str] = []
    for name, future in admin.create_topics(to_create, request_timeout=timeout).items():
        try:
            future.result()
            created.append(str(name))
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # created concurrently by another process: that's the state we want
            errors.append(f"{name}: {exc}")
    if errors:
        raise ProvisioningError("could not create topics: " + "; ".join(errors))
    _wait_for_leaders(admin, created, timeout)
    log.info("created topics %s", ", ".join(created))
    return created


def config_drift(
    kafka: KafkaSettings, specs: Sequence[TopicSpec], timeout: float = 30.0
) -> dict[str, dict[str, tuple[str, str | None]]]:
    """For each declared topic that exists: the declared config values the broker holds differently, as
    ``{topic: {key: (declared, actual)}}`` (topics that match, or do not exist, are left out)."""
    admin = admin_client(kafka)
    existing = admin.list_topics(timeout=timeout).topics
    return _config_drift(admin, [spec for spec in specs if spec.name in existing], timeout)


def _config_drift(
    admin: AdminClient, specs: Sequence[TopicSpec], timeout: float
) -> dict[str, dict[str, tuple[str, str | None]]]:
    if not specs:
        return {}
    declared = {spec.name: spec.broker_config() for spec in specs}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in declared]
    drift: dict[str, dict[str, tuple[str, str | None]]] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            actual = future.result()
        except KafkaException as exc:  # e.g. no DescribeConfigs permission: a check, not a blocker
            log.warning("could not read the config of topic %s: %s", resource.name, exc)
            continue
        differences = {
            key: (value, actual[key].value if key in actual else None)
            for key, value in declared[resource.name].items()
            if key not in actual or actual[key].value != value
        }
        if differences:
            drift[resource.name] = differences
    return drift


def _wait_for_leaders(admin: AdminClient, names: Iterable[str], timeout: float) -> None:
    """Wait until every partition of ``names`` has a leader, so producing right away doesn't fail."""
    pending = set(names)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        for name in list(pending):
            meta = topics.get(name)
            if (
                meta is not None
                and meta.error is None
                and meta.partitions
                and all(p.leader >= 0 for p in meta.partitions.values())
            ):
                pending.discard(name)
        if pending:
            time.sleep(0.05)
    if pending:
        raise ProvisioningError(f"topics without leaders after {timeout:.0f}s: {sorted(pending)}")


def registry_client(registry: SchemaRegistrySettings) -> SchemaRegistryClient:
    """A Confluent client for our registry, sending the admin token as a bearer token when set."""
    conf: dict[str, Any] = {"url": registry.url}
    if registry.admin_token is not None:
        conf.update(
            {
                "bearer.auth.credentials.source": "STATIC_TOKEN",
                "bearer.auth.token": registry.admin_token.get_secret_value(),
                # Required by the client for static tokens (a Confluent Cloud header); ours ignores it.
                "bearer.auth.logical.cluster": "plg",
            }
        )
    return SchemaRegistryClient(conf)


def register_schemas(registry: SchemaRegistrySettings, specs: Sequence[TopicSpec]) -> dict[str, int]:
    """Register each spec's value schema under ``<topic>-value``; returns ``{subject: schema id}``."""
    client = registry_client(registry)
    ids: dict[str, int] = {}
    for spec in with_schemas(specs):
        path = spec.schema_path
        assert path is not None  # with_schemas keeps only specs that have one
        try:
            schema_id = client.register_schema(spec.value_subject, Schema(path.read_text(), "AVRO"))
        except Exception as exc:  # the client raises SchemaRegistryError and transport errors alike
            raise ProvisioningError(f"could not register {path.name} as {spec.value_subject}: {exc}") from exc
        ids[spec.value_subject] = int(schema_id)
    return ids


def provision_all(
    kafka: KafkaSettings,
    registry: SchemaRegistrySettings,
    prefix: str = "",
    *,
    replication_factor: int = 1,
    min_insync_replicas: int | None = None,
) -> tuple[list[str], dict[str, int]]:
    """The whole catalogue with ``prefix``: topics created, schemas registered."""
    specs = catalogue(prefix)
    created = provision_topics(
        kafka, specs, replication_factor=replication_factor, min_insync_replicas=min_insync_replicas
    )
    ids = register_schemas(registry, specs)
    return created, ids


def main() -> int:
    """``python -m services.kernel.provision``: provision the catalogue from the environment's settings.

    The one-shot provisioning step of docker-compose.yml and of deployments; locally ``make up`` does it.
    Topics get ``PLG_TOPIC_REPLICATION_FACTOR`` copies and ``PLG_TOPIC_MIN_INSYNC_REPLICAS``; with
    ``PLG_ENVIRONMENT=production`` values below 3 and 2 refuse to run (exit 2), as every service does.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        kafka, registry, platform = KafkaSettings(), SchemaRegistrySettings(), PlatformSettings()
    except ValidationError as exc:
        print(f"provision: invalid settings: {len(exc.errors())} error(s)", file=sys.stderr)
        for err in exc.errors():
            print(f"  - {'.'.join(str(p) for p in err['loc'])}: {err['msg']}", file=sys.stderr)
        return 2
    dev_defaults = platform.development_defaults()
    if dev_defaults and platform.environment == PRODUCTION:
        print("provision: PLG_ENVIRONMENT=production refuses development defaults:", file=sys.stderr)
        for default in dev_defaults:
            print(f"  - {default}", file=sys.stderr)
        return 2
    if platform.environment != LOCAL:
        for default in dev_defaults:
            log.warning("development default in use: %s", default)
    wait_for_broker(kafka, timeout=120)
    created, ids = provision_all(
        kafka,
        registry,
        prefix=platform.topic_prefix,
        replication_factor=platform.topic_replication_factor,
        min_insync_replicas=platform.topic_min_insync_replicas,
    )
    log.info("topics created: %s", ", ".join(created) or "none (all existed)")
    for subject, schema_id in ids.items():
        log.info("schema %s: id %d", subject, schema_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
