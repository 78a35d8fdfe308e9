"""A transactional call that blocks past its timeout (librdkafka #5456) wedges the producer: it is given up,
and the producer refuses further use instead of hanging the caller for good. No broker needed: the
producer connects lazily, and the guard is exercised with a call that blocks."""

from __future__ import annotations

import threading
import time

import pytest

from services.kernel import kafka
from services.kernel.errors import KafkaFatalError
from services.kernel.kafka import TransactionalProducer
from services.kernel.settings import KafkaSettings


def test_a_call_blocked_past_its_timeout_is_given_up_and_the_producer_is_fatal(monkeypatch):
    monkeypatch.setattr(kafka, "WEDGED_GRACE", 0.2)
    producer = TransactionalProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "guard-test")
    release = threading.Event()
    try:
        started = time.monotonic()
        with pytest.raises(KafkaFatalError) as raised:
            producer._call_guarded("send_offsets_to_transaction", lambda: release.wait(30) and None, 0.1)
        assert time.monotonic() - started < 5  # not the 30 s the call would have blocked
        assert raised.value.code_name == "_WEDGED"
        with pytest.raises(KafkaFatalError):
            producer.begin(1)  # unusable from now on: replace it
    finally:
        release.set()
        producer.close(timeout=1)


def test_a_call_that_returns_in_time_passes_its_outcome_through(monkeypatch):
    monkeypatch.setattr(kafka, "WEDGED_GRACE", 5.0)
    producer = TransactionalProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "guard-test-2")
    try:
        producer._call_guarded("x", lambda: None, 0.1)

        def fails() -> None:
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            producer._call_guarded("x", fails, 0.1)
    finally:
        producer.close(timeout=1)
