"""Credentials at rest: customer API keys and operator tokens — their format, generation, hashing, the
``api_keys`` and ``operators`` tables (this module owns both), and the in-process cache every service
checks them with.

A customer key reads ``plg_<key-id>_<secret>`` (secret kind) or ``plgpk_<key-id>_<secret>`` (publishable
kind, safe in a browser); an operator token reads ``plgop_<id>_<secret>``. The id is visible (it is what the
CLI lists and revokes and what ingest records on each event), the secret is 256 random bits. Only
``sha256(secret)`` is stored. The prefix is a hint for people and secret scanners (a ``plg_`` string in a
browser bundle is a leak); the stored kind decides, and a key whose prefix disagrees with it is refused.

Why SHA-256 and not bcrypt/argon2: those slow hashes protect low-entropy human passwords against guessing.
A 256-bit random secret cannot be guessed, so a fast hash is as safe, and it lets a service check a key in
microseconds on every cache miss instead of spending ~100 ms of CPU per check.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

import psycopg
from psycopg.rows import dict_row

from services.kernel import metrics
from services.kernel.caches import BoundedCache

log = logging.getLogger(__name__)

CACHED = metrics.gauge(
    "plg_auth_credential_cache_entries",
    "Credential rows (and ids known unknown) cached in memory, by cache: keys, operators (bounded by "
    "PLG_AUTH_KEY_CACHE_SIZE each).",
    ("cache",),
)

KeyKind = Literal["secret", "publishable"]
KEY_PREFIX = "plg"  # secret keys (every key made before kinds existed is one)
PUBLISHABLE_PREFIX = "plgpk"
OPERATOR_PREFIX = "plgop"
_PREFIX_KIND: dict[str, KeyKind] = {KEY_PREFIX: "secret", PUBLISHABLE_PREFIX: "publishable"}
_KIND_PREFIX: dict[KeyKind, str] = {"secret": KEY_PREFIX, "publishable": PUBLISHABLE_PREFIX}
ROLES = ("viewer", "editor", "admin")
_KEY_ID_BYTES = 10  # 80 bits, 16 base32 characters: unique by construction, short enough to read aloud
_SECRET_BYTES = 32  # 256 bits


class NotCached(LookupError):
    """``cached_only`` was asked and the cache holds no fresh row for the id (answering would need a
    lookup)."""


class CredentialError(Exception):
    """401: the credential is missing, malformed, unknown or revoked. The message says which (ids are not
    secret, and telling "revoked" from "unknown" saves the client's operator a support ticket)."""


# Kept under its old name: ingest and its tests know the 401 as AuthError.
AuthError = CredentialError


class StoreError(Exception):
    """A request the database refused for a reason the user can fix (unknown customer, duplicate name)."""


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    key_id: str
    token: str  # the full key, shown once
    secret_sha256: bytes


def _new_id() -> str:
    return base64.b32encode(secrets.token_bytes(_KEY_ID_BYTES)).decode().lower().rstrip("=")


def generate(prefix: str = KEY_PREFIX) -> GeneratedKey:
    key_id = _new_id()
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return GeneratedKey(key_id, f"{prefix}_{key_id}_{secret}", hash_secret(secret))


def split(token: str) -> tuple[str, str, str] | None:
    """``(prefix, id, secret)`` of a well-formed credential, else None. The secret may contain ``_``."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] not in (KEY_PREFIX, PUBLISHABLE_PREFIX, OPERATOR_PREFIX):
        return None
    prefix, key_id, secret = parts
    if not key_id or not key_id.isalnum() or not key_id.isascii() or len(secret) < 32:
        return None
    return prefix, key_id, secret


def parse(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed customer key (either kind), else None."""
    parts = split(token)
    if parts is None or parts[0] == OPERATOR_PREFIX:
        return None
    return parts[1], parts[2]


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
    """One stored customer key, as the database has it."""

    key_id: str
    customer_id: str
    secret_sha256: bytes
    revoked: bool
    kind: KeyKind = "secret"
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OperatorRecord:
    """One stored operator token, as the database has it."""

    operator_id: str
    name: str
    role: str
    secret_sha256: bytes
    revoked: bool


class _Stored(Protocol):
    @property
    def secret_sha256(self) -> bytes: ...
    @property
    def revoked(self) -> bool: ...


R = TypeVar("R", bound=_Stored)


class CredentialCache(Generic[R]):
    """Checks credentials against stored hashes, caching each row for ``ttl`` seconds.

    Revocation therefore takes effect within ``ttl`` seconds on every process. Unknown ids are cached for
    ``negative_ttl`` (shorter) so a client hammering with a bad id costs one query per period, while a
    freshly created credential is usable at once (unless it was tried before it existed). Concurrent misses
    for one id share a single lookup. When the lookup fails (PostgreSQL down) a row that expired less than
    ``stale_ttl`` seconds ago is served: a database outage must not turn every known key away. Such a row
    is then trusted for another ``ttl`` before the next lookup is tried, so during an outage a key's
    requests do not each wait for a failing connection; ``stale_ttl`` still counts from the last time the
    database confirmed the row.
    """

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[R | None]],
        ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
        stale_ttl: float = 3600.0,
        name: str = "keys",
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._stale_ttl = stale_ttl
        self._clock = clock
        # id -> (fresh until, row or None for unknown, stale until: the last confirmation + ttl + stale_ttl)
        # The least recently used go first past max_entries: a flood of made-up ids evicts the ids it
        # made up, while the keys in use stay (before: the whole cache was emptied, every live key then
        # looked up again).
        self._entries: BoundedCache[str, tuple[float, R | None, float]] = BoundedCache(
            max_entries, gauge=CACHED.labels(name)
        )
        self._inflight: dict[str, asyncio.Future[R | None]] = {}

    async def check(self, key_id: str, secret: str, what: str, *, cached_only: bool = False) -> R:
        """The row of ``key_id`` if ``secret`` is its secret and it is not revoked; else CredentialError.
        ``cached_only``: from a fresh cached row or not at all (:class:`NotCached`), never a lookup."""
        record = self.cached(key_id) if cached_only else await self.get(key_id)
        if record is None:
            raise CredentialError(f"unknown {what} {key_id}")
        if not hmac.compare_digest(record.secret_sha256, hash_secret(secret)):
            raise CredentialError(f"wrong secret for {what} {key_id}")
        if record.revoked:
            raise CredentialError(f"{what} {key_id} has been revoked")
        return record

    def serves_without_lookup(self) -> bool:
        """Whether some credential would still be served if the database could not be asked now: a valid
        (not revoked) row confirmed within its ``ttl + stale_ttl``. A service reads it for its readiness
        during a database outage (no I/O; safe from any thread)."""
        now = self._clock()
        return any(
            row is not None and not row.revoked and now < stale_until
            for _, row, stale_until in self._entries.values()
        )

    def cached(self, key_id: str) -> R | None:
        """The fresh cached row of ``key_id`` (None: cached as unknown); :class:`NotCached` otherwise."""
        cached = self._entries.get(key_id)
        if cached is None or cached[0] <= self._clock():
            raise NotCached(key_id)
        return cached[1]

    async def get(self, key_id: str) -> R | None:
        now = self._clock()
        cached = self._entries.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._inflight.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[R | None] = asyncio.get_running_loop().create_future()
        self._inflight[key_id] = fut
        try:
            record = await self._lookup(key_id)
        except Exception as exc:
            if cached is not None and cached[1] is not None and self._clock() < cached[2]:
                log.warning("credential lookup failed; serving the cached row", extra={"error": str(exc)})
                self._entries.put(key_id, (min(self._clock() + self._ttl, cached[2]), cached[1], cached[2]))
                fut.set_result(cached[1])
                return cached[1]
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters (if any) re-raise it, nobody else must
            raise
        except BaseException:
            fut.cancel()
            raise
        finally:
            del self._inflight[key_id]
        confirmed = self._clock()
        self._entries.put(
            key_id,
            (
                confirmed + (self._ttl if record is not None else self._negative_ttl),
                record,
                confirmed + self._ttl + self._stale_ttl,
            ),
        )
        fut.set_result(record)
        return record


