"""Start-up and shutdown: signals set a stop event; resources close in reverse order, once.

A service's ``__main__`` looks like::

    stop = threading.Event()
    install_signal_handlers(stop)
    with Lifecycle("metering") as life:
        consumer = life.push(Consumer(...), "consumer")       # closed last
        producer = life.push(TransactionalProducer(...), "producer")
        ops = life.push(OpsServer(...).start(), "ops server")  # closed first
        run_loop(consumer, producer, stop)                      # returns when stop is set

Retry loops wait with ``wait_or_stop(stop, seconds)`` rather than ``time.sleep`` so SIGTERM interrupts
them at once.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Closeable(Protocol):
    def close(self) -> Any: ...


C = TypeVar("C", bound=_Closeable)


def install_signal_handlers(
    stop: threading.Event, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
) -> None:
    """SIGTERM/SIGINT set ``stop`` so loops finish their batch and shut down cleanly. A second signal
    raises ``KeyboardInterrupt`` — the way out when shutdown itself hangs.

    Signals are counted, not inferred from ``stop``: the process may already be stopping for its own
    reasons (``Lifecycle.close()`` sets ``stop``), and the orchestrator's first SIGTERM must then let the
    cleanups finish rather than cut a producer flush in half.

    Must be called from the main thread (Python delivers signals there only).
    """
    received: list[str] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        if len(received) > 1:
            log.warning("second signal while stopping; exiting now", extra={"signal": name})
            raise KeyboardInterrupt
        log.info("stopping", extra={"signal": name})
        stop.set()

    for sig in signals:
        signal.signal(sig, handler)


def wait_or_stop(stop: threading.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first. Returns True when the caller should stop."""
    return stop.wait(max(0.0, seconds))


def backoff_delays(
    initial: float = 0.2, maximum: float = 10.0, factor: float = 2.0, jitter: float = 0.2
) -> Iterator[float]:
    """Exponential back-off delays with ±``jitter`` randomisation: 0.2, 0.4, 0.8 … capped at ``maximum``.

    ``for delay in backoff_delays(): try ...; except Retriable: if wait_or_stop(stop, delay): break``
    """
    delay = initial
    while True:
        yield delay * random.uniform(1 - jitter, 1 + jitter)
        delay = min(maximum, delay * factor)


class Lifecycle:
    """Owns the resources of a process and closes them in reverse order of registration, exactly once.

    A cleanup that raises is logged and the others still run. Also a context manager; ``stop`` is the
    event the process's loops watch.
    """

    def __init__(self, name: str = "service", stop: threading.Event | None = None) -> None:
        self.name = name
        self.stop = stop or threading.Event()
        self._cleanups: list[tuple[str, Callable[[], Any]]] = []
        self._lock = threading.Lock()
        self._closed = False

    def callback(self, cleanup: Callable[[], Any], name: str | None = None) -> None:
        """Register ``cleanup()`` to run at close (after everything registered later)."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is already shut down")
            label = name or str(getattr(cleanup, "__qualname__", repr(cleanup)))
            self._cleanups.append((label, cleanup))

    def push(self, resource: C, name: str | None = None) -> C:
        """Register ``resource.close()`` and return the resource, for one-line wiring."""
        self.callback(resource.close, name or type(resource).__name__)
        return resource

    def enter(self, context: AbstractContextManager[T], name: str | None = None) -> T:
        """Enter a context manager now and exit it at close."""
        value = context.__enter__()
        self.callback(lambda: context.__exit__(None, None, None), name or type(context).__name__)
        return value

    def close(self) -> list[BaseException]:
        """Run the cleanups, newest first; returns the errors they raised (already logged)."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            cleanups, self._cleanups = self._cleanups, []
        self.stop.set()
        errors: list[BaseException] = []
        for name, cleanup in reversed(cleanups):
            try:
                cleanup()
                log.debug("closed", extra={"resource": name})
            except Exception as exc:
                errors.append(exc)
                log.exception("cleanup failed", extra={"resource": name})
        return errors

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Lifecycle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
