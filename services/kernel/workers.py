"""Background threads of an HTTP service (its Kafka loops, senders), started in its lifespan and stopped
by its lifecycle: one stop event, joined in reverse of start, and a readiness check for each.

Every thread :meth:`Workers.start` starts gets a check in ``readiness`` (the mapping the service gave
``ops_routes``), named after it (``ledger-writer`` → ``ledger_writer``): it fails once the thread has died
— its error is logged and kept in ``errors`` — and, with ``ready=``, while that says not ready (a stream
loop restoring its state). A dead worker thus shows in ``/readyz`` without the service writing a check."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, MutableMapping

from services.kernel.ops import ReadinessCheck

log = logging.getLogger(__name__)


class Workers:
    """Named background threads and their stop event, closed in reverse of start by the lifecycle."""

    def __init__(self, readiness: MutableMapping[str, ReadinessCheck] | None = None) -> None:
        self.stop = threading.Event()
        self.threads: dict[str, threading.Thread] = {}
        self.errors: dict[str, BaseException] = {}
        # Shared with ops_routes, which reads it at every probe: checks added here show up there.
        self.readiness: MutableMapping[str, ReadinessCheck] = readiness if readiness is not None else {}

    def start(
        self, name: str, target: Callable[[threading.Event], None], *, ready: Callable[[], bool] | None = None
    ) -> None:
        def run() -> None:
            try:
                target(self.stop)
            except BaseException as exc:  # a dead worker shows in /readyz, with its reason logged
                self.errors[name] = exc
                log.exception("%s stopped", name)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads[name] = thread
        self.readiness[name.replace("-", "_")] = lambda: self.healthy(name) and (ready is None or ready())
        thread.start()

    def alive(self, name: str) -> bool:
        thread = self.threads.get(name)
        return thread is not None and thread.is_alive()

    def healthy(self, name: str) -> bool:
        """Started, running and not failed (a worker that returned early is not running either)."""
        return name not in self.errors and self.alive(name)

    def close(self) -> None:
        """Stops and joins every worker (up to 30 s each): call it off the event loop."""
        self.stop.set()
        for thread in reversed(list(self.threads.values())):
            thread.join(timeout=30)
