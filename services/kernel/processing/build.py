"""Wiring a loop from the settings and the topic catalogue, so that a service says only what it reads,
what it writes and what it does.

Topics are named by their catalogue name; the deployment's topic prefix is applied to topics, the group id
and the transactional id alike (tests give each run its own). Every client is pushed onto the service's
:class:`~services.kernel.lifecycle.Lifecycle`, in the order that closes them right: the loop (its producer,
aborting an open transaction) first, then the lag tracker, then the consumer (leaving the group).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from services.kernel.dlq import DeadLetterPublisher
from services.kernel.kafka import Consumer, Producer, TransactionalProducer
from services.kernel.lag import ConsumerLagTracker
from services.kernel.lifecycle import Lifecycle
from services.kernel.processing.at_least_once import AtLeastOnceLoop, SinkHandler
from services.kernel.processing.exactly_once import ExactlyOnceLoop
from services.kernel.processing.handler import StreamHandler
from services.kernel.processing.messages import OutputTopic
from services.kernel.serde import SchemaRegistry, SchemaSource, ValueDecoder
from services.kernel.settings import ExactlyOnceSettings, KafkaSettings
from services.kernel.topics import USAGE_EVENTS_DLQ, topic

#: Consumer settings every stream loop gets unless it overrides them. Cooperative: a rebalance moves only
#: the partitions that change owner, so the others keep their in-memory state.
GROUP_DEFAULTS: Mapping[str, Any] = {"partition.assignment.strategy": "cooperative-sticky"}


def _decoders(
    registry: SchemaRegistry,
    inputs: Sequence[str],
    prefix: str,
    reader_schemas: Mapping[str, SchemaSource | None] | None,
) -> dict[str, ValueDecoder]:
    decoders: dict[str, ValueDecoder] = {}
    for name in inputs:
        spec = topic(name, prefix)
        reader = (reader_schemas or {}).get(name, spec.schema_path)
        decoders[spec.name] = registry.decoder(reader_schema=reader)
    return decoders


def _outputs(
    registry: SchemaRegistry, names: Sequence[str], prefix: str, auto_register: bool
) -> dict[str, OutputTopic]:
    outputs: dict[str, OutputTopic] = {}
    for name in names:
        spec = topic(name, prefix)
        encoder = None
        if spec.schema_path is not None:
            encoder = registry.encoder(spec.value_subject, spec.schema_path, auto_register=auto_register)
        outputs[name] = OutputTopic(spec.name, encoder)
    return outputs


def _dead_letters(
    registry: SchemaRegistry,
    name: str | None,
    prefix: str,
    producer: Producer | TransactionalProducer | None,
    service: str,
    auto_register: bool,
) -> DeadLetterPublisher | None:
    if name is None or producer is None:
        return None
    spec = topic(name, prefix)
    assert spec.schema_path is not None, f"dead-letter topic {name} has no schema"
    encoder = registry.encoder(spec.value_subject, spec.schema_path, auto_register=auto_register)
    return DeadLetterPublisher(producer, encoder, spec.name, service)


def _consumer(
    kafka: KafkaSettings,
    group: str,
    client_id: str,
    overrides: Mapping[str, Any] | None,
    lifecycle: Lifecycle,
) -> tuple[Consumer, ConsumerLagTracker]:
    config = {**GROUP_DEFAULTS, **(overrides or {})}
    consumer = lifecycle.push(Consumer(kafka, group, client_id=client_id, **config), "consumer")
    # Before the loop, which feeds it positions from its poll loop; closed before the consumer.
    lag = lifecycle.push(ConsumerLagTracker(consumer).start(), "lag tracker")
    return consumer, lag


def exactly_once(
    *,
    service: str,
    kafka: KafkaSettings,
    registry: SchemaRegistry,
    lifecycle: Lifecycle,
    handler: StreamHandler,
    inputs: Sequence[str],
    outputs: Sequence[str] = (),
    dead_letters: str | None = USAGE_EVENTS_DLQ,
    group_id: str,
    transactional_id: str,
    topic_prefix: str = "",
    auto_register: bool = False,
    reader_schemas: Mapping[str, SchemaSource | None] | None = None,
    consumer_config: Mapping[str, Any] | None = None,
    transaction_timeout_ms: int = 60_000,
    **loop_options: Any,
) -> ExactlyOnceLoop:
    """An :class:`ExactlyOnceLoop` reading ``inputs`` and writing ``outputs`` (catalogue names).

    ``transactional_id`` must be stable per instance and unique across instances (e.g. the pod name): it
    is what fences a dead predecessor. ``loop_options`` go to the loop (``max_batch``, ``batch_wait``,
    ``kafka_timeout``, ``tombstones``, ``clock``).
    """
    decoders = _decoders(registry, inputs, topic_prefix, reader_schemas)
    out = _outputs(registry, outputs, topic_prefix, auto_register)
    consumer, lag = _consumer(
        kafka, f"{topic_prefix}{group_id}", f"{service}-{transactional_id}", consumer_config, lifecycle
    )

    def new_producer() -> TransactionalProducer:
        return TransactionalProducer(
            kafka,
            f"{topic_prefix}{transactional_id}",
            transaction_timeout_ms=transaction_timeout_ms,
            # librdkafka requires a record's delivery timeout to fit in the transaction's.
            message_timeout_ms=min(30_000, transaction_timeout_ms),
        )

    loop = ExactlyOnceLoop(
        service=service,
        consumer=consumer,
        producer_factory=new_producer,
        inputs=[topic(name, topic_prefix).name for name in inputs],
        decoders=decoders,
        outputs=out,
        handler=handler,
        dead_letters=None,
        lag=lag,
        **loop_options,
    )
    lifecycle.callback(loop.close, "transactional producer")
    # Bound to the loop's producer now; the loop rebinds it when it replaces that producer.
    loop.dead_letters = _dead_letters(
        registry, dead_letters, topic_prefix, loop.producer, service, auto_register
    )
    return loop


def at_least_once(
    *,
    service: str,
    kafka: KafkaSettings,
    registry: SchemaRegistry,
    lifecycle: Lifecycle,
    handler: SinkHandler,
    inputs: Sequence[str],
    outputs: Sequence[str] = (),
    dead_letters: str | None = USAGE_EVENTS_DLQ,
    group_id: str,
    instance_id: str = "0",
    topic_prefix: str = "",
    auto_register: bool = False,
    reader_schemas: Mapping[str, SchemaSource | None] | None = None,
    consumer_config: Mapping[str, Any] | None = None,
    **loop_options: Any,
) -> AtLeastOnceLoop:
    """An :class:`AtLeastOnceLoop` reading ``inputs`` (catalogue names) into ``handler``'s effect; it
    gets an idempotent producer only if it writes ``outputs`` or dead letters. ``loop_options`` go to the
    loop (``max_batch``, ``batch_wait``, ``ack_timeout``, ``tombstones``, ``clock``)."""
    decoders = _decoders(registry, inputs, topic_prefix, reader_schemas)
    out = _outputs(registry, outputs, topic_prefix, auto_register)
    consumer, lag = _consumer(
        kafka, f"{topic_prefix}{group_id}", f"{service}-{instance_id}", consumer_config, lifecycle
    )
    producer = None
    if outputs or dead_letters:
        producer = Producer(kafka, client_id=f"{service}-{instance_id}")
    letters = _dead_letters(registry, dead_letters, topic_prefix, producer, service, auto_register)
    loop = AtLeastOnceLoop(
        service=service,
        consumer=consumer,
        producer=producer,
        inputs=[topic(name, topic_prefix).name for name in inputs],
        decoders=decoders,
        outputs=out,
        handler=handler,
        dead_letters=letters,
        lag=lag,
        **loop_options,
    )
    lifecycle.callback(loop.close, "producer")
    return loop


def exactly_once_service(
    settings: ExactlyOnceSettings,
    *,
    service: str,
    registry: SchemaRegistry,
    lifecycle: Lifecycle,
    handler: StreamHandler,
    inputs: Sequence[str],
    outputs: Sequence[str] = (),
    dead_letters: str | None = USAGE_EVENTS_DLQ,
    **loop_options: Any,
) -> ExactlyOnceLoop:
    """:func:`exactly_once` with the group, instance, timeouts and batch size taken from a service's
    :class:`~services.kernel.settings.ExactlyOnceSettings`; ``loop_options`` override or add loop
    options (``tombstones``, ``clock``...)."""
    options: dict[str, Any] = {
        "max_batch": settings.max_batch_events,
        "batch_wait": settings.batch_wait_ms / 1000,
        "kafka_timeout": settings.commit_timeout_seconds,
        **loop_options,
    }
    return exactly_once(
        service=service,
        kafka=settings.kafka,
        registry=registry,
        lifecycle=lifecycle,
        handler=handler,
        inputs=inputs,
        outputs=outputs,
        dead_letters=dead_letters,
        group_id=settings.group_id,
        transactional_id=settings.transactional_id,
        topic_prefix=settings.platform.topic_prefix,
        auto_register=settings.auto_register_schemas,
        consumer_config=settings.consumer_config(),
        transaction_timeout_ms=settings.transaction_timeout_ms,
        **options,
    )
