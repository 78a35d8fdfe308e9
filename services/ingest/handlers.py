"""Request-level decisions that need no I/O: the Kafka circuit breaker and the shape of the answers."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from services.ingest.model import Code, Normalised


class KafkaBreaker:
    """Fail fast while Kafka is down.

    Closed (normal) until a write fails because Kafka is unavailable; then open: requests are answered 503
    at once instead of each waiting the full produce timeout, except one probe request per
    ``probe_interval`` that is let through to find out whether Kafka is back. Any acknowledged write closes
    it again.
    """

    def __init__(self, probe_interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._probe_interval = probe_interval
        self._clock = clock
        self._open = False
        self._next_probe = 0.0

    @property
    def is_open(self) -> bool:
        return self._open

    def allow(self) -> bool:
        if not self._open:
            return True
        now = self._clock()
        if now >= self._next_probe:
            self._next_probe = now + self._probe_interval
            return True
        return False

    def failed(self) -> None:
        if not self._open:
            self._open = True
            self._next_probe = self._clock() + self._probe_interval

    def succeeded(self) -> None:
        self._open = False


def accepted_body(request_id: str, outcome: Normalised) -> dict[str, Any]:
    """The 202 body: counts and one result per input event, in input order."""
    return {
        "request_id": request_id,
        "accepted": len(outcome.records),
        "rejected": len(outcome.rejections),
        "results": outcome.results(),
    }


def rejection_counts(outcome: Normalised) -> Counter[str]:
    return Counter(r.code.value for r in outcome.rejections)


def error_body(code: Code | str, message: str, request_id: str) -> dict[str, str]:
    return {"code": str(code), "message": message, "request_id": request_id}
