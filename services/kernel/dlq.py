"""Dead letters: a record a service cannot process, kept with its original bytes and the reason.

:func:`dead_letter` builds the ``io.plg.dlq.v1.DeadLetter`` value (``schemas/dead_letter.avsc``) from a
consumed record — pure, no I/O. :class:`DeadLetterPublisher` encodes and produces it to the dead-letter
topic, keyed like the original, through either producer:

* a :class:`~services.kernel.kafka.TransactionalProducer` — the dead letter is part of the transaction
  that also carries the consumer offsets, so the bad record is "handled" exactly once;
* a plain :class:`~services.kernel.kafka.Producer` — ``publish`` returns the delivery future; the caller
  must see it resolve (or ``flush()`` and check) before committing the original offset, otherwise a lost
  dead letter would silently drop the record.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from services.kernel import metrics
from services.kernel.kafka import DeliveryReport, Producer, TransactionalProducer
from services.kernel.serde import ValueEncoder

#: Longest error message kept: a dead letter explains, it does not archive stack traces or the parsed
#: schemas some library errors embed (a fastavro resolution error quoted both schemas: 2 KB and more). The
#: original bytes are in the letter, so the full story can always be re-derived by replaying it.
MAX_MESSAGE_CHARS = 500

# Machine-readable reasons shared by the services (free-form codes are allowed too).
UNDECODABLE = "undecodable"
INVALID_EVENT = "invalid_event"
LATE_EVENT = "late_event"
UNKNOWN_CUSTOMER = "unknown_customer"
PROCESSING_FAILED = "processing_failed"


class ConsumedRecord(Protocol):
    """What the builder reads from a consumed record (confluent's ``Message`` has all of it)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


def _as_bytes(data: Any) -> bytes | None:
    if data is None:
        return None
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    return bytes(data)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter, field for field as in ``schemas/dead_letter.avsc``."""

    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp: int | None
    original_key: bytes | None
    original_value: bytes | None
    error_code: str
    error_message: str
    service: str
    failed_at: int
    event_id: str | None = None
    customer_id: str | None = None
    error_path: str | None = None

    @classmethod
    def from_record(
        cls,
        record: ConsumedRecord,
        error_code: str,
        error_message: str,
        service: str,
        event_id: str | None = None,
        customer_id: str | None = None,
        failed_at_ms: int | None = None,
        error_path: str | None = None,
    ) -> DeadLetter:
        """Same as :func:`dead_letter`."""
        return dead_letter(
            record,
            error_code,
            error_message,
            service,
            event_id=event_id,
            customer_id=customer_id,
            failed_at_ms=failed_at_ms,
            error_path=error_path,
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "original_timestamp": self.original_timestamp,
            "original_key": self.original_key,
            "original_value": self.original_value,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "service": self.service,
            "failed_at": self.failed_at,
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "error_path": self.error_path,
        }


def dead_letter(
    record: ConsumedRecord,
    error_code: str,
    error_message: str,
    service: str,
    *,
    event_id: str | None = None,
    customer_id: str | None = None,
    failed_at_ms: int | None = None,
    error_path: str | None = None,
) -> DeadLetter:
    """The dead letter for ``record``: its bytes untouched (so it can be replayed), where it came from,
    and why it failed."""
    ts_type, ts = record.timestamp()
    # TIMESTAMP_NOT_AVAILABLE is 0; a negative timestamp also means "none".
    original_ts = ts if ts_type != 0 and ts >= 0 else None
    message = error_message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    return DeadLetter(
        original_topic=record.topic() or "",
        original_partition=record.partition() if record.partition() is not None else -1,  # type: ignore[arg-type]
        original_offset=record.offset() if record.offset() is not None else -1,  # type: ignore[arg-type]
        original_timestamp=original_ts,
        original_key=_as_bytes(record.key()),
        original_value=_as_bytes(record.value()),
        error_code=error_code,
        error_message=message,
        service=service,
        failed_at=failed_at_ms if failed_at_ms is not None else int(time.time() * 1000),
        event_id=event_id,
        customer_id=customer_id,
        error_path=error_path,
    )


class DeadLetterPublisher:
    """Encodes dead letters with ``encoder`` (subject ``<dlq topic>-value``) and produces them to ``topic``
    with the original key, counting them in ``plg_dead_letters_total{service,topic,code}``."""

    def __init__(
        self,
        producer: Producer | TransactionalProducer,
        encoder: ValueEncoder,
        topic: str,
        service: str,
    ) -> None:
        self.producer = producer
        self.encoder = encoder
        self.topic = topic
        self.service = service

    def publish(
        self,
        record: ConsumedRecord,
        error_code: str,
        error_message: str,
        event_id: str | None = None,
        customer_id: str | None = None,
        error_path: str | None = None,
    ) -> Future[DeliveryReport] | None:
        """Dead-letter ``record``. Returns the delivery future with a plain producer; ``None`` inside a
        transaction (the transaction's commit is the acknowledgement)."""
        letter = dead_letter(
            record,
            error_code,
            error_message,
            self.service,
            event_id=event_id,
            customer_id=customer_id,
            error_path=error_path,
        )
        value = self.encoder.encode(letter.to_avro())
        headers = [("plg-error-code", error_code.encode()), ("plg-service", self.service.encode())]
        future: Future[DeliveryReport] | None = None
        if isinstance(self.producer, TransactionalProducer):
            self.producer.produce(self.topic, value, letter.original_key, headers)
        else:
            future = self.producer.send(self.topic, value, letter.original_key, headers)
        metrics.DEAD_LETTERS.labels(self.service, letter.original_topic, error_code).inc()
        return future
