"""What a stream handler sees (:class:`Message`, :class:`Batch`) and what it writes with (:class:`Emit`).

Both loops of the runtime share these, so a handler written for the exactly-once loop reads the same
records and writes the same way under the at-least-once loop; only who acknowledges the writes differs
(the transaction's commit, or each record's delivery report before the offsets are committed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

from services.kernel.dlq import PROCESSING_FAILED, DeadLetterPublisher
from services.kernel.errors import SerializationError
from services.kernel.kafka import Headers, Key, Record
from services.kernel.serde import ValueDecoder, ValueEncoder

__all__ = [
    "PROCESSING_FAILED",
    "Batch",
    "Emit",
    "Message",
    "OutputTopic",
    "RetryBatch",
]

#: The longest exception text kept in a ``processing_failed`` dead letter: it says why, not the whole story
#: (the log has the traceback).
MAX_FAILURE_CHARS = 300


class RetryBatch(RuntimeError):
    """Raised by a handler when the batch cannot be processed *now* through no fault of its records
    (a database down, state not restored yet): the runtime ends the batch without effect, rewinds to the
    committed offsets and tries again after a backoff. Any other exception counts as the record's fault."""


class Message:
    """One consumed record and its decoded value.

    ``value`` is the dict the input topic's reader schema decodes to (``None`` for a tombstone, when the
    loop lets tombstones through); ``record`` is the kernel :data:`~services.kernel.kafka.Record` itself
    (raw bytes, headers, timestamp) for handlers that forward or dead-letter it untouched. Built once per
    record on the hot path, so it holds just those two and reads everything else from the C object when
    asked (measured: 0.12 µs to build, against 0.35 µs when topic, partition and offset were copied).
    """

    __slots__ = ("record", "value")

    def __init__(self, record: Record, value: dict[str, Any] | None) -> None:
        self.record = record
        self.value = value

    @property
    def topic(self) -> str:
        return self.record.topic()  # type: ignore[return-value]

    @property
    def partition(self) -> int:
        return self.record.partition()  # type: ignore[return-value]

    @property
    def offset(self) -> int:
        return self.record.offset()  # type: ignore[return-value]

    @property
    def key(self) -> bytes | None:
        return self.record.key()

    @property
    def raw(self) -> bytes | None:
        """The value's bytes as consumed (Confluent wire format)."""
        return self.record.value()

    @property
    def timestamp_ms(self) -> int:
        """The record's Kafka timestamp (CreateTime or LogAppendTime), ``-1`` when it has none."""
        kind, ts = self.record.timestamp()
        return ts if kind != 0 else -1

    @property
    def headers(self) -> list[tuple[str, bytes | None]]:
        return list(self.record.headers() or [])  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Message({self.topic}[{self.partition}]@{self.offset})"


class Batch(Sequence[Message]):
    """The messages of one poll, in partition order. Iterating it tells the runtime which message the
    handler is on, so that when the handler raises, that message — and only it — is dead-lettered
    (``processing_failed``) and the batch is redone without it. Handlers that look at messages out of
    order still work: a failure the runtime cannot pin on one message makes it redo those records one
    per transaction."""

    __slots__ = ("_messages", "current", "finished", "next_offsets")

    def __init__(
        self, messages: list[Message], next_offsets: dict[tuple[str, int], int] | None = None
    ) -> None:
        self._messages = messages
        self.current: int | None = None
        self.finished = False
        #: (topic, partition) → the offset after the last record consumed in this batch — every record,
        #: also those dead-lettered — for sinks that keep their offsets in their own store.
        self.next_offsets: dict[tuple[str, int], int] = next_offsets or {}

    def __iter__(self) -> Iterator[Message]:
        for i, message in enumerate(self._messages):
            self.current = i
            yield message
        self.finished = True

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def messages(self) -> list[Message]:
        """The messages as a plain list, for a quick pre-pass that cannot fail on one record (collecting
        keys, partitions): iterating it is not tracked, so a failure there blames no record."""
        return self._messages

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Message]: ...
    def __getitem__(self, index: int | slice) -> Message | Sequence[Message]:
        return self._messages[index]

    def culprit(self) -> Message | None:
        """The message the handler was iterating over, if an exception came out in mid-iteration."""
        if self.current is None or self.finished:
            return None
        return self._messages[self.current]


@dataclass(frozen=True)
class OutputTopic:
    """Where a logical topic name (``"usage-aggregates"``) goes: its physical, prefixed name and the
    encoder of its value schema (``None`` for a schemaless topic such as a JSON changelog)."""

    name: str
    encoder: ValueEncoder | None


#: ``produce(topic, value, key, headers, partition, timestamp)``: the one call an :class:`Emit` makes.
ProduceFn = Callable[[str, bytes | None, Key, Headers | None, int | None, int | None], None]


