"""Wiring a loop from the settings and the topic catalogue, so that a service says only what it reads,
what it writes and what it does.

Topics are named by their catalogue name; the deployment's topic prefix is applied to topics, the group id
and the transactional id alike (tests give each run its own). Every client is pushed onto the service's
:class:`~services.kernel.lifecycle.Lifecycle`, in the order that closes them right: the loop (its producer,
aborting an open transaction) first, then the lag tracker, then the consumer (leaving the group).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Required, TypedDict, Unpack

from services.kernel.dlq import DeadLetterPublisher
from services.kernel.kafka import Consumer, Producer, TransactionalProducer
from services.kernel.lag import ConsumerLagTracker
from services.kernel.lifecycle import Lifecycle
from services.kernel.processing.at_least_once import AtLeastOnceLoop, SinkHandler
from services.kernel.processing.exactly_once import ExactlyOnceLoop
from services.kernel.processing.handler import StreamHandler
from services.kernel.processing.loop import LoopParts
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


class Wiring(TypedDict, total=False):
    """What both builders take besides the handler and the instance's identity."""

    service: Required[str]
    kafka: Required[KafkaSettings]
    registry: Required[SchemaRegistry]
    lifecycle: Required[Lifecycle]
    #: Catalogue names of the topics read, and of those written with ``out.send``.
    inputs: Required[Sequence[str]]
    outputs: Sequence[str]
    #: The dead-letter topic (catalogue name; default ``usage-events-dlq``), or None for none.
    dead_letters: str | None
    group_id: Required[str]
    topic_prefix: str
    auto_register: bool
    #: Per input, the schema its values are resolved to (default: the catalogue's).
    reader_schemas: Mapping[str, SchemaSource | None]
    #: librdkafka settings for the consumer, over :data:`GROUP_DEFAULTS`.
    consumer_config: Mapping[str, Any]
    max_batch: int
    batch_wait: float
    tombstones: bool
    clock: Callable[[], float]


_LOOP_OPTIONS = ("max_batch", "batch_wait", "tombstones", "clock")


def _parts(handler: StreamHandler, client_id: str, wiring: Wiring) -> LoopParts:
    """The consumer (and its lag tracker), decoders and encoders a loop of either kind is wired from."""
    prefix = wiring.get("topic_prefix", "")
    registry, lifecycle, inputs = wiring["registry"], wiring["lifecycle"], wiring["inputs"]
    config = {**GROUP_DEFAULTS, **wiring.get("consumer_config", {})}
    group = f"{prefix}{wiring['group_id']}"
    consumer = lifecycle.push(Consumer(wiring["kafka"], group, client_id=client_id, **config), "consumer")
    # Before the loop, which feeds it positions from its poll loop; closed before the consumer.
    lag = lifecycle.push(ConsumerLagTracker(consumer).start(), "lag tracker")
    options: dict[str, Any] = {k: wiring[k] for k in _LOOP_OPTIONS if k in wiring}  # type: ignore[literal-required]
    return LoopParts(
        service=wiring["service"],
        consumer=consumer,
        inputs=[topic(name, prefix).name for name in inputs],
        decoders=_decoders(registry, inputs, prefix, wiring.get("reader_schemas")),
        outputs=_outputs(registry, wiring.get("outputs", ()), prefix, wiring.get("auto_register", False)),
        handler=handler,
        lag=lag,
        **options,
    )


def _letters(wiring: Wiring, producer: Producer | TransactionalProducer | None) -> DeadLetterPublisher | None:
    return _dead_letters(
        wiring["registry"],
        wiring.get("dead_letters", USAGE_EVENTS_DLQ),
        wiring.get("topic_prefix", ""),
        producer,
        wiring["service"],
        wiring.get("auto_register", False),
    )


def exactly_once(
    *,
    handler: StreamHandler,
    transactional_id: str,
    transaction_timeout_ms: int = 60_000,
    kafka_timeout: float = 30.0,
    **wiring: Unpack[Wiring],
) -> ExactlyOnceLoop:
    """An :class:`ExactlyOnceLoop` reading ``inputs`` and writing ``outputs`` (catalogue names).

    ``transactional_id`` must be stable per instance and unique across instances (e.g. the pod name): it
    is what fences a dead predecessor. ``kafka_timeout`` bounds each transactional call's retries.
    """
    kafka, prefix = wiring["kafka"], wiring.get("topic_prefix", "")
    parts = _parts(handler, f"{wiring['service']}-{transactional_id}", wiring)

    def new_producer() -> TransactionalProducer:
        return TransactionalProducer(
            kafka,
            f"{prefix}{transactional_id}",
            transaction_timeout_ms=transaction_timeout_ms,
            # librdkafka requires a record's delivery timeout to fit in the transaction's.
            message_timeout_ms=min(30_000, transaction_timeout_ms),
        )

    loop = ExactlyOnceLoop(parts, new_producer, kafka_timeout=kafka_timeout)
    wiring["lifecycle"].callback(loop.close, "transactional producer")
    # Bound to the loop's producer now; the loop rebinds it when it replaces that producer.
    loop.dead_letters = _letters(wiring, loop.producer)
    return loop


def at_least_once(
    *,
    handler: SinkHandler,
    instance_id: str = "0",
    ack_timeout: float = 30.0,
    **wiring: Unpack[Wiring],
) -> AtLeastOnceLoop:
    """An :class:`AtLeastOnceLoop` reading ``inputs`` (catalogue names) into ``handler``'s effect; it
    gets an idempotent producer only if it writes ``outputs`` or dead letters, whose acknowledgements it
    waits for (up to ``ack_timeout``) before committing a batch's offsets."""
    client_id = f"{wiring['service']}-{instance_id}"
    parts = _parts(handler, client_id, wiring)
    producer = None
    if wiring.get("outputs") or wiring.get("dead_letters", USAGE_EVENTS_DLQ):
        producer = Producer(wiring["kafka"], client_id=client_id)
    parts.dead_letters = _letters(wiring, producer)
    loop = AtLeastOnceLoop(parts, producer, ack_timeout=ack_timeout)
    wiring["lifecycle"].callback(loop.close, "producer")
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
    tombstones: bool = False,
) -> ExactlyOnceLoop:
    """:func:`exactly_once` with the group, instance, timeouts and batch size taken from a service's
    :class:`~services.kernel.settings.ExactlyOnceSettings`."""
    return exactly_once(
        handler=handler,
        transactional_id=settings.transactional_id,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        kafka_timeout=settings.commit_timeout_seconds,
        service=service,
        kafka=settings.kafka,
        registry=registry,
        lifecycle=lifecycle,
        inputs=inputs,
        outputs=outputs,
        dead_letters=dead_letters,
        group_id=settings.group_id,
        topic_prefix=settings.platform.topic_prefix,
        auto_register=settings.auto_register_schemas,
        consumer_config=settings.consumer_config(),
        max_batch=settings.max_batch_events,
        batch_wait=settings.batch_wait_ms / 1000,
        tombstones=tombstones,
    )
