"""Reading a whole topic once, as it stands now: for tools (the CLI's dead letters, billing's
reconciliation) that need every committed record up to the end offsets, not a consumer group."""

from __future__ import annotations

import time
from collections.abc import Iterator

from services.kernel.errors import KafkaUnavailableError
from services.kernel.kafka import Consumer, Record, TopicPartition
from services.kernel.settings import KafkaSettings


def read_to_end(kafka: KafkaSettings, name: str, timeout: float, client_id: str) -> Iterator[Record]:
    """Every committed record of topic ``name`` up to its end offsets at the start (read_committed).

    Raises :class:`TimeoutError` when the end is not reached within ``timeout`` seconds; a partition
    briefly without a leader (a fresh topic, a restarted broker) is waited for within the same time.
    """
    reader = Consumer(kafka, None, client_id=client_id, fetch_wait_max_ms=10)
    try:
        tps = reader.assign_all([name])
        deadline = time.monotonic() + timeout
        while True:
            try:
                ends = reader.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
                break
            except KafkaUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        while not reader.caught_up(ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {name} to its end within {timeout:.0f}s")
            yield from reader.consume(10_000, 0.2)
    finally:
        reader.close()
