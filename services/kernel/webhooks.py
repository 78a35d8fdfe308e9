"""The webhooks plg sends (health alerts, product-qualified leads): their signature, the way Stripe signs its
own, and :class:`WebhookSender`, the signed POST with retries both senders use.

Each request carries ``Plg-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.
A receiver recomputes the HMAC over the timestamp and the raw body with the shared secret, compares in
constant time, and refuses a timestamp older than its tolerance (5 minutes) — a captured request replayed
later fails, and so does one whose body was changed. :func:`verify` is that check (receivers in Python can
import it; docs/health-score.md shows it in a few lines of any language).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from services.kernel.logs import mask_url

SIGNATURE_HEADER = "Plg-Signature"
DEFAULT_TOLERANCE_SECONDS = 300
#: Attempts per payload before a sender gives up on the URLs that have not taken it.
MAX_ATTEMPTS = 10
#: The wait before the next attempt doubles from 1 s up to this.
MAX_RETRY_SECONDS = 300.0


class SignatureError(ValueError):
    """The signature is missing, malformed, wrong, or too old."""


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, now: float | None = None) -> str:
    """The ``Plg-Signature`` header value for ``body`` sent now."""
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """The signed timestamp when ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds;
    :class:`SignatureError` otherwise."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"{SIGNATURE_HEADER} has no timestamp t=") from None
    expected = _mac(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, given) for given in fields.get("v1", [])):
        raise SignatureError("no v1 signature matches the body")
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise SignatureError(f"the signature is more than {tolerance:g} s old (or from the future)")
    return timestamp


@dataclass(frozen=True)
class Delivery:
    """What one attempt at a payload came to: the caller stores it with the payload (its outbox row)."""

    #: Every URL that has taken the payload, this attempt's and earlier ones.
    done: list[str]
    #: Every URL has taken it.
    delivered: bool
    #: Seconds until the next attempt; ``None`` once settled (delivered, or this was the last attempt).
    retry_in: float | None

    @property
    def settled(self) -> bool:
        return self.retry_in is None


class WebhookSender:
    """POSTs a payload to each configured URL that has not taken it yet, signed (``Plg-Signature``) when a
    secret is set, with the payload's id as ``Idempotency-Key``; a URL takes it with a 2xx answer.
    Payloads are retried from the caller's outbox after ``retry_in`` (1 s doubling to 5 min), at most
    ``max_attempts`` times. URLs are logged by host only: their path and query are often the credential
    (Slack, Zapier)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        what: str,
        key_field: str,
        log: logging.Logger,
        signing_secret: str | None = None,
        timeout: float = 5.0,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.urls = list(urls)
        self.signing_secret = signing_secret
        self.max_attempts = max_attempts
        self.client = httpx.Client(timeout=timeout)
        # The sending service's logger and words ("alert webhook failed", extra alert_id): its logs as before.
        self._what = what
        self._key_field = key_field
        self._log = log

    def deliver(self, body: bytes, key: str, done: Sequence[str], attempts: int) -> Delivery:
        """One attempt (``attempts`` made before) at every URL not in ``done``."""
        taken = list(done)
        for url in self.urls:
            if url not in taken and self.post(url, body, key):
                taken.append(url)
        delivered = all(u in taken for u in self.urls)
        retry_in: float | None = None
        if not delivered and attempts + 1 < self.max_attempts:
            retry_in = min(MAX_RETRY_SECONDS, 2.0**attempts)
        elif not delivered:
            self._log.error(f"{self._what} webhook gave up", extra={self._key_field: key})
        return Delivery(taken, delivered, retry_in)

    def post(self, url: str, body: bytes, key: str) -> bool:
        """``body`` (the exact bytes signed) to ``url``; whether it took it (2xx)."""
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        if self.signing_secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.signing_secret, body)
        try:
            response = self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self._log.warning(
                f"{self._what} webhook failed", extra={"url": mask_url(url), "error": type(exc).__name__}
            )
            return False
        if response.status_code >= 300:
            self._log.warning(
                f"{self._what} webhook refused", extra={"url": mask_url(url), "status": response.status_code}
            )
            return False
        return True

    def close(self) -> None:
        self.client.close()