@dataclass(frozen=True, slots=True)
class Principal:
    """Who an ingest request acts for: the tenant and the key used (``KeyCache.authenticate``)."""

    customer_id: str
    key_id: str
    kind: KeyKind = "secret"


class KeyCache(CredentialCache[KeyRecord]):
    """The customer-key cache, with the whole ``Authorization`` header check on top."""

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if token is None:
            raise CredentialError("missing API key: send 'Authorization: Bearer <key>'")
        return await self.authenticate_token(token)

    async def authenticate_token(self, token: str, *, cached_only: bool = False) -> Principal:
        parts = split(token)
        if parts is None or parts[0] == OPERATOR_PREFIX:
            raise CredentialError("malformed API key: expected plg_<key-id>_<secret>")
        prefix, key_id, secret = parts
        record = await self.check(key_id, secret, "API key", cached_only=cached_only)
        if _PREFIX_KIND[prefix] != record.kind:
            raise CredentialError(f"API key {key_id} is a {record.kind} key but carries another prefix")
        return Principal(record.customer_id, key_id, record.kind)


# -- the tables ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    customer_id: str
    description: str | None
    created_at: datetime
    revoked_at: datetime | None
    kind: str = "secret"
    allowed_origins: list[str] | None = None


@dataclass(frozen=True)
class OperatorRow:
    operator_id: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


