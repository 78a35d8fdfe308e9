"""Webhook delivery as Stripe does it: each event POSTed to the endpoint, signed (``Stripe-Signature:
t=<ts>,v1=<HMAC-SHA256 of "<ts>.<body>">``), retried with growing delays while the endpoint answers
anything but 2xx. Events are independent: one being retried does not hold the others back, so they can
arrive out of order, as they do from Stripe."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import threading
import time
from typing import Any

import httpx

log = logging.getLogger(__name__)

# The API version the emulator's events claim (stripe-mock's spec at v0.203.0).
API_VERSION = "2026-08-26.dahlia"
# Delays before the 2nd, 3rd, ... attempt (Stripe's are hours apart; a local stack wants seconds).
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


def signature(body: bytes, secret: str, at: int) -> str:
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


class WebhookSender:
    """Delivers events to ``url`` (none: events are only logged in the emulator) from one thread."""

    def __init__(self, url: str | None, secret: str) -> None:
        self.url = url
        self.secret = secret
        self._queue: list[tuple[float, int, int, dict[str, Any]]] = []  # (due, seq, attempt, event)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.delivered: list[str] = []  # event ids, in delivery order
        self.failed: list[str] = []  # given up after every retry

    def start(self) -> None:
        if self.url and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stripe-emulator-webhooks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def send(self, event: dict[str, Any]) -> None:
        if not self.url:
            return
        self._push(time.monotonic(), 0, event)

    def _push(self, due: float, attempt: int, event: dict[str, Any]) -> None:
        with self._cond:
            heapq.heappush(self._queue, (due, next(self._seq), attempt, event))
            self._cond.notify_all()

    def _run(self) -> None:
        assert self.url is not None
        with httpx.Client(timeout=10.0) as client:
            while True:
                with self._cond:
                    while not self._stopped and (not self._queue or self._queue[0][0] > time.monotonic()):
                        wait = self._queue[0][0] - time.monotonic() if self._queue else None
                        self._cond.wait(wait)
                    if self._stopped:
                        return
                    _, _, attempt, event = heapq.heappop(self._queue)
                body = json.dumps(event).encode()
                headers = {
                    "Content-Type": "application/json",
                    "Stripe-Signature": signature(body, self.secret, int(time.time())),
                }
                try:
                    ok = client.post(self.url, content=body, headers=headers).is_success
                except httpx.HTTPError as exc:
                    log.info("webhook %s not delivered: %s", event["id"], exc)
                    ok = False
                if ok:
                    self.delivered.append(event["id"])
                elif attempt < len(RETRY_DELAYS_S):
                    self._push(time.monotonic() + RETRY_DELAYS_S[attempt], attempt + 1, event)
                else:
                    self.failed.append(event["id"])
                    log.warning(
                        "webhook %s (%s) given up after %d attempts", event["id"], event["type"], attempt + 1
                    )
