"""The alert outbox sender: alerts written with the state that fired them (PostgreSQL) go to
``customer-alerts`` and to every configured webhook, each at least once (``alert_id`` deduplicates)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from services.health_score.store import HealthStore
from services.kernel.kafka import Producer
from services.kernel.lifecycle import wait_or_stop
from services.kernel.logs import mask_url
from services.kernel.serde import ValueEncoder
from services.kernel.webhooks import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

MAX_WEBHOOK_ATTEMPTS = 10


class AlertSender:
    def __init__(
        self,
        store: HealthStore,
        producer: Producer,
        encoder: ValueEncoder,
        topic: str,
        webhooks: Sequence[str],
        interval: float = 0.25,
        timeout: float = 5.0,
        signing_secret: str | None = None,
    ) -> None:
        self.store = store
        self.producer = producer
        self.encoder = encoder
        self.topic = topic
        self.webhooks = list(webhooks)
        self.interval = interval
        self.client = httpx.Client(timeout=timeout)
        self.healthy = False
        # Each webhook is signed (Plg-Signature, services/kernel/webhooks.py) when a secret is set; the
        # local stack may leave it unset, production refuses that (HEALTH_WEBHOOK_SIGNING_SECRET).
        self.signing_secret = signing_secret

    def run(self, stop: threading.Event) -> None:
        try:
            while True:
                try:
                    self.publish_once()
                    self.webhooks_once()
                    self.healthy = True
                except Exception:  # database or broker trouble: logged, retried on the next round
                    self.healthy = False
                    log.exception("alert sender round failed; retrying")
                if wait_or_stop(stop, self.interval):
                    return
        finally:
            self.client.close()

    def publish_once(self) -> int:
        # Rows held while publishing: each scorer instance runs a sender over the one outbox, and two
        # senders must not publish the same alert side by side (a crash after the acks and before the mark
        # still republishes it: at least once, alert_id deduplicates).
        def publish(alerts: list[dict[str, Any]]) -> None:
            futures = [
                self.producer.send(self.topic, self.encoder.encode(a), key=a["customer_id"]) for a in alerts
            ]
            for f in futures:
                f.result(timeout=30)

        return self.store.publish_alerts(publish)

    def webhooks_once(self) -> int:
        if not self.webhooks:
            return 0
        due = self.store.due_webhooks()
        for payload, done, attempts in due:
            remaining = [u for u in self.webhooks if u not in done]
            for url in remaining:
                if self._post(url, payload):
                    done.append(url)
            all_done = all(u in done for u in self.webhooks)
            retry: float | None = None
            if not all_done and attempts + 1 < MAX_WEBHOOK_ATTEMPTS:
                retry = min(300.0, 2.0**attempts)
            elif not all_done:
                log.error("alert webhook gave up", extra={"alert_id": payload["alert_id"]})
            self.store.webhook_result(payload["alert_id"], done, all_done, retry)
        return len(due)

    def _post(self, url: str, payload: dict[str, Any]) -> bool:
        body = orjson.dumps(payload)  # the exact bytes signed
        headers = {"Content-Type": "application/json", "Idempotency-Key": payload["alert_id"]}
        if self.signing_secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.signing_secret, body)
        try:
            response = self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            # The URL's path and query are often its credential (Slack, Zapier): only its host is logged.
            log.warning("alert webhook failed", extra={"url": mask_url(url), "error": type(exc).__name__})
            return False
        if response.status_code >= 300:
            log.warning("alert webhook refused", extra={"url": mask_url(url), "status": response.status_code})
            return False
        return True