_KEY_COLUMNS = "key_id, customer_id, description, created_at, revoked_at, kind, allowed_origins"
_OPERATOR_COLUMNS = "operator_id, name, role, created_at, revoked_at"


def create_key(
    conn: psycopg.Connection[Any],
    customer_id: str,
    description: str | None = None,
    *,
    kind: KeyKind = "secret",
    allowed_origins: list[str] | None = None,
) -> tuple[ApiKey, str]:
    """A new key for ``customer_id``; returns its row and the full key, which is never stored."""
    if allowed_origins and kind != "publishable":
        raise StoreError("allowed origins are for publishable keys (browsers); secret keys have none")
    generated = generate(_KIND_PREFIX[kind])
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "INSERT INTO api_keys"
                " (key_id, customer_id, secret_sha256, description, kind, allowed_origins)"
                f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_KEY_COLUMNS}",
                (generated.key_id, customer_id, generated.secret_sha256, description, kind, allowed_origins),
            )
            row = cur.fetchone()
    except psycopg.errors.ForeignKeyViolation:
        raise StoreError(
            f"no customer {customer_id!r}; create it first with `plg customers create`"
        ) from None
    assert row is not None
    return ApiKey(**row), generated.token


def list_keys(conn: psycopg.Connection[Any], customer_id: str) -> list[ApiKey]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE customer_id = %s ORDER BY created_at, key_id",
            (customer_id,),
        )
        return [ApiKey(**row) for row in cur.fetchall()]


def revoke_key(conn: psycopg.Connection[Any], key_id: str) -> ApiKey | None:
    """Revoke a key (idempotent: revoking twice keeps the first time). None if there is no such key."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s"
            f" RETURNING {_KEY_COLUMNS}",
            (key_id,),
        )
        row = cur.fetchone()
    return ApiKey(**row) if row else None


def lookup_key(conn: psycopg.Connection[Any], key_id: str) -> KeyRecord | None:
    row = conn.execute(
        "SELECT key_id, customer_id, secret_sha256, revoked_at IS NOT NULL, kind, allowed_origins"
        " FROM api_keys WHERE key_id = %s",
        (key_id,),
    ).fetchone()
    if row is None:
        return None
    return KeyRecord(row[0], row[1], bytes(row[2]), bool(row[3]), row[4], tuple(row[5] or ()))


def create_operator(conn: psycopg.Connection[Any], name: str, role: str) -> tuple[OperatorRow, str]:
    """A new operator token for ``name`` with ``role``; returns its row and the token, never stored."""
    if role not in ROLES:
        raise StoreError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    generated = generate(OPERATOR_PREFIX)
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"INSERT INTO operators (operator_id, name, role, secret_sha256)"
                f" VALUES (%s, %s, %s, %s) RETURNING {_OPERATOR_COLUMNS}",
                (generated.key_id, name, role, generated.secret_sha256),
            )
            row = cur.fetchone()
    except psycopg.errors.UniqueViolation:
        raise StoreError(f"operator {name!r} already has an active token; revoke it first") from None
    except psycopg.errors.CheckViolation:
        raise StoreError(
            "invalid operator name: 1-128 printable characters (an e-mail address or a service name)"
        ) from None
    assert row is not None
    return OperatorRow(**row), generated.token


def list_operators(conn: psycopg.Connection[Any]) -> list[OperatorRow]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_OPERATOR_COLUMNS} FROM operators ORDER BY created_at, operator_id")
        return [OperatorRow(**row) for row in cur.fetchall()]


def revoke_operator(conn: psycopg.Connection[Any], name_or_id: str) -> list[OperatorRow]:
    """Revoke the operator's active token(s), by name or token id (idempotent); the rows it touched."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"UPDATE operators SET revoked_at = coalesce(revoked_at, now())"
            f" WHERE operator_id = %s OR (name = %s AND revoked_at IS NULL) RETURNING {_OPERATOR_COLUMNS}",
            (name_or_id, name_or_id),
        )
        return [OperatorRow(**row) for row in cur.fetchall()]


def lookup_operator(conn: psycopg.Connection[Any], operator_id: str) -> OperatorRecord | None:
    row = conn.execute(
        "SELECT operator_id, name, role, secret_sha256, revoked_at IS NOT NULL FROM operators"
        " WHERE operator_id = %s",
        (operator_id,),
    ).fetchone()
    if row is None:
        return None
    return OperatorRecord(row[0], row[1], row[2], bytes(row[3]), bool(row[4]))
