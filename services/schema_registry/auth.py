"""Who may call the registry: its route policies (services/kernel/auth.py's, in Confluent's error shape).

* **Writes** (register, delete, config, mode) need an operator of role editor or above, or the registry's
  own ``REGISTRY_ADMIN_TOKEN`` (the token Confluent clients and plg's provisioner are configured with, as a
  Bearer token or the password of HTTP Basic, which is what ``basic.auth.user.info = user:password``
  sends). While ``REGISTRY_ADMIN_TOKEN`` is unset, writes are open: the local development default, which
  production mode refuses.
* **Reads** are open by default, on purpose: schemas are not tenant data, and every Avro serializer and
  deserializer — each plg service, and customers producing straight to Kafka — fetches schemas by id on
  its hot path with whatever credential its registry client holds (often none). ``REGISTRY_PROTECT_READS``
  closes them to any operator, a secret customer key, or the admin token.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.requests import Request

from services.kernel import auth
from services.kernel.apikeys import CredentialError
from services.kernel.auth import CustomerKey, Operator, Role, presented_token
from services.schema_registry.model import ErrorCode, RegistryError

WWW_AUTHENTICATE = 'Basic realm="plg-schema-registry", Bearer'
WRITER_ROLE = Role.editor


class RegistryAccess(auth.Policy):
    """The policy of a read (``write=False``) or write route of the registry."""

    def __init__(self, admin_token: SecretStr | None, protect_reads: bool, *, write: bool) -> None:
        self._token = admin_token.get_secret_value().encode() if admin_token is not None else None
        self.protect_reads = protect_reads
        self.write = write
        self.kind = _kind(write)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def describe(self) -> str:
        return _describe(self.write)

    async def __call__(self, request: Request) -> None:
        if self._token is None or not (self.write or self.protect_reads):
            return
        token = presented_token(request.headers.get("authorization"))
        if token is None:
            raise RegistryError(
                ErrorCode.UNAUTHORIZED,
                "Unauthorized: this operation needs an operator token or the registry's admin token "
                "(Authorization: Bearer <token>, or HTTP Basic with the token as password)",
            )
        if hmac.compare_digest(token.encode(), self._token):
            return
        try:
            principal = await auth.authenticator_of(request).from_token(token)
        except CredentialError as exc:
            raise RegistryError(ErrorCode.UNAUTHORIZED, f"Unauthorized: {exc}") from None
        if isinstance(principal, Operator) and (principal.role >= WRITER_ROLE or not self.write):
            return
        if isinstance(principal, CustomerKey) and principal.kind == "secret" and not self.write:
            return
        need = (
            f"an operator of role {WRITER_ROLE.name} or above"
            if self.write
            else "an operator or a secret key"
        )
        raise RegistryError(ErrorCode.FORBIDDEN, f"Forbidden: this operation needs {need}")


class AppAccess(auth.Policy):
    """The policy the registry's routes declare (``services/schema_registry/api.py``): the app's own
    :class:`RegistryAccess` for reads or writes decides, made from its settings by ``build_app``
    (``app.state.access``)."""

    def __init__(self, *, write: bool) -> None:
        self.write = write
        self.kind = _kind(write)

    def describe(self) -> str:
        return _describe(self.write)

    async def __call__(self, request: Request) -> None:
        access: AccessPolicies = request.app.state.access
        await (access.write if self.write else access.read)(request)


class AccessPolicies:
    """The registry's read and write policies, from its settings."""

    def __init__(self, admin_token: SecretStr | None, protect_reads: bool) -> None:
        self.read = RegistryAccess(admin_token, protect_reads, write=False)
        self.write = RegistryAccess(admin_token, protect_reads, write=True)


def _kind(write: bool) -> str:
    return "operator" if write else "public"


def _describe(write: bool) -> str:
    if write:
        return f"operator ≥ {WRITER_ROLE.name} or REGISTRY_ADMIN_TOKEN (open while unset: local only)"
    return "public: Avro serde clients (REGISTRY_PROTECT_READS: an operator or a secret key)"
