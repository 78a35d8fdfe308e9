"""Operators' browser sessions: server-side rows in PostgreSQL behind an opaque cookie, resolved to an
:class:`~services.kernel.auth.Operator` for the route policies (docs/security.md "Browser sessions and
single sign-on").

* The session id is 256 random bits, sent only in the cookie (``HttpOnly``, ``SameSite=Lax``, ``Secure``
  and the ``__Host-`` prefix when the page is served over https); the table keeps its SHA-256.
* A session has an absolute expiry (``PLG_SESSION_TTL_SECONDS``, 8 h by default) and ends at logout, when
  an admin revokes it, or — for one made from an operator token — when that token is revoked.
* State-changing form posts carry a CSRF token derived from the session id (only a page that could read
  the cookie can know it), checked in constant time; forms before a session (the token login) use a
  double-submit cookie. ``SameSite=Lax`` already keeps the cookie off cross-site posts; the token is the
  second lock.

:class:`SessionStore` also keeps the OIDC logins in flight (state, nonce, PKCE verifier), consumed once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from starlette.requests import Request
from starlette.responses import Response

from services.kernel.auth import Operator, Role
from services.kernel.oidc import LoginAttempt
from services.kernel.settings import DevDefault, PlgSettings

COOKIE = "plg_session"
#: Over https the cookie gets the ``__Host-`` prefix: the browser then refuses it unless it is Secure,
#: for path / and without a Domain, so no sibling subdomain can plant or shadow it.
SECURE_COOKIE = "__Host-plg_session"
STATE_COOKIE = "plg_oidc_state"
LOGIN_CSRF_COOKIE = "plg_login_csrf"


class SessionSettings(PlgSettings):
    """``PLG_SESSION_*``: operators' browser sessions."""

    model_config = SettingsConfigDict(env_prefix="PLG_SESSION_", extra="ignore")

    # Absolute lifetime of a session: sign in again after it.
    ttl_seconds: int = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600)
    # "auto": Secure (and __Host-) when the request came over https; "always" behind a TLS-terminating
    # proxy that forwards plain http; "never" only for plain-http development.
    cookie_secure: Literal["auto", "always", "never"] = "auto"

    def development_defaults(self) -> list[DevDefault]:
        if self.cookie_secure == "never":
            return [
                DevDefault(
                    "PLG_SESSION_COOKIE_SECURE",
                    "is never: operators' session cookies would be sent over plain http; use auto (behind "
                    "https) or always (behind a TLS-terminating proxy)",
                )
            ]
        return []


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def csrf_token(session_id: str) -> str:
    """The CSRF token of a session: derived from its id, so nothing more is stored and only someone who
    holds the cookie can compute it (a hash of another input than the stored one, so the table's hashes
    do not give it away)."""
    return hashlib.sha256(b"plg csrf\x00" + session_id.encode()).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True, slots=True)
class Session:
    """A live session as a page sees it."""

    operator: Operator
    csrf: str
    expires_at: datetime
    signed_in_via: str  # "oidc" or "token"


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A session as the admins' session list shows it (``key`` is a short public handle of the hash)."""

    key: str
    operator_name: str
    role: str
    via: str
    created_at: datetime
    expires_at: datetime


_RESOLVE = """
SELECT s.operator_name, COALESCE(o.role, s.role), s.via, s.expires_at
  FROM operator_sessions s
  LEFT JOIN operators o ON o.operator_id = s.operator_id
 WHERE s.session_sha256 = %s AND s.revoked_at IS NULL AND s.expires_at > now()
   AND (s.operator_id IS NULL OR (o.operator_id IS NOT NULL AND o.revoked_at IS NULL))
"""


