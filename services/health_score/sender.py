"""The alert outbox sender: alerts written with the state that fired them (PostgreSQL) go to
``customer-alerts`` and to every configured webhook, each at least once (``alert_id`` deduplicates)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import orjson

from services.health_score.store import HealthStore
from services.kernel.kafka import Producer
from services.kernel.lifecycle import wait_or_stop
from services.kernel.serde import ValueEncoder
from services.kernel.webhooks import WebhookSender

log = logging.getLogger(__name__)


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
        self.interval = interval
        self.healthy = False
        # Each webhook is signed (Plg-Signature, services/kernel/webhooks.py) when a secret is set; the
        # local stack may leave it unset, production refuses that (HEALTH_WEBHOOK_SIGNING_SECRET).
        self.webhooks = WebhookSender(
            webhooks,
            what="alert",
            key_field="alert_id",
            log=log,
            signing_secret=signing_secret,
            timeout=timeout,
        )

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
            self.webhooks.close()

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
        if not self.webhooks.urls:
            return 0
        due = self.store.due_webhooks()
        for payload, done, attempts in due:
            sent = self.webhooks.deliver(orjson.dumps(payload), payload["alert_id"], done, attempts)
            self.store.webhook_result(payload["alert_id"], sent.done, sent.delivered, sent.retry_in)
        return len(due)
