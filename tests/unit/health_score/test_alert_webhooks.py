"""The alert sender's webhooks: each due alert goes, as its exact JSON, through the kernel's WebhookSender
(tests/unit/kernel/test_webhooks.py) signed with the health score's secret, and what came of it is written
back to the alert's outbox row (the URLs that took it, when to retry)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from services.health_score.sender import AlertSender
from services.kernel.webhooks import SIGNATURE_HEADER, verify

SECRET = "alert-signing-secret"
ALERT = {"alert_id": "a-1", "customer_id": "acme", "kind": "score_dropped", "score": 41}
TAKES, REFUSES = "https://hooks.example.com/T0/secret", "https://down.example.com/hook"


class Outbox:
    """The two calls of HealthStore the webhook round makes: one alert due on its fourth attempt."""

    def __init__(self) -> None:
        self.results: list[tuple[str, list[str], bool, float | None]] = []

    def due_webhooks(self) -> list[tuple[dict[str, Any], list[str], int]]:
        return [(ALERT, [], 3)]

    def webhook_result(self, alert_id: str, done: Sequence[str], all_done: bool, retry: float | None) -> None:
        self.results.append((alert_id, list(done), all_done, retry))


def test_due_alerts_are_posted_signed_and_the_outcome_goes_back_to_the_outbox() -> None:
    posted: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return httpx.Response(204 if str(request.url) == TAKES else 503)

    outbox = Outbox()
    sender = AlertSender(
        outbox,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        "customer-alerts",
        [TAKES, REFUSES],
        signing_secret=SECRET,
    )
    sender.webhooks.close()  # its own client, replaced by one answering from the test
    sender.webhooks.client = httpx.Client(transport=httpx.MockTransport(answer))
    try:
        assert sender.webhooks_once() == 1
    finally:
        sender.webhooks.close()

    assert [str(r.url) for r in posted] == [TAKES, REFUSES]
    for request in posted:
        assert orjson.loads(request.content) == ALERT
        assert request.headers["Idempotency-Key"] == "a-1"
        assert verify(SECRET, request.headers[SIGNATURE_HEADER], request.content) > 0
    assert outbox.results == [("a-1", [TAKES], False, 8.0)]  # the 4th attempt: retried in 2**3 s


def test_without_a_secret_nothing_claims_a_signature() -> None:
    posted: list[httpx.Request] = []
    sender = AlertSender(Outbox(), None, None, "customer-alerts", [TAKES])  # type: ignore[arg-type]
    sender.webhooks.close()  # its own client, replaced by one answering from the test
    sender.webhooks.client = httpx.Client(
        transport=httpx.MockTransport(lambda r: posted.append(r) or httpx.Response(204))
    )
    try:
        sender.webhooks_once()
    finally:
        sender.webhooks.close()
    assert SIGNATURE_HEADER not in posted[0].headers