class Emit:
    """The handler's only way to write: records to declared output topics and dead letters.

    Under the exactly-once loop everything goes into the batch's transaction; under the at-least-once loop
    each write is acknowledged by the broker before the batch's offsets are committed. Topics are named by
    their catalogue name (the runtime applies the deployment's topic prefix).
    """

    __slots__ = ("_dead_letters", "_outputs", "_produce", "counts", "dead_lettered", "now_ms")

    def __init__(
        self,
        produce: ProduceFn,
        outputs: Mapping[str, OutputTopic],
        dead_letters: DeadLetterPublisher | None,
        now_ms: int,
    ) -> None:
        self._produce = produce
        self._outputs = outputs
        self._dead_letters = dead_letters
        #: The batch's wall-clock time in epoch ms (one reading per batch, so a batch is judged as a whole).
        self.now_ms = now_ms
        #: Records written per output topic (catalogue name) in this batch.
        self.counts: dict[str, int] = {}
        #: Dead letters written in this batch, by reason.
        self.dead_lettered: dict[str, int] = {}

    def topic_name(self, topic: str) -> str:
        """The physical name of a declared output (e.g. with the test's prefix)."""
        return self._output(topic).name

    def encoder(self, topic: str) -> ValueEncoder:
        """The encoder of an output's value schema, for hot loops that encode and ``send_raw`` (one
        lookup per batch instead of one per record)."""
        encoder = self._output(topic).encoder
        if encoder is None:
            raise TypeError(f"topic {topic!r} has no value schema")
        return encoder

    def _output(self, topic: str) -> OutputTopic:
        try:
            return self._outputs[topic]
        except KeyError:
            raise KeyError(
                f"topic {topic!r} is not an output of this loop (declared: {sorted(self._outputs)})"
            ) from None

    def send(
        self,
        topic: str,
        value: Mapping[str, Any] | None,
        key: Key = None,
        *,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Encode ``value`` with the topic's schema and write it (``None`` writes a tombstone)."""
        out = self._output(topic)
        if value is None:
            data = None
        elif out.encoder is None:
            raise TypeError(f"topic {topic!r} has no value schema: write bytes with send_raw()")
        else:
            data = out.encoder.encode(value)
        self._produce(out.name, data, key, headers, partition, timestamp_ms)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def send_raw(
        self,
        topic: str,
        value: bytes | None,
        key: Key = None,
        *,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Write bytes as they are (already encoded, a JSON changelog value, or a forwarded record)."""
        self._produce(self._output(topic).name, value, key, headers, partition, timestamp_ms)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def dead_letter(
        self,
        message: Message | Record,
        reason: str,
        detail: str,
        *,
        event_id: str | None = None,
        customer_id: str | None = None,
        path: str | None = None,
    ) -> None:
        """Move a record to the dead-letter topic with a short machine-readable ``reason``, a human
        ``detail`` and, when one place of the record is to blame, its ``path`` (``properties.plan``), its
        bytes untouched so that it can be replayed."""
        if self._dead_letters is None:
            raise RuntimeError("this loop has no dead-letter topic")
        record = message.record if isinstance(message, Message) else message
        self._dead_letters.publish(
            record, reason, detail, event_id=event_id, customer_id=customer_id, error_path=path
        )
        self.dead_lettered[reason] = self.dead_lettered.get(reason, 0) + 1


def failure_detail(exc: BaseException) -> str:
    """``processing_failed``'s detail: the exception's type and first words, never its whole text."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_FAILURE_CHARS else text[: MAX_FAILURE_CHARS - 1] + "…"


def next_offsets(records: list[Record]) -> dict[tuple[str, int], int]:
    """(topic, partition) → the offset after the last of ``records`` there."""
    ends: dict[tuple[str, int], int] = {}
    for record in records:
        ends[(record.topic(), record.partition())] = record.offset() + 1  # type: ignore[index,operator]
    return ends


def decode_batch(
    records: list[Record],
    decoders: Mapping[str, ValueDecoder],
    *,
    tombstones: bool,
) -> tuple[list[Message], list[tuple[Record, str]]]:
    """Decode each record with its topic's decoder: the messages, and the records that could not be."""
    messages: list[Message] = []
    undecodable: list[tuple[Record, str]] = []
    single = next(iter(decoders.values())).decode if len(decoders) == 1 else None
    for record in records:
        value = record.value()
        try:
            if value is None:
                if not tombstones:
                    raise SerializationError("the record has no value (a tombstone)")
                messages.append(Message(record, None))
                continue
            decode = single or decoders[record.topic()].decode  # type: ignore[index]
            messages.append(Message(record, decode(value)))
        except SerializationError as exc:
            undecodable.append((record, str(exc)))
    return messages, undecodable
