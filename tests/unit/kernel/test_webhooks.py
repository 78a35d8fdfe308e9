"""The webhooks plg sends (health alerts, product-qualified leads): signed with HMAC-SHA256 over the
timestamp and the exact body (Plg-Signature, like Stripe's), verifiable by the receiver, refused when
replayed late or altered; the kernel's sender POSTs with the payload's id as Idempotency-Key, only to the
URLs that have not taken a payload yet, retries 1 s doubling to 5 min, gives up after ten attempts, and
logs URLs by host only."""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from services.devstack.config import free_port
from services.kernel.logs import mask_url, redact
from services.kernel.webhooks import SIGNATURE_HEADER, SignatureError, WebhookSender, sign, verify

SECRET = "webhook-signing-secret"
BODY = orjson.dumps({"lead_id": "l-1", "score": 7})
log = logging.getLogger("tests.webhook_sender")


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """An HTTP server taking POSTs to /ok (204) and refusing the others (500)."""
    got: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, dict(self.headers), body))
            self.send_response(204 if self.path.startswith("/ok") else 500)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", got
    server.shutdown()
    server.server_close()


def _sender(urls: list[str], secret: str | None = SECRET) -> WebhookSender:
    return WebhookSender(urls, what="lead", key_field="lead_id", log=log, signing_secret=secret)


def test_a_payload_is_posted_signed_with_its_id_as_idempotency_key(receiver) -> None:
    base, got = receiver
    sender = _sender([f"{base}/ok/1", f"{base}/ok/2"])
    try:
        sent = sender.deliver(BODY, "l-1", [], 0)
    finally:
        sender.close()
    assert sent.done == [f"{base}/ok/1", f"{base}/ok/2"]
    assert sent.delivered
    assert sent.settled
    assert sent.retry_in is None
    assert [path for path, _, _ in got] == ["/ok/1", "/ok/2"]
    for _, headers, body in got:
        assert body == BODY
        assert headers["Content-Type"] == "application/json"
        assert headers["Idempotency-Key"] == "l-1"
        assert verify(SECRET, headers[SIGNATURE_HEADER], body) > 0
    headers, body = got[0][1], got[0][2]
    with pytest.raises(SignatureError):
        verify("another-secret", headers[SIGNATURE_HEADER], body)
    with pytest.raises(SignatureError):
        verify(SECRET, headers[SIGNATURE_HEADER], body.replace(b"7", b"9"))  # altered body


def test_a_replayed_signature_is_refused_after_the_tolerance() -> None:
    header = sign(SECRET, BODY, now=1_000_000)
    assert verify(SECRET, header, BODY, now=1_000_000 + 299) == 1_000_000
    with pytest.raises(SignatureError, match="old"):
        verify(SECRET, header, BODY, now=1_000_000 + 301)
    with pytest.raises(SignatureError):
        verify(SECRET, None, BODY)


def test_without_a_secret_nothing_claims_a_signature(receiver) -> None:
    base, got = receiver
    sender = _sender([f"{base}/ok"], secret=None)
    try:
        assert sender.post(f"{base}/ok", BODY, "l-1")
    finally:
        sender.close()
    assert SIGNATURE_HEADER not in got[0][1]


def test_only_urls_that_have_not_taken_it_are_retried_with_a_doubling_wait(receiver) -> None:
    base, got = receiver
    taken, refusing = f"{base}/ok", f"{base}/refuses"
    sender = _sender([taken, refusing])
    try:
        first = sender.deliver(BODY, "l-1", [], 0)
        assert first.done == [taken]
        assert not first.delivered
        assert not first.settled
        assert first.retry_in == 1.0
        got.clear()
        later = sender.deliver(BODY, "l-1", first.done, 3)
        assert [path for path, _, _ in got] == ["/refuses"]  # the URL that took it is not sent it again
        assert later.done == [taken]
        assert later.retry_in == 8.0
        assert sender.deliver(BODY, "l-1", [taken], 8).retry_in == 256.0
    finally:
        sender.close()


def test_the_tenth_failed_attempt_gives_up_and_says_so(receiver, caplog) -> None:
    base, _ = receiver
    sender = _sender([f"{base}/refuses"])
    try:
        with caplog.at_level(logging.WARNING, logger=log.name):
            last = sender.deliver(BODY, "l-1", [], 9)
    finally:
        sender.close()
    assert not last.delivered
    assert last.settled
    assert last.retry_in is None
    gave_up = [r for r in caplog.records if r.getMessage() == "lead webhook gave up"]
    assert len(gave_up) == 1
    assert gave_up[0].lead_id == "l-1"


def test_urls_are_logged_by_host_only(caplog) -> None:
    url = f"http://127.0.0.1:{free_port()}/services/T0/B0/xyzsecret?token=abc"  # nothing listens
    sender = _sender([url])
    try:
        with caplog.at_level(logging.WARNING, logger=log.name):
            assert not sender.post(url, BODY, "l-1")
    finally:
        sender.close()
    logged = [r for r in caplog.records if r.getMessage() == "lead webhook failed"]
    assert logged
    assert all("xyzsecret" not in r.url and "abc" not in r.url for r in logged)
    assert mask_url(url).endswith("/***")
    # settings and config summaries: any field named like a webhook
    assert redact("webhook_urls", [url]) == [mask_url(url)]
    assert mask_url("https://hooks.example.com") == "https://hooks.example.com"
