"""Dead letters keep no clear personal data (docs/privacy.md): the original bytes are encrypted at write
time, the message is scrubbed, the letter's own key names only the tenant; the key holder reads them back."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from services.cli.dlq import Letter, shown
from services.kernel.dlq import DeadLetterPublisher, DlqCipher, DlqKeyError, scrub_text
from services.kernel.serde import ValueDecoder, ValueEncoder
from services.kernel.topics import SCHEMAS_DIR

DEAD_LETTER = SCHEMAS_DIR / "dead_letter.avsc"
EVENT = b'\x00\x00\x00\x00\x07{"user_id": "bob@example.com", "properties": {"phone": "+33 6 12 34 56 78"}}'


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send(self, *args: Any) -> None:
        self.sent.append(args)


def test_a_published_dead_letter_holds_no_clear_personal_data_and_the_key_holder_reads_it_back() -> None:
    record = Message(  # type: ignore[call-arg]
        topic="identity-links",
        partition=1,
        offset=7,
        key=b"acme|anon-bob@example.com",
        value=EVENT,
        timestamp=(TIMESTAMP_CREATE_TIME, 1_717_000_000_000),
    )
    producer = Producer()
    cipher = DlqCipher("a secret")
    publisher = DeadLetterPublisher(
        producer,  # type: ignore[arg-type]
        ValueEncoder(DEAD_LETTER, 5),
        "usage-events-dlq",
        "enrichment",
        cipher,
    )
    publisher.publish(record, "processing_failed", "KeyError: 'bob@example.com' at 10.1.2.3")
    [(topic, value, key, _headers)] = producer.sent
    assert topic == "usage-events-dlq"
    assert key == b"acme"  # the tenant only: the letter's own key names no person
    for secret in (b"bob@example.com", b"+33 6 12", b"10.1.2.3", b"anon-bob"):
        assert secret not in value
    letter = ValueDecoder({5: DEAD_LETTER.read_text()}.__getitem__).decode(value)
    assert letter["encryption"] == cipher.label
    assert letter["error_message"] == "KeyError: '<email>' at <ip>"
    clear = cipher.reveal(letter)
    assert clear["original_value"] == EVENT
    assert clear["original_key"] == b"acme|anon-bob@example.com"
    with pytest.raises(DlqKeyError):
        DlqCipher("another key").reveal(letter)
    masked = shown(Letter(0, 3, letter), None)
    assert masked["value"]["original_value"].startswith("<masked:")
    assert "bob" not in repr(masked)
    revealed = shown(Letter(0, 3, letter), cipher)
    assert bytes.fromhex(revealed["value"]["original_value"]) == EVENT


def test_scrubbing_keeps_offsets_and_timestamps_readable() -> None:
    text = "event time 1717000000123 at offset 42 older than the grace of 3600000 ms"
    assert scrub_text(text) == text
    assert scrub_text("card 4111 1111 1111 1111, mail a.b@c.io") == "card <number>, mail <email>"
