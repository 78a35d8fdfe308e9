"""The stream runtime's pure parts: which message gets the blame, what Emit writes, how records decode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.kernel.dlq import UNDECODABLE
from services.kernel.kafka import TopicPartition
from services.kernel.processing import Batch, Emit, Message, OutputTopic
from services.kernel.processing.loop import PoisonGuard
from services.kernel.processing.messages import MAX_FAILURE_CHARS, decode_batch, failure_detail, next_offsets
from services.kernel.serde import ValueDecoder, ValueEncoder, header

SCHEMA = {
    "type": "record",
    "name": "T",
    "namespace": "io.plg.test.v1",
    "fields": [{"name": "n", "type": "int"}],
}


class FakeRecord:
    """The slice of confluent's Message the runtime reads."""

    def __init__(
        self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None = b"k"
    ):
        self._t, self._p, self._o, self._v, self._k = topic, partition, offset, value, key

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> None:
        return None


def message(offset: int, partition: int = 0, topic: str = "in") -> Message:
    return Message(FakeRecord(topic, partition, offset, b"x"), {"n": offset})  # type: ignore[arg-type]


def test_the_message_being_iterated_when_the_handler_raised_is_the_culprit() -> None:
    batch = Batch([message(i) for i in range(5)])

    def handler() -> None:
        for m in batch:
            if m.offset == 3:
                raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        handler()
    assert batch.culprit() is not None
    assert batch.culprit().offset == 3  # type: ignore[union-attr]


def test_a_failure_after_the_iteration_blames_nobody_and_switches_to_one_record_per_batch() -> None:
    batch = Batch([message(i) for i in range(3)])
    list(batch)  # the handler looked at everything, then failed
    assert batch.culprit() is None
    guard = PoisonGuard("svc")
    guard.blame(batch, RuntimeError("late"))
    assert guard.poison == {}
    assert guard.batch_size(500) == 1
    # Past the records it was for, single-record mode ends.
    guard.settled([], [TopicPartition("in", 0, 2)])
    assert guard.batch_size(500) == 1
    guard.settled([], [TopicPartition("in", 0, 3)])
    assert guard.batch_size(500) == 500


def test_a_single_record_batch_blames_its_record_even_after_iteration() -> None:
    batch = Batch([message(7)])
    list(batch)
    guard = PoisonGuard("svc")
    guard.blame(batch, KeyError("plan"))
    assert guard.poison == {("in", 0, 7): "KeyError: 'plan'"}


def test_poisoned_records_are_split_out_then_forgotten_once_dead_lettered() -> None:
    guard = PoisonGuard("svc")
    batch = Batch([message(i) for i in range(4)])
    for m in batch:
        if m.offset == 2:
            break
    guard.blame(batch, ValueError("bad"))
    keep, failed = guard.split([message(i) for i in range(4)])
    assert [m.offset for m in keep] == [0, 1, 3]
    assert [m.offset for m in failed] == [2]
    assert guard.reason(failed[0]) == "ValueError: bad"
    guard.settled(failed, [])
    assert guard.poison == {}
    assert guard.split([message(2)])[1] == []


def test_a_revoked_partition_takes_its_poison_marks_with_it() -> None:
    guard = PoisonGuard("svc")
    guard.poison[("in", 1, 5)] = "x"
    guard.poison[("in", 2, 5)] = "y"
    guard.forget([TopicPartition("in", 1)])
    assert list(guard.poison) == [("in", 2, 5)]


def test_failure_detail_is_short() -> None:
    detail = failure_detail(ValueError("x" * 5000))
    assert len(detail) == MAX_FAILURE_CHARS
    assert detail.startswith("ValueError: xxx")


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.records.append(args)


def test_emit_encodes_with_the_output_schema_and_counts_per_topic() -> None:
    sink = Sink()
    encoder = ValueEncoder(SCHEMA, 42)
    out = Emit(sink, {"t": OutputTopic("pfx-t", encoder), "raw": OutputTopic("pfx-raw", None)}, None, 5)
    out.send("t", {"n": 1}, key="k", partition=2)
    out.send_raw("raw", b"bytes", b"k")
    out.send("raw", None, b"k")  # a tombstone needs no schema
    assert sink.records[0][0] == "pfx-t"
    assert sink.records[0][1][:5] == header(42)
    assert sink.records[0][4] == 2
    assert sink.records[1][:3] == ("pfx-raw", b"bytes", b"k")
    assert sink.records[2][1] is None
    assert out.counts == {"t": 1, "raw": 2}
    assert out.topic_name("t") == "pfx-t"
    assert out.encoder("t") is encoder


def test_emit_refuses_undeclared_topics_and_dicts_for_schemaless_ones() -> None:
    out = Emit(Sink(), {"raw": OutputTopic("raw", None)}, None, 0)
    with pytest.raises(KeyError, match="not an output of this loop"):
        out.send_raw("elsewhere", b"x")
    with pytest.raises(TypeError, match="send_raw"):
        out.send("raw", {"n": 1})
    with pytest.raises(RuntimeError, match="no dead-letter topic"):
        out.dead_letter(message(1), "invalid_event", "why")


def test_decode_batch_separates_undecodable_records_and_tombstones() -> None:
    encoder = ValueEncoder(SCHEMA, 7)
    decoder = ValueDecoder(lambda _id: json.dumps(SCHEMA))
    good = FakeRecord("in", 0, 0, encoder.encode({"n": 5}))
    garbage = FakeRecord("in", 0, 1, b"\x01not avro")
    tombstone = FakeRecord("in", 1, 2, None)
    messages, bad = decode_batch([good, garbage, tombstone], {"in": decoder}, tombstones=False)  # type: ignore[list-item]
    assert [m.value for m in messages] == [{"n": 5}]
    assert [r.offset() for r, _ in bad] == [1, 2]
    assert "magic byte" in bad[0][1]
    messages, bad = decode_batch([tombstone], {"in": decoder}, tombstones=True)  # type: ignore[list-item]
    assert messages[0].value is None
    assert not bad
    assert UNDECODABLE == "undecodable"


def test_next_offsets_are_one_past_the_last_record_per_partition() -> None:
    records = [FakeRecord("in", 0, 4, b""), FakeRecord("in", 0, 9, b""), FakeRecord("in", 3, 1, b"")]
    assert next_offsets(records) == {("in", 0): 10, ("in", 3): 2}  # type: ignore[arg-type]


def test_the_kernel_docs_show_the_example_service_verbatim() -> None:
    root = Path(__file__).resolve().parents[3]
    docs = (root / "docs" / "kernel.md").read_text()
    shown = docs.split("<!-- example:start -->\n```python\n", 1)[1].split("```\n<!-- example:end -->", 1)[0]
    assert shown == (root / "services" / "kernel" / "processing" / "example.py").read_text()
