"""``plg dlq list|show|replay``: read the dead-letter topic and re-produce records to their source topic.

Dead letters (``schemas/dead_letter.avsc``, written by :mod:`services.kernel.dlq`) carry the original
record's bytes untouched, so a replay re-produces exactly what the app sent — same key, same value, hence
the same ``event_id`` — to the topic it came from, with its original timestamp and a ``plg-replay-of``
header naming the dead letter. Replays are recorded in PostgreSQL (``dlq_replays``, migration 0031) only
after the broker acknowledged them: replaying again skips what was replayed (``--force`` does not), and
whatever a crash in between re-produces is deduplicated by the metering aggregator on ``event_id``.

The original bytes are encrypted in the letter (``PLG_DLQ_KEY``): ``replay`` decrypts them with the same
key; ``show`` masks them unless an admin asks (``--reveal`` with an admin ``PLG_OPERATOR_TOKEN``).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from services.kernel.dlq import DlqCipher, DlqKeyError
from services.kernel.kafka import Producer
from services.kernel.reading import read_to_end
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from services.kernel.topics import USAGE_EVENTS_DLQ, topic

REPLAY_HEADER = "plg-replay-of"
_RELATIVE = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class DlqError(Exception):
    """A problem the user can fix (bad --since, unknown offset)."""


def parse_since(text: str, now: float | None = None) -> int:
    """``--since``: a duration back from now (``90s``, ``15m``, ``2h``, ``7d``) or an ISO 8601 time (UTC
    unless it says otherwise); epoch milliseconds."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(text.strip())
    if m:
        return int((now - int(m.group(1)) * _UNITS[m.group(2)]) * 1000)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DlqError(f"--since {text!r}: give a duration (90s, 15m, 2h, 7d) or an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class Letter:
    """One dead letter and where it is on the dead-letter topic."""

    partition: int
    offset: int
    value: dict[str, Any]

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return str(self.value["error_code"])

    def summary(self) -> dict[str, Any]:
        v = self.value
        return {
            "position": self.position,
            "failed_at": datetime.fromtimestamp(v["failed_at"] / 1000, UTC),
            "service": v["service"],
            "reason": v["error_code"],
            "path": v.get("error_path"),
            "event_id": v.get("event_id"),
            "customer_id": v.get("customer_id"),
            "source": f"{v['original_topic']}[{v['original_partition']}]@{v['original_offset']}",
            "message": v["error_message"],
        }


class DeadLetters:
    """The dead-letter topic of a deployment (``PLG_TOPIC_PREFIX`` applied), read to its current end."""

    def __init__(self, kafka: KafkaSettings, registry: SchemaRegistrySettings, prefix: str = "") -> None:
        self.kafka = kafka
        self.registry = registry
        self.topic = topic(USAGE_EVENTS_DLQ, prefix).name

    def read(
        self, reason: str | None = None, since_ms: int | None = None, timeout: float = 60.0
    ) -> list[Letter]:
        with SchemaRegistry(self.registry) as sr:
            decode = sr.decoder().decode
            letters = []
            for record in _read_to_end(self.kafka, self.topic, timeout):
                raw = record.value()
                if raw is None:
                    continue
                value = decode(raw)
                if reason is not None and value["error_code"] != reason:
                    continue
                if since_ms is not None and value["failed_at"] < since_ms:
                    continue
                letters.append(Letter(record.partition(), record.offset(), value))
        letters.sort(key=lambda letter: (letter.value["failed_at"], letter.partition, letter.offset))
        return letters

    def find(self, position: str) -> Letter:
        """``<partition>:<offset>``, or a bare offset when only one partition has it."""
        part, _, off = position.rpartition(":")
        try:
            offset = int(off)
            partition = int(part) if part else None
        except ValueError:
            raise DlqError(f"{position!r}: give <offset> or <partition>:<offset>") from None
        found = [
            letter
            for letter in self.read()
            if letter.offset == offset and (partition is None or letter.partition == partition)
        ]
        if not found:
            raise DlqError(f"no dead letter at {position} on {self.topic}")
        if len(found) > 1:
            listed = ", ".join(letter.position for letter in found)
            raise DlqError(f"offset {offset} is on several partitions ({listed}): give <partition>:<offset>")
        return found[0]


def _read_to_end(kafka: KafkaSettings, name: str, timeout: float) -> Iterable[Any]:
    try:
        yield from read_to_end(kafka, name, timeout, "plg-cli-dlq")
    except TimeoutError as exc:
        raise DlqError(str(exc)) from None


@dataclass
class ReplayReport:
    replayed: Counter[str] = field(default_factory=Counter)
    already_replayed: Counter[str] = field(default_factory=Counter)
    not_replayable: Counter[str] = field(default_factory=Counter)
    targets: Counter[str] = field(default_factory=Counter)
    positions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "replayed": sum(self.replayed.values()),
            "already_replayed": sum(self.already_replayed.values()),
            "not_replayable": sum(self.not_replayable.values()),
            "by_reason": {
                "replayed": dict(self.replayed),
                "already_replayed": dict(self.already_replayed),
                "not_replayable": dict(self.not_replayable),
            },
            "to_topics": dict(self.targets),
            "dead_letters_replayed": self.positions,
        }


