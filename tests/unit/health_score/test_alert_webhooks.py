"""Alert webhooks: signed with HMAC-SHA256 over the timestamp and the exact body (Plg-Signature, like
Stripe's), verifiable by the receiver, refused when replayed late or altered; URLs never logged whole."""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from services.devstack.config import free_port
from services.health_score.sender import AlertSender
from services.kernel.logs import mask_url, redact
from services.kernel.webhooks import SIGNATURE_HEADER, SignatureError, sign, verify

SECRET = "alert-signing-secret"
ALERT = {"alert_id": "a-1", "customer_id": "acme", "kind": "score_dropped", "score": 41}


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/T0/B0/secret-path?token=q", got
    server.shutdown()
    server.server_close()


def _sender(url: str, secret: str | None) -> AlertSender:
    return AlertSender(None, None, None, "customer-alerts", [url], signing_secret=secret)  # type: ignore[arg-type]


def test_a_webhook_is_signed_and_the_receiver_can_verify_it(receiver) -> None:
    url, got = receiver
    assert _sender(url, SECRET)._post(url, ALERT)

    headers, body = got[0]
    assert orjson.loads(body) == ALERT
    assert verify(SECRET, headers[SIGNATURE_HEADER], body) > 0
    with pytest.raises(SignatureError):
        verify("another-secret", headers[SIGNATURE_HEADER], body)
    with pytest.raises(SignatureError):
        verify(SECRET, headers[SIGNATURE_HEADER], body.replace(b"41", b"99"))  # altered body


def test_a_replayed_signature_is_refused_after_the_tolerance() -> None:
    body = orjson.dumps(ALERT)
    header = sign(SECRET, body, now=1_000_000)
    assert verify(SECRET, header, body, now=1_000_000 + 299) == 1_000_000
    with pytest.raises(SignatureError, match="old"):
        verify(SECRET, header, body, now=1_000_000 + 301)
    with pytest.raises(SignatureError):
        verify(SECRET, None, body)


def test_without_a_secret_nothing_claims_a_signature(receiver) -> None:
    url, got = receiver
    assert _sender(url, None)._post(url, ALERT)
    assert SIGNATURE_HEADER not in got[0][0]


def test_webhook_urls_are_logged_without_path_or_query(caplog) -> None:
    url = f"http://127.0.0.1:{free_port()}/services/T0/B0/xyzsecret?token=abc"
    with caplog.at_level(logging.WARNING, logger="services.health_score.sender"):
        assert not _sender(url, SECRET)._post(url, ALERT)
    logged = [getattr(r, "url", "") for r in caplog.records]
    assert logged
    assert all("xyzsecret" not in u and "abc" not in u for u in logged)
    assert mask_url(url).endswith("/***")
    # settings and config summaries: any field named like a webhook
    assert redact("webhook_urls", [url]) == [mask_url(url)]
    assert mask_url("https://hooks.example.com") == "https://hooks.example.com"
