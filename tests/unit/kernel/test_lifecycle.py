"""Shutdown runs cleanups newest first, exactly once, even when one fails; signals set the stop event."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from services.kernel.lifecycle import Lifecycle, backoff_delays, install_signal_handlers, wait_or_stop


class Resource:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    def close(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} failed to close")


def test_resources_close_in_reverse_order_of_registration() -> None:
    closed: list[str] = []
    with Lifecycle("svc") as life:
        life.push(Resource("consumer", closed))
        life.push(Resource("producer", closed))
        life.callback(lambda: closed.append("ops"), "ops")

    assert closed == ["ops", "producer", "consumer"]


def test_close_runs_once() -> None:
    closed: list[str] = []
    life = Lifecycle()
    life.push(Resource("a", closed))

    life.close()
    life.close()

    assert closed == ["a"]


def test_a_failing_cleanup_does_not_stop_the_others() -> None:
    closed: list[str] = []
    life = Lifecycle()
    life.push(Resource("first", closed))
    life.push(Resource("broken", closed, fail=True))
    life.push(Resource("last", closed))

    errors = life.close()

    assert closed == ["last", "broken", "first"]
    assert [str(e) for e in errors] == ["broken failed to close"]


def test_close_sets_the_stop_event_and_refuses_new_resources() -> None:
    life = Lifecycle()
    life.close()

    assert life.stop.is_set()
    with pytest.raises(RuntimeError):
        life.callback(lambda: None)


def test_entered_context_managers_are_exited_at_close() -> None:
    events: list[str] = []

    @contextmanager
    def resource() -> Iterator[str]:
        events.append("enter")
        yield "value"
        events.append("exit")

    with Lifecycle() as life:
        assert life.enter(resource()) == "value"
        assert events == ["enter"]

    assert events == ["enter", "exit"]


def test_wait_or_stop_returns_as_soon_as_stop_is_set() -> None:
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()

    assert wait_or_stop(stop, 600.0) is True
    assert time.monotonic() - started < 300  # not the whole wait: stopped, however loaded the machine


def test_wait_or_stop_returns_false_after_the_delay_when_not_stopped() -> None:
    assert wait_or_stop(threading.Event(), 0.01) is False


def test_backoff_grows_to_the_cap() -> None:
    delays = backoff_delays(initial=1.0, maximum=8.0, factor=2.0, jitter=0.0)

    assert [next(delays) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_sigterm_sets_the_stop_event_and_a_second_signal_interrupts() -> None:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stop = threading.Event()
    try:
        install_signal_handlers(stop)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(2.0)
        with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - the handler raises during the sleep
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_the_first_signal_during_a_shutdown_begun_for_another_reason_lets_the_cleanups_finish() -> None:
    # Lifecycle.close() (or a fatal error path) sets the stop event itself; the orchestrator's SIGTERM
    # that follows is the first signal, not the impatient second one, and must not cut the cleanups short.
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stop = threading.Event()
    try:
        install_signal_handlers(stop)
        stop.set()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here; a KeyboardInterrupt would fail the test
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - the handler raises during the sleep
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