def shown(letter: Letter, cipher: DlqCipher | None, decode: Any = None) -> dict[str, Any]:
    """``plg dlq show``'s document. Without ``cipher`` the original key and value (which may hold personal
    data) are masked to their size; with it (``--reveal``, an admin) they are decrypted, as hex, and the
    value decoded too when it is Avro of a registered schema."""
    doc = {**letter.summary(), "value": dict(letter.value)}
    doc["failed_at"] = doc["failed_at"].isoformat()
    value = doc["value"]
    if cipher is None:
        for name in ("original_key", "original_value"):
            raw = value.get(name)
            value[name] = None if raw is None else f"<masked: {len(raw)} bytes; --reveal shows them>"
        return doc
    try:
        clear = cipher.reveal(value)
    except DlqKeyError as exc:
        raise DlqError(str(exc)) from None
    for name in ("original_key", "original_value"):
        raw = clear.get(name)
        value[name] = None if raw is None else raw.hex()
    value["encryption"] = clear.get("encryption")
    if decode is not None and clear.get("original_value") is not None:
        try:
            doc["original"] = decode(clear["original_value"])
        except Exception:  # not Avro of a known schema (that may be why it was dead-lettered)
            doc["original"] = None
    return doc


def replay(
    letters: list[Letter],
    dlq_topic: str,
    kafka: KafkaSettings,
    conn: psycopg.Connection[Any],
    *,
    force: bool = False,
    cipher: DlqCipher | None = None,
) -> ReplayReport:
    """Re-produce ``letters`` to their source topics; skips those replayed before unless ``force``. The
    original bytes are decrypted with ``cipher`` (``PLG_DLQ_KEY`` by default) first."""
    cipher = cipher if cipher is not None else DlqCipher.from_env()
    try:
        letters = [Letter(x.partition, x.offset, cipher.reveal(x.value)) for x in letters]
    except DlqKeyError as exc:
        raise DlqError(str(exc)) from None
    report = ReplayReport()
    done: set[tuple[int, int]] = set()
    if not force and letters:
        rows = conn.execute(
            "SELECT dlq_partition, dlq_offset FROM dlq_replays WHERE dlq_topic = %s", (dlq_topic,)
        ).fetchall()
        done = {(p, o) for p, o in rows}
    todo: list[Letter] = []
    for letter in letters:
        if (letter.partition, letter.offset) in done:
            report.already_replayed[letter.reason] += 1
        elif letter.value.get("original_value") is None or not letter.value.get("original_topic"):
            report.not_replayable[letter.reason] += 1
        else:
            todo.append(letter)
    if not todo:
        return report
    producer = Producer(kafka, client_id="plg-cli-dlq-replay")
    try:
        futures = []
        for letter in todo:
            v = letter.value
            headers = [(REPLAY_HEADER, f"{dlq_topic}/{letter.position}".encode())]
            futures.append(
                producer.send(
                    v["original_topic"],
                    v["original_value"],
                    v.get("original_key"),
                    headers,
                    timestamp=v.get("original_timestamp"),
                )
            )
        for future in futures:
            future.result(timeout=60)  # raises (translated) when the broker refused one: nothing recorded
    finally:
        producer.close()
    with conn.transaction():
        for letter in todo:
            v = letter.value
            conn.execute(
                "INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, event_id, error_code,"
                " target_topic) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (dlq_topic, dlq_partition,"
                " dlq_offset) DO UPDATE SET replayed_at = now()",
                (
                    dlq_topic,
                    letter.partition,
                    letter.offset,
                    v.get("event_id"),
                    letter.reason,
                    v["original_topic"],
                ),
            )
            report.replayed[letter.reason] += 1
            report.targets[v["original_topic"]] += 1
            report.positions.append(letter.position)
    return report
