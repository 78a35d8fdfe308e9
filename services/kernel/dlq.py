"""Dead letters: a record a service cannot process, kept with its original bytes and the reason.

:func:`dead_letter` builds the ``io.plg.dlq.v1.DeadLetter`` value (``schemas/dead_letter.avsc``) from a
consumed record — pure, no I/O. :class:`DeadLetterPublisher` encodes and produces it to the dead-letter
topic, keyed like the original, through either producer:

* a :class:`~services.kernel.kafka.TransactionalProducer` — the dead letter is part of the transaction
  that also carries the consumer offsets, so the bad record is "handled" exactly once;
* a plain :class:`~services.kernel.kafka.Producer` — ``publish`` returns the delivery future; the caller
  must see it resolve (or ``flush()`` and check) before committing the original offset, otherwise a lost
  dead letter would silently drop the record.

Dead letters keep no clear personal data (docs/privacy.md): the original key and value — an event with its
user ids and properties — are encrypted at write time with ``PLG_DLQ_KEY`` (AES-256-GCM,
:class:`DlqCipher`), so only a holder of the key (``plg dlq replay``, ``plg dlq show --reveal`` for an
admin) reads them, and the error message is scrubbed of what looks like an e-mail address, a phone number,
a card number or an IP address (:func:`scrub_text`).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.kernel import metrics
from services.kernel.kafka import DeliveryReport, Producer, TransactionalProducer
from services.kernel.serde import ValueEncoder
from services.kernel.settings import DEV_DLQ_KEY as DEV_DLQ_KEY  # re-exported: the key's home is settings
from services.kernel.settings import DlqSettings

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


ENCRYPTION = "aes-256-gcm"
_NONCE_BYTES = 12


class DlqKeyError(Exception):
    """A dead letter was encrypted with another key than the one configured, or was tampered with."""


class DlqCipher:
    """AES-256-GCM over a dead letter's original key and value; the key is SHA-256 of ``PLG_DLQ_KEY``."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("PLG_DLQ_KEY must not be empty")
        key = hashlib.sha256(b"plg-dlq-v1:" + secret.encode()).digest()
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"plg-dlq-key-id:" + key).hexdigest()[:12]
        self.label = f"{ENCRYPTION}/{self.key_id}"

    @classmethod
    def from_env(cls) -> DlqCipher:
        return cls(DlqSettings().key.get_secret_value())

    def seal(self, data: bytes | None, field: str) -> bytes | None:
        if data is None:
            return None
        nonce = os.urandom(_NONCE_BYTES)
        # The field name as associated data: a key's ciphertext cannot be passed off as a value's.
        return nonce + self._aead.encrypt(nonce, data, field.encode())

    def open(self, data: bytes | None, field: str) -> bytes | None:
        if data is None:
            return None
        try:
            return self._aead.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], field.encode())
        except InvalidTag:
            raise DlqKeyError(
                f"cannot decrypt the dead letter's {field}: PLG_DLQ_KEY is not the key it was written with"
            ) from None

    def reveal(self, value: dict[str, Any]) -> dict[str, Any]:
        """A decoded dead-letter value with its original key and value in clear (as written before
        encryption existed when ``encryption`` is null). Raises :class:`DlqKeyError` for another key."""
        label = value.get("encryption")
        if not label:
            return value
        if label != self.label:
            raise DlqKeyError(f"the dead letter was encrypted with key {label}; PLG_DLQ_KEY is {self.label}")
        return {
            **value,
            "original_key": self.open(value.get("original_key"), "original_key"),
            "original_value": self.open(value.get("original_value"), "original_value"),
            "encryption": None,
        }


# What looks like personal data in an error message (a library quoting the bad value): e-mail addresses,
# "+"-prefixed or grouped phone numbers, card-length digit runs, IPv4 addresses. Deliberately narrower
# than enrichment's detectors: error messages quote offsets and epoch-millisecond timestamps, which must
# stay readable.
_SCRUB = (
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "<email>"),
    (re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"), "<ip>"),
    (re.compile(r"(?<![\w+])\+\d[\d ().-]{5,20}\d"), "<phone>"),
    (re.compile(r"(?<!\d)(?:\d[ -]?){14,18}\d(?!\d)"), "<number>"),
)


def scrub_text(text: str) -> str:
    """``text`` with what looks like personal data replaced by a placeholder."""
    for pattern, placeholder in _SCRUB:
        if pattern.search(text) is not None:
            text = pattern.sub(placeholder, text)
    return text


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
    encryption: str | None = None

    def sealed(self, cipher: DlqCipher) -> DeadLetter:
        """This letter with its original key and value encrypted."""
        if self.encryption is not None:
            return self
        return replace(
            self,
            original_key=cipher.seal(self.original_key, "original_key"),
            original_value=cipher.seal(self.original_value, "original_value"),
            encryption=cipher.label,
        )

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
            "encryption": self.encryption,
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
    """The dead letter for ``record``: its bytes untouched (so it can be replayed; the publisher encrypts
    them), where it came from, and why it failed (the message scrubbed of what looks like personal data)."""
    ts_type, ts = record.timestamp()
    # TIMESTAMP_NOT_AVAILABLE is 0; a negative timestamp also means "none".
    original_ts = ts if ts_type != 0 and ts >= 0 else None
    message = scrub_text(error_message)
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
    """Encodes dead letters with ``encoder`` (subject ``<dlq topic>-value``), their original bytes
    encrypted with ``cipher`` (``PLG_DLQ_KEY`` by default), and produces them to ``topic`` keyed by the
    original key's tenant, counting them in ``plg_dead_letters_total{service,topic,code}``."""

    def __init__(
        self,
        producer: Producer | TransactionalProducer,
        encoder: ValueEncoder,
        topic: str,
        service: str,
        cipher: DlqCipher | None = None,
    ) -> None:
        self.producer = producer
        self.encoder = encoder
        self.topic = topic
        self.service = service
        self.cipher = cipher if cipher is not None else DlqCipher.from_env()

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
        # Keyed by the tenant (the part of the original key before any "|": plg's keys start with the
        # customer id), so the dead-letter topic's keys name no person either.
        key = None if letter.original_key is None else letter.original_key.split(b"|", 1)[0]
        value = self.encoder.encode(letter.sealed(self.cipher).to_avro())
        headers = [("plg-error-code", error_code.encode()), ("plg-service", self.service.encode())]
        future: Future[DeliveryReport] | None = None
        if isinstance(self.producer, TransactionalProducer):
            self.producer.produce(self.topic, value, key, headers)
        else:
            future = self.producer.send(self.topic, value, key, headers)
        metrics.DEAD_LETTERS.labels(self.service, letter.original_topic, error_code).inc()
        return future
