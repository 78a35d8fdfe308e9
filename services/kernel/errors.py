"""The project's own exceptions, and the one place where Kafka and registry errors are translated into them.

Services catch these, never ``confluent_kafka`` types. The split that matters to a caller:

* :class:`KafkaUnavailableError` — the broker is unreachable, slow or our local queue is full. Retriable:
  wait (on the stop event) and try again; the ingest API answers 503.
* :class:`TransactionAbortableError` — the current transaction must be aborted and the input rewound to
  the last committed offsets; the producer stays usable.
* :class:`KafkaFatalError` — the client is dead (fenced by a newer instance, idempotence broken): close it
  and exit so the orchestrator restarts the process.
* :class:`SerializationError` — this record's bytes cannot be encoded/decoded: dead-letter it.
* :class:`SchemaRegistryUnavailableError` — the registry cannot be reached: retriable, not the record's
  fault.
"""

from __future__ import annotations

from typing import Any

import httpx
from confluent_kafka import KafkaError, KafkaException


class PlgError(Exception):
    """Base of every error plg raises on purpose."""


class ConfigError(PlgError):
    """The configuration is invalid (reported at start-up, before anything is opened)."""


# --------------------------------------------------------------------------------------------- Kafka


class KafkaClientError(PlgError):
    """A Kafka operation failed. Carries librdkafka's error code and flags for logs and decisions."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        code_name: str | None = None,
        retriable: bool = False,
        fatal: bool = False,
        txn_requires_abort: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.code_name = code_name
        self.retriable = retriable
        self.fatal = fatal
        self.txn_requires_abort = txn_requires_abort


class KafkaUnavailableError(KafkaClientError):
    """Broker unreachable, request timed out or the local produce queue is full. Retry later."""


class KafkaFatalError(KafkaClientError):
    """The client can no longer be used (fenced producer, fatal idempotence error). Restart the process."""


class TransactionAbortableError(KafkaClientError):
    """The current transaction failed but can be aborted; abort, rewind the input and redo the batch."""


class TopicNotFoundError(KafkaClientError):
    """The topic (or partition) does not exist. Auto-creation is off: provision it from the catalogue."""


# ----------------------------------------------------------------------------------- serde / registry


class SerializationError(PlgError):
    """A value could not be encoded or decoded (bad magic byte, truncated bytes, data not matching the
    schema, writer schema id unknown to the registry). The record itself is at fault: dead-letter it."""


class SchemaRegistryError(PlgError):
    """The schema registry answered with an error."""

    def __init__(
        self, message: str, *, http_status: int | None = None, error_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code


class SchemaRegistryUnavailableError(SchemaRegistryError):
    """The registry could not be reached or answered 5xx. Retriable; not the record's fault."""


class SchemaNotFoundError(SchemaRegistryError):
    """Subject, version or schema id unknown to the registry (40401, 40402, 40403)."""


class UnknownSchemaIdError(SchemaNotFoundError, SerializationError):
    """A record names a writer schema id the registry does not know: the record is undecodable.

    It is both a :class:`SchemaNotFoundError` and a :class:`SerializationError`, so a consumer loop that
    dead-letters on ``SerializationError`` does the right thing."""


class IncompatibleSchemaError(SchemaRegistryError):
    """The registry refused the schema under the subject's compatibility rule (409)."""


class InvalidSchemaError(SchemaRegistryError):
    """The schema is not valid Avro (42201) or the version is invalid (42202)."""


# ------------------------------------------------------------------------------------- translation

_UNAVAILABLE_CODES: frozenset[int] = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TRANSPORT,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._QUEUE_FULL,
        KafkaError._WAIT_COORD,
        KafkaError._NODE_UPDATE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_COORDINATOR,
        KafkaError.CONCURRENT_TRANSACTIONS,
    }
)

_FATAL_CODES: frozenset[int] = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTION_COORDINATOR_FENCED,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)

_MISSING_TOPIC_CODES: frozenset[int] = frozenset(
    {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}
)

#: Consumer events that are not errors and are dropped without a word: the end-of-partition marker
#: (only emitted when ``enable.partition.eof`` is on, which we leave off) and "no offset to commit"
#: (a commit with nothing consumed since the last one — nothing to do).
IGNORED_CODES: frozenset[int] = frozenset({KafkaError._PARTITION_EOF, KafkaError._NO_OFFSET})

