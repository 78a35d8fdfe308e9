"""API keys: their format, generation, hashing, and the short-lived in-process cache ingest checks them with.

A key reads ``plg_<key-id>_<secret>``: the key id is visible (it is what the CLI lists and revokes and what
ingest records on each event), the secret is 256 random bits. Only ``sha256(secret)`` is stored.

Why SHA-256 and not bcrypt/argon2: those slow hashes protect low-entropy human passwords against guessing.
A 256-bit random secret cannot be guessed, so a fast hash is as safe, and it lets ingest check a key in
microseconds on every cache miss instead of spending ~100 ms of CPU per check.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

KEY_PREFIX = "plg"
_KEY_ID_BYTES = 10  # 80 bits, 16 base32 characters: unique by construction, short enough to read aloud
_SECRET_BYTES = 32  # 256 bits


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    key_id: str
    token: str  # the full key, shown once
    secret_sha256: bytes


def generate() -> GeneratedKey:
    key_id = base64.b32encode(secrets.token_bytes(_KEY_ID_BYTES)).decode().lower().rstrip("=")
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return GeneratedKey(key_id, f"{KEY_PREFIX}_{key_id}_{secret}", hash_secret(secret))


def parse(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None. The secret may itself contain ``_``."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    key_id, secret = parts[1], parts[2]
    if not key_id or not key_id.isalnum() or not key_id.isascii() or len(secret) < 32:
        return None
    return key_id, secret


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored key, as the database has it."""

    key_id: str
    customer_id: str
    secret_sha256: bytes
    revoked: bool


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: the tenant and the key used."""

    customer_id: str
    key_id: str


class AuthError(Exception):
    """401: the key is missing, malformed, unknown or revoked. The message says which (key ids are not
    secret, and telling "revoked" from "unknown" saves the client's operator a support ticket)."""


Lookup = Callable[[str], Awaitable[KeyRecord | None]]


class KeyCache:
    """Checks keys against stored hashes, caching each key's row for ``ttl`` seconds.

    Revocation therefore takes effect within ``ttl`` seconds on every ingest process. Unknown key ids are
    cached for ``negative_ttl`` (shorter) so a client hammering with a bad key costs one query per period,
    while a freshly created key is usable at once (unless it was tried before it existed). Concurrent
    misses for one key share a single lookup.
    """

    def __init__(
        self,
        lookup: Lookup,
        ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, KeyRecord | None]] = {}
        self._inflight: dict[str, asyncio.Future[KeyRecord | None]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if token is None:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        parsed = parse(token)
        if parsed is None:
            raise AuthError("malformed API key: expected plg_<key-id>_<secret>")
        key_id, secret = parsed
        record = await self._get(key_id)
        if record is None:
            raise AuthError(f"unknown API key {key_id}")
        if not hmac.compare_digest(record.secret_sha256, hash_secret(secret)):
            raise AuthError(f"wrong secret for API key {key_id}")
        if record.revoked:
            raise AuthError(f"API key {key_id} has been revoked")
        return Principal(record.customer_id, key_id)

    async def _get(self, key_id: str) -> KeyRecord | None:
        now = self._clock()
        cached = self._entries.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._inflight.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._inflight[key_id] = fut
        try:
            record = await self._lookup(key_id)
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters (if any) re-raise it, nobody else must
            raise
        except BaseException:
            fut.cancel()
            raise
        finally:
            del self._inflight[key_id]
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # bounded memory; the cost is one lookup per live key
        self._entries[key_id] = (
            self._clock() + (self._ttl if record is not None else self._negative_ttl),
            record,
        )
        fut.set_result(record)
        return record
