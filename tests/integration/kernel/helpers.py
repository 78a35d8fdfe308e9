"""Helpers for the kernel's integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from services.kernel.kafka import Consumer, Record


def consume_n(consumer: Consumer, n: int, timeout: float = 30.0) -> list[Record]:
    """Consume until ``n`` records arrived (or fail after ``timeout`` seconds)."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(records) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(records)} of {n} records within {timeout:.0f} s")
        records.extend(consumer.consume(max_records=n - len(records), timeout=0.5))
    return records


def consume_for(consumer: Consumer, seconds: float) -> list[Record]:
    """Everything that arrives within ``seconds``."""
    records: list[Record] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        records.extend(consumer.consume(max_records=500, timeout=0.2))
    return records


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
