"""Workers: every thread started gets a readiness check in the mapping /readyz reads; a dead one fails it."""

from __future__ import annotations

import threading
import time

from services.kernel.ops import failing_checks
from services.kernel.workers import Workers


def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_each_started_worker_has_a_readiness_check_that_fails_when_it_dies() -> None:
    readiness = {"other": lambda: True}
    workers = Workers(readiness)
    restored = threading.Event()
    crash = threading.Event()

    def loop(stop: threading.Event) -> None:
        stop.wait()

    def sender(stop: threading.Event) -> None:
        crash.wait()
        raise RuntimeError("stripe said no")

    workers.start("ledger-writer", loop, ready=restored.is_set)
    workers.start("outbox-sender", sender)

    assert set(readiness) == {"other", "ledger_writer", "outbox_sender"}
    assert failing_checks(readiness) == ["ledger_writer"]  # alive but still restoring
    restored.set()
    assert failing_checks(readiness) == []
    crash.set()
    _until(lambda: "outbox-sender" in workers.errors)
    assert failing_checks(readiness) == ["outbox_sender"]
    assert isinstance(workers.errors["outbox-sender"], RuntimeError)
    workers.close()
    assert failing_checks(readiness) == ["ledger_writer", "outbox_sender"]
