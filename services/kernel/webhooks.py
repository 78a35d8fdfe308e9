"""Signatures of the webhooks plg sends (health alerts), the way Stripe signs its own.

Each request carries ``Plg-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.
A receiver recomputes the HMAC over the timestamp and the raw body with the shared secret, compares in
constant time, and refuses a timestamp older than its tolerance (5 minutes) — a captured request replayed
later fails, and so does one whose body was changed. :func:`verify` is that check (receivers in Python can
import it; docs/health-score.md shows it in a few lines of any language).
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Plg-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


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
