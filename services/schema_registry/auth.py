"""Admin-token check for the registry's writes (and, optionally, reads).

Confluent clients authenticate with HTTP Basic (``basic.auth.user.info = user:password``) or a Bearer
token, so both carry the token: as the Bearer token, or as the Basic password (any user name).
"""

from __future__ import annotations

import base64
import binascii
import hmac

from pydantic import SecretStr

from services.schema_registry.model import ErrorCode, RegistryError

WWW_AUTHENTICATE = 'Basic realm="plg-schema-registry", Bearer'


def presented_token(authorization: str | None) -> str | None:
    """The secret carried by an ``Authorization`` header, or None when there is none we understand."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep else None
    return None


class AdminGuard:
    """Decides whether a request may proceed; raises a 401 (error_code 40101) when it may not."""

    def __init__(self, admin_token: SecretStr | None, protect_reads: bool = False) -> None:
        self._token = admin_token.get_secret_value().encode() if admin_token is not None else None
        self.protect_reads = protect_reads

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, authorization: str | None, *, write: bool) -> None:
        if self._token is None or not (write or self.protect_reads):
            return
        token = presented_token(authorization)
        if token is None:
            raise RegistryError(
                ErrorCode.UNAUTHORIZED,
                "Unauthorized: this operation needs the registry's admin token "
                "(Authorization: Bearer <token>, or HTTP Basic with the token as password)",
            )
        if not hmac.compare_digest(token.encode(), self._token):
            raise RegistryError(
                ErrorCode.UNAUTHORIZED, "Unauthorized: the admin token presented is not valid"
            )