class SessionStore:
    """Sessions and OIDC logins in flight, in PostgreSQL. ``connection()`` gives a pooled connection as a
    context manager (``pool.connection``); every method is blocking — the async ones run it in a thread."""

    def __init__(
        self, connection: Callable[[], AbstractContextManager[Any]], settings: SessionSettings | None = None
    ) -> None:
        self._connection = connection
        self.settings = settings or SessionSettings()

    # -- sessions ---------------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        role: Role,
        *,
        via: Literal["oidc", "token"],
        subject: str,
        operator_id: str | None = None,
    ) -> str:
        """A new session for operator ``name`` with ``role``, signed in ``via`` SSO or an operator token;
        returns its id (for the cookie only)."""
        session_id = secrets.token_urlsafe(32)
        with self._connection() as conn:
            # Expired rows are kept a day (an admin may look at who was in) and then dropped here, so the
            # table stays as small as the number of recent logins without a sweeper thread.
            conn.execute("DELETE FROM operator_sessions WHERE expires_at < now() - interval '1 day'")
            conn.execute(
                "INSERT INTO operator_sessions (session_sha256, operator_name, role, via, subject, "
                "operator_id, expires_at) VALUES (%s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
                (
                    digest(session_id),
                    name,
                    role.name,
                    via,
                    subject,
                    operator_id,
                    self.settings.ttl_seconds,
                ),
            )
        return session_id

    def lookup(self, session_id: str) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        with self._connection() as conn:
            row = conn.execute(_RESOLVE, (digest(session_id),)).fetchone()
        if row is None:
            return None
        name, role, via, expires_at = row
        # via "session": audit rows and policies see a browser session; how it began is in the table.
        return Session(Operator(name, Role[role], "session"), csrf_token(session_id), expires_at, via)

    def revoke(self, session_id: str) -> bool:
        with self._connection() as conn:
            cur = conn.execute(
                "UPDATE operator_sessions SET revoked_at = now() "
                "WHERE session_sha256 = %s AND revoked_at IS NULL",
                (digest(session_id),),
            )
            return bool(cur.rowcount > 0)

    def revoke_key(self, key: str) -> bool:
        """Revoke by the public handle of :class:`SessionRow` (an admin ending someone's session)."""
        if len(key) != 16 or any(c not in "0123456789abcdef" for c in key):
            return False
        with self._connection() as conn:
            cur = conn.execute(
                "UPDATE operator_sessions SET revoked_at = now() "
                "WHERE substr(encode(session_sha256, 'hex'), 1, 16) = %s AND revoked_at IS NULL",
                (key,),
            )
            return bool(cur.rowcount > 0)

    def active(self) -> list[SessionRow]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT substr(encode(session_sha256, 'hex'), 1, 16), operator_name, role, via, created_at, "
                "expires_at FROM operator_sessions WHERE revoked_at IS NULL AND expires_at > now() "
                "ORDER BY created_at DESC LIMIT 500"
            ).fetchall()
        return [SessionRow(*row) for row in rows]

    # -- OIDC logins in flight ----------------------------------------------------------------------------

    def save_attempt(self, attempt: LoginAttempt, ttl_seconds: int) -> None:
        with self._connection() as conn:
            conn.execute("DELETE FROM oidc_login_attempts WHERE expires_at < now()")
            conn.execute(
                "INSERT INTO oidc_login_attempts (state_sha256, nonce, code_verifier, return_to, expires_at) "
                "VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))",
                (digest(attempt.state), attempt.nonce, attempt.code_verifier, attempt.return_to, ttl_seconds),
            )

    def take_attempt(self, state: str) -> LoginAttempt | None:
        """The login ``state`` belongs to, consumed: a replayed or expired state finds nothing."""
        if not state or len(state) > 128:
            return None
        with self._connection() as conn:
            row = conn.execute(
                "DELETE FROM oidc_login_attempts WHERE state_sha256 = %s "
                "RETURNING nonce, code_verifier, return_to, expires_at > now()",
                (digest(state),),
            ).fetchone()
        if row is None or not row[3]:
            return None
        return LoginAttempt(state, row[0], row[1], row[2])

    # -- the request side ---------------------------------------------------------------------------------

    def cookie_secure(self, request: Request) -> bool:
        mode = self.settings.cookie_secure
        return mode == "always" or (mode == "auto" and request.url.scheme == "https")

    def cookie_name(self, request: Request) -> str:
        return SECURE_COOKIE if self.cookie_secure(request) else COOKIE

    def session_id(self, request: Request) -> str | None:
        return request.cookies.get(SECURE_COOKIE) or request.cookies.get(COOKIE)

    async def current(self, request: Request) -> Session | None:
        """The request's live session (cached on the request: a page and its policy look once)."""
        cached = request.scope.get("plg_session")
        if cached is not None:
            return cached if isinstance(cached, Session) else None
        session_id = self.session_id(request)
        found = await asyncio.to_thread(self.lookup, session_id) if session_id else None
        request.scope["plg_session"] = found if found is not None else False
        return found

    async def resolve(self, request: Request) -> Operator | None:
        """The :data:`services.kernel.auth.SessionResolver` the authenticator asks without a bearer token."""
        found = await self.current(request)
        return found.operator if found is not None else None

    def set_cookie(self, response: Response, request: Request, session_id: str) -> None:
        response.set_cookie(
            self.cookie_name(request),
            session_id,
            max_age=self.settings.ttl_seconds,
            path="/",
            secure=self.cookie_secure(request),
            httponly=True,
            samesite="lax",
        )

    def clear_cookie(self, response: Response, request: Request) -> None:
        for name in (COOKIE, SECURE_COOKIE):
            if name in request.cookies:
                response.delete_cookie(
                    name, path="/", secure=name == SECURE_COOKIE, httponly=True, samesite="lax"
                )
