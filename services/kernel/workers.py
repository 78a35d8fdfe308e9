"""Background threads of an HTTP service (its Kafka loops, senders), started in its lifespan and stopped
by its lifecycle: one stop event, joined in reverse of start, and a dead worker's error kept for /readyz."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Workers:
    """Named background threads and their stop event, closed in reverse of start by the lifecycle."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: dict[str, threading.Thread] = {}
        self.errors: dict[str, BaseException] = {}

    def start(self, name: str, target: Callable[[threading.Event], None]) -> None:
        def run() -> None:
            try:
                target(self.stop)
            except BaseException as exc:  # a dead worker shows in /readyz, with its reason logged
                self.errors[name] = exc
                log.exception("%s stopped", name)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads[name] = thread
        thread.start()

    def alive(self, name: str) -> bool:
        thread = self.threads.get(name)
        return thread is not None and thread.is_alive()

    def close(self) -> None:
        self.stop.set()
        for thread in reversed(list(self.threads.values())):
            thread.join(timeout=30)