#: Consumer/client events librdkafka recovers from by itself (it reconnects and re-resolves): logged,
#: surfaced through ``last_error`` for readiness, but not raised from ``consume()``, because raising
#: would turn a broker restart into a crash loop of every service.
TRANSIENT_CODES: frozenset[int] = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TRANSPORT,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError._AUTO_OFFSET_RESET,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_COORDINATOR,
    }
)


def _kafka_error_of(exc: BaseException | KafkaError) -> KafkaError | None:
    if isinstance(exc, KafkaError):
        return exc
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def translate_kafka_error(error: KafkaError | BaseException, context: str = "") -> KafkaClientError:
    """Map a librdkafka error (a ``KafkaError``, a ``KafkaException`` or a ``BufferError``) to our types.

    Order matters: the flags librdkafka sets on the error (``fatal``, ``txn_requires_abort``,
    ``retriable``) win over the code, because the same code (e.g. a timeout) means "abort the transaction"
    inside a transaction and "retry" outside one.
    """
    prefix = f"{context}: " if context else ""
    if isinstance(error, BufferError):
        return KafkaUnavailableError(
            f"{prefix}local produce queue is full ({error}); the broker is slow or unreachable",
            code=KafkaError._QUEUE_FULL,
            code_name="_QUEUE_FULL",
            retriable=True,
        )
    kerr = _kafka_error_of(error)
    if kerr is None:
        return KafkaClientError(f"{prefix}{error}")
    code = kerr.code()
    flags: dict[str, Any] = {
        "code": code,
        "code_name": kerr.name(),
        "retriable": kerr.retriable(),
        "fatal": kerr.fatal(),
        "txn_requires_abort": kerr.txn_requires_abort(),
    }
    message = f"{prefix}{kerr.name()}: {kerr.str()}"
    if kerr.fatal() or code in _FATAL_CODES:
        flags["fatal"] = True
        return KafkaFatalError(message, **flags)
    if kerr.txn_requires_abort():
        return TransactionAbortableError(message, **flags)
    if code in _MISSING_TOPIC_CODES:
        return TopicNotFoundError(message, **flags)
    if kerr.retriable() or code in _UNAVAILABLE_CODES:
        flags["retriable"] = True
        return KafkaUnavailableError(message, **flags)
    return KafkaClientError(message, **flags)


def is_ignored(error: KafkaError) -> bool:
    return error.code() in IGNORED_CODES


def is_transient(error: KafkaError) -> bool:
    """True for errors librdkafka recovers from on its own (see :data:`TRANSIENT_CODES`)."""
    return not error.fatal() and error.code() in TRANSIENT_CODES


# Registry error codes (Confluent REST API).
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
INCOMPATIBLE_SCHEMA = 409
INVALID_SCHEMA = 42201
INVALID_VERSION = 42202


def translate_registry_error(exc: BaseException, context: str = "") -> SchemaRegistryError:
    """Map an error of confluent's ``SchemaRegistryClient`` (or of httpx underneath) to our types."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError as ConfluentRegistryError

    prefix = f"{context}: " if context else ""
    if isinstance(exc, ConfluentRegistryError):
        status, code, text = exc.http_status_code, exc.error_code, exc.error_message
        message = f"{prefix}{text} (HTTP {status}, registry code {code})"
        if code in (SUBJECT_NOT_FOUND, VERSION_NOT_FOUND, SCHEMA_NOT_FOUND) or status == 404:
            return SchemaNotFoundError(message, http_status=status, error_code=code)
        if code == INCOMPATIBLE_SCHEMA or status == 409:
            return IncompatibleSchemaError(message, http_status=status, error_code=code)
        if code in (INVALID_SCHEMA, INVALID_VERSION) or status == 422:
            return InvalidSchemaError(message, http_status=status, error_code=code)
        if status is None or status >= 500 or status in (408, 429):
            return SchemaRegistryUnavailableError(message, http_status=status, error_code=code)
        return SchemaRegistryError(message, http_status=status, error_code=code)
    if isinstance(exc, httpx.HTTPError | OSError):
        return SchemaRegistryUnavailableError(
            f"{prefix}schema registry unreachable: {type(exc).__name__}: {exc}"
        )
    return SchemaRegistryError(f"{prefix}{type(exc).__name__}: {exc}")
