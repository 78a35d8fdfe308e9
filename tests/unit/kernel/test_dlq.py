"""Dead letters keep the original bytes, where the record came from and why it failed."""

from __future__ import annotations

from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message

from services.kernel.dlq import MAX_MESSAGE_CHARS, DeadLetter, dead_letter
from services.kernel.serde import ValueDecoder, ValueEncoder
from services.kernel.topics import SCHEMAS_DIR

DEAD_LETTER = SCHEMAS_DIR / "dead_letter.avsc"


def consumed(**kw: object) -> Message:
    fields: dict[str, object] = {
        "topic": "usage-events",
        "partition": 4,
        "offset": 1234,
        "key": b"cus_1",
        "value": b"\x00\x00\x00\x00\x07garbage",
        "timestamp": (TIMESTAMP_CREATE_TIME, 1_717_000_000_000),
    }
    fields.update(kw)
    return Message(**fields)  # type: ignore[arg-type]


def test_dead_letter_carries_the_original_bytes_position_and_reason() -> None:
    letter = dead_letter(
        consumed(),
        "undecodable",
        "bad body",
        "metering",
        failed_at_ms=1_717_000_001_000,
        event_id="e1",
        customer_id="cus_1",
    )

    assert letter.to_avro() == {
        "original_topic": "usage-events",
        "original_partition": 4,
        "original_offset": 1234,
        "original_timestamp": 1_717_000_000_000,
        "original_key": b"cus_1",
        "original_value": b"\x00\x00\x00\x00\x07garbage",
        "error_code": "undecodable",
        "error_message": "bad body",
        "service": "metering",
        "failed_at": 1_717_000_001_000,
        "event_id": "e1",
        "customer_id": "cus_1",
        "error_path": None,
        "encryption": None,
    }


def test_dead_letter_of_a_keyless_tombstone_without_timestamp_has_nulls() -> None:
    letter = dead_letter(
        consumed(key=None, value=None, timestamp=(TIMESTAMP_NOT_AVAILABLE, -1)),
        "invalid_event",
        "empty",
        "ingest",
    )

    assert (letter.original_key, letter.original_value, letter.original_timestamp) == (None, None, None)
    assert letter.failed_at > 1_700_000_000_000


def test_a_huge_error_message_is_cut() -> None:
    letter = dead_letter(consumed(), "processing_failed", "x" * 10_000, "metering")

    assert len(letter.error_message) == MAX_MESSAGE_CHARS + 1


def test_dead_letter_encodes_with_the_dead_letter_schema_and_decodes_back() -> None:
    letter = dead_letter(
        consumed(), "late_event", "window closed", "metering", failed_at_ms=1_717_000_001_000
    )
    encoder = ValueEncoder(DEAD_LETTER, 5)
    decoder = ValueDecoder({5: DEAD_LETTER.read_text()}.__getitem__)

    assert decoder.decode(encoder.encode(letter.to_avro())) == letter.to_avro()


def test_dead_letter_from_record_is_the_same_builder() -> None:
    built = DeadLetter.from_record(consumed(), "late_event", "window closed", "metering", "e1", "cus_1", 5)

    assert built == dead_letter(
        consumed(),
        "late_event",
        "window closed",
        "metering",
        event_id="e1",
        customer_id="cus_1",
        failed_at_ms=5,
    )
