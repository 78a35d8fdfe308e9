"""Who may call a route: principals, how a request's credential becomes one, and the route policies.

Every route of every plg HTTP service declares its policy as a FastAPI dependency, next to the route
(CONVENTIONS.md §21; docs/security.md has the table, generated from the code by ``python -m
services.kernel.routes``):

    @router.get("/v1/entitlements/{customer_id}/{feature}")
    async def check(caller: Caller = Depends(publishable_key())) -> ...   # caller.customer_id
    @router.patch("/v1/admin/flags/{key}")
    async def patch(op: Operator = Depends(operator(Role.editor))) -> ...

A credential is ``Authorization: Bearer <token>``: a customer key (``plg_…`` secret, ``plgpk_…``
publishable) or an operator token (``plgop_…``, ``plg operators create``); HTTP Basic with the token as
password is taken too (Confluent schema-registry clients send that). Without a bearer token, a browser
session is asked for an operator (``Authenticator.sessions``, filled by ``services/kernel/sessions.py``).

The answers: no credential, or one that is malformed, unknown or revoked → **401** with
``WWW-Authenticate``; a valid credential that may not do this — another customer's key, a publishable key
on a secret-only route, a customer key on an operator route, an operator below the role → **403**, before
anything about the target is looked up, so a 403 never tells whether the other customer exists. The
customer a request acts for always comes from the key; a customer id in the path must be the key's own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

from fastapi.dependencies.models import Dependant
from starlette.requests import Request
from starlette.routing import BaseRoute

from services.kernel import apikeys, metrics
from services.kernel.apikeys import CredentialError, KeyKind, NotCached, OperatorRecord
from services.kernel.http import HttpError
from services.kernel.settings import AuthSettings

UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
TOO_MANY_FAILED_ATTEMPTS = "too_many_failed_attempts"
WWW_AUTHENTICATE = 'Bearer realm="plg"'


class Role(enum.IntEnum):
    """An operator's role; each includes the ones below it."""

    viewer = 1  # reads: dashboards, health, flags, audit
    editor = 2  # changes: flags, onboarding on a customer's behalf, registry subjects
    admin = 3  # destructive and configuration changes: deletes, compatibility, modes, billing admin


@dataclass(frozen=True, slots=True)
class CustomerKey:
    """A request made with a customer's API key."""

    customer_id: str
    key_id: str
    kind: KeyKind


@dataclass(frozen=True, slots=True)
class Operator:
    """A request made by an operator: ``via`` is how they proved it (``token``, ``session``, ...)."""

    name: str
    role: Role
    via: str


Principal = CustomerKey | Operator

#: Finds the operator of a browser session (a cookie); None when the request carries no valid session.
SessionResolver = Callable[[Request], Awaitable[Operator | None]]


def presented_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header: the Bearer value, or the password of HTTP Basic."""
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
        return password if sep and password else None
    return None


FAILED_CLIENTS = metrics.gauge(
    "plg_auth_failed_attempt_clients",
    "Client addresses whose failed credential attempts are being counted (bounded by "
    "PLG_AUTH_FAILED_ATTEMPTS_MAX_CLIENTS).",
)
FAILED_ATTEMPTS = metrics.counter(
    "plg_auth_failed_attempts",
    "Requests with a failed credential (counted) and requests refused 429 because their client address "
    "failed too often (refused).",
    ("outcome",),
)


class FailedAttempts:
    """Failed credential attempts per client address, in fixed windows: after ``limit`` failures within
    ``window`` seconds the address is refused until that window ends. Memory is bounded by ``max_clients``
    (the oldest windows are forgotten first). ``limit`` 0 turns it off."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._max_clients = max_clients
        self._clock = clock
        self._windows: dict[str, list[float]] = {}  # client -> [window end, failures]; oldest first

    def retry_after(self, client: str) -> int:
        """0 when ``client`` may try, else the whole seconds until its window ends (at least 1)."""
        entry = self._windows.get(client)
        if entry is None or self.limit <= 0 or entry[1] < self.limit:
            return 0
        left = entry[0] - self._clock()
        if left <= 0:
            del self._windows[client]
            FAILED_CLIENTS.set(len(self._windows))
            return 0
        return max(1, math.ceil(left))

    def failed(self, client: str) -> None:
        if self.limit <= 0:
            return
        now = self._clock()
        entry = self._windows.get(client)
        if entry is None or entry[0] <= now:
            self._windows.pop(client, None)  # re-inserted last: the dict stays ordered by window start
            while len(self._windows) >= self._max_clients:
                del self._windows[next(iter(self._windows))]
            self._windows[client] = [now + self.window, 1]
            FAILED_CLIENTS.set(len(self._windows))
        else:
            entry[1] += 1


def client_address(request: Request) -> str:
    """The peer address (behind a proxy, uvicorn's ``--forwarded-allow-ips`` makes it the client's)."""
    return request.client.host if request.client is not None else "unknown"


class Authenticator:
    """Turns a request's credential into a :class:`Principal`, from caches of the credential tables.

    One per process, opened with the service's database pool (:func:`open_authenticator`) and put on the
    app with :func:`install`; the policies find it there.
    """

    def __init__(
        self,
        keys: apikeys.KeyCache,
        operators: apikeys.CredentialCache[OperatorRecord],
        sessions: SessionResolver | None = None,
        static_operators: dict[str, Operator] | None = None,
        failed_attempts: FailedAttempts | None = None,
    ) -> None:
        self.keys = keys
        self.operators = operators
        self.sessions = sessions
        self.failed_attempts = failed_attempts or FailedAttempts(0, 1.0)
        # Tokens configured in settings rather than the table (the registry's admin token), compared in
        # constant time.
        self._static = dict(static_operators or {})

    async def principal(self, request: Request) -> Principal | None:
        """The request's principal; None without any credential; CredentialError for a bad one."""
        token = presented_token(request.headers.get("authorization"))
        if token is not None:
            return await self._limited(client_address(request), token)
        if self.sessions is not None:
            return await self.sessions(request)
        return None

    async def _limited(self, client: str, token: str) -> Principal:
        """:meth:`from_token` behind the client's failed-attempt limit. An address over it gets 429 without
        a lookup, unless its credential is one the cache already holds as valid (a good client behind the
        same NAT as a guesser keeps working): guessing key ids cannot make PostgreSQL work."""
        wait = self.failed_attempts.retry_after(client)
        if wait:
            try:
                return await self.from_token(token, cached_only=True)
            except (CredentialError, NotCached):
                FAILED_ATTEMPTS.labels("refused").inc()
                raise HttpError(
                    429,
                    TOO_MANY_FAILED_ATTEMPTS,
                    f"too many failed credential attempts from this address "
                    f"({self.failed_attempts.limit} within {self.failed_attempts.window:g} s); "
                    f"retry after {wait} s",
                    {"Retry-After": str(wait)},
                ) from None
        try:
            return await self.from_token(token)
        except CredentialError:
            FAILED_ATTEMPTS.labels("counted").inc()
            self.failed_attempts.failed(client)
            raise

    async def from_token(self, token: str, *, cached_only: bool = False) -> Principal:
        """The token's principal; CredentialError for a bad one. ``cached_only``: from fresh cached rows
        only, :class:`~services.kernel.apikeys.NotCached` when answering would need a lookup."""
        for static_token, op in self._static.items():
            if hmac.compare_digest(static_token.encode(), token.encode()):
                return op
        parts = apikeys.split(token)
        if parts is None:
            raise CredentialError(
                "malformed credential: expected an API key (plg_<key-id>_<secret>, plgpk_...) or an "
                "operator token (plgop_<id>_<secret>)"
            )
        if parts[0] == apikeys.OPERATOR_PREFIX:
            record = await self.operators.check(parts[1], parts[2], "operator token", cached_only=cached_only)
            return Operator(record.name, Role[record.role], "token")
        key = await self.keys.authenticate_token(token, cached_only=cached_only)
        return CustomerKey(key.customer_id, key.key_id, key.kind)


def open_authenticator(
    pool: Any,
    settings: AuthSettings,
    *,
    static_operators: dict[str, Operator] | None = None,
) -> Authenticator:
    """An authenticator over the credential tables, read through ``pool`` (the service's psycopg
    ``ConnectionPool``, or a zero-argument factory of connections); ``settings`` are the service's
    ``auth`` settings (``PLG_AUTH_*``)."""
    if hasattr(pool, "connection"):

        def connection() -> Any:
            return pool.connection(timeout=5)

    else:  # a zero-argument factory: pool.connection, or lambda: pool.connection(timeout=5)
        connection = pool

    def lookup(fn: Callable[[Any, str], Any]) -> Callable[[str], Awaitable[Any]]:
        def sync(key_id: str) -> Any:
            with connection() as conn:
                return fn(conn, key_id)

        async def run(key_id: str) -> Any:
            return await asyncio.to_thread(sync, key_id)

        return run

    ttl, negative, stale = (
        settings.key_cache_ttl_seconds,
        settings.key_negative_cache_ttl_seconds,
        settings.key_stale_ttl_seconds,
    )
    return Authenticator(
        apikeys.KeyCache(
            lookup(apikeys.lookup_key),
            ttl,
            negative,
            stale_ttl=stale,
            max_entries=settings.key_cache_size,
            name="keys",
        ),
        apikeys.CredentialCache(
            lookup(apikeys.lookup_operator),
            ttl,
            negative,
            stale_ttl=stale,
            max_entries=settings.key_cache_size,
            name="operators",
        ),
        static_operators=static_operators,
        failed_attempts=FailedAttempts(
            settings.failed_attempts_limit,
            settings.failed_attempts_window_seconds,
            max_clients=settings.failed_attempts_max_clients,
        ),
    )


_STATE = "plg_authenticator"


def install(app: Any, authenticator: Authenticator | None) -> None:
    """Put (or, with None, take away) the app's authenticator, where the policies look for it."""
    setattr(app.state, _STATE, authenticator)


def installed_keys(app: Any) -> apikeys.KeyCache | None:
    """The key cache of the authenticator installed on ``app`` (None while it starts or stops): what the
    CORS middleware checks a publishable key's allowed origins against (services/kernel/cors.py)."""
    found: Authenticator | None = getattr(app.state, _STATE, None)
    return found.keys if found is not None else None


def authenticator_of(request: Request) -> Authenticator:
    found = getattr(request.app.state, _STATE, None)
    if found is None:
        raise HttpError(
            503,
            "service_unavailable",
            "the service is starting or stopping; retry shortly",
            {"Retry-After": "1"},
        )
    return found  # type: ignore[no-any-return]


def unauthorized(message: str) -> HttpError:
    return HttpError(401, UNAUTHORIZED, message, {"WWW-Authenticate": WWW_AUTHENTICATE})


def forbidden(message: str) -> HttpError:
    return HttpError(403, FORBIDDEN, message)


async def authenticate(request: Request) -> Principal:
    """The request's principal, or the 401."""
    try:
        principal = await authenticator_of(request).principal(request)
    except CredentialError as exc:
        raise unauthorized(str(exc)) from None
    if principal is None:
        raise unauthorized(
            "no credential: send 'Authorization: Bearer <key>' (an API key from `plg keys create`, or an "
            "operator token from `plg operators create`)"
        )
    return principal


def responses(*, forbidden_too: bool = True) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of a policy's refusals, to merge into a route's ``responses``."""
    out: dict[int | str, dict[str, Any]] = {
        401: {
            "description": "No credential, or a malformed, unknown or revoked one.",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        }
    }
    if forbidden_too:
        out[403] = {
            "description": "A valid credential that may not do this: another customer's key, a publishable "
            "key where a secret one is needed, an API key on an operator route, an operator below the role."
        }
    return out


# -- policies ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a tenant route acts for: ``customer_id`` from the key (or, for an operator, from the path;
    None when the route has no customer in its path) and the principal that proved it."""

    customer_id: str | None
    principal: Principal

    @property
    def operator(self) -> Operator | None:
        return self.principal if isinstance(self.principal, Operator) else None


class Policy:
    """A route's declared policy. An instance is the FastAPI dependency (``Depends(policy)``); ``kind`` and
    ``describe()`` feed the route table in docs/security.md."""

    kind: str = ""

    def describe(self) -> str:
        raise NotImplementedError

    async def __call__(self, request: Request) -> Any:
        raise NotImplementedError


class CustomerPolicy(Policy):
    """A customer's key (of the allowed kinds) for its own customer, or an operator of at least
    ``operator_role`` (None: operators may not)."""

    def __init__(
        self,
        kinds: Iterable[KeyKind],
        *,
        customer_param: str | None,
        operator_role: Role | None,
    ) -> None:
        self.kinds = frozenset(kinds)
        self.customer_param = customer_param
        self.operator_role = operator_role
        self.kind = "publishable" if "publishable" in self.kinds else "secret"

    def describe(self) -> str:
        keys = "publishable or secret key" if self.kind == "publishable" else "secret key"
        own = f" of the customer in `{{{self.customer_param}}}`" if self.customer_param else " (its customer)"
        ops = f", or operator ≥ {self.operator_role.name}" if self.operator_role is not None else ""
        return f"{keys}{own}{ops}"

    async def __call__(self, request: Request) -> Caller:
        principal = await authenticate(request)
        target = request.path_params.get(self.customer_param) if self.customer_param else None
        if isinstance(principal, Operator):
            if self.operator_role is None:
                raise forbidden("this route takes a customer's API key, not an operator's credential")
            if principal.role < self.operator_role:
                raise forbidden(
                    f"operator {principal.name} is {principal.role.name}; this needs "
                    f"{self.operator_role.name} or above"
                )
            return Caller(target, principal)
        if principal.kind not in self.kinds:
            raise forbidden(
                f"API key {principal.key_id} is publishable (for browsers); this route needs a secret key"
            )
        if self.customer_param is not None and target != principal.customer_id:
            # The same answer whether or not that customer exists: a 404 here would tell.
            raise forbidden(f"API key {principal.key_id} may only act for its own customer")
        return Caller(principal.customer_id, principal)


class OperatorPolicy(Policy):
    kind = "operator"

    def __init__(self, role: Role) -> None:
        self.role = role

    def describe(self) -> str:
        return f"operator ≥ {self.role.name}"

    async def __call__(self, request: Request) -> Operator:
        principal = await authenticate(request)
        if not isinstance(principal, Operator):
            raise forbidden("this route is for operators (`plg operators create`), not API keys")
        if principal.role < self.role:
            raise forbidden(
                f"operator {principal.name} is {principal.role.name}; this needs {self.role.name} or above"
            )
        return principal


class MarkerPolicy(Policy):
    """A policy the route enforces itself (a Stripe signature over the raw body) or none (public)."""

    def __init__(self, kind: Literal["stripe-signature", "public"], reason: str) -> None:
        self.kind = kind
        self.reason = reason

    def describe(self) -> str:
        return f"{'Stripe signature' if self.kind == 'stripe-signature' else 'public'}: {self.reason}"

    async def __call__(self, request: Request) -> None:
        return None


def secret_key(
    customer_param: str | None = "customer_id", operator_role: Role | None = Role.viewer
) -> CustomerPolicy:
    """A secret key of the customer (the one in ``{customer_param}`` when given), or an operator."""
    return CustomerPolicy(("secret",), customer_param=customer_param, operator_role=operator_role)


def publishable_key(
    customer_param: str | None = "customer_id", operator_role: Role | None = Role.viewer
) -> CustomerPolicy:
    """A publishable or secret key of the customer, or an operator."""
    return CustomerPolicy(
        ("secret", "publishable"), customer_param=customer_param, operator_role=operator_role
    )


def operator(role: Role) -> OperatorPolicy:
    return OperatorPolicy(role)


def stripe_signature(reason: str = "Stripe-Signature header verified over the raw body") -> MarkerPolicy:
    return MarkerPolicy("stripe-signature", reason)


def public(reason: str) -> MarkerPolicy:
    return MarkerPolicy("public", reason)


# -- finding a route's policy -------------------------------------------------------------------------------

_POLICY_ATTR = "plg_policy"
# FastAPI's own documentation routes: the API description is public (it holds no tenant data).
_DOCS = public("the API description")


def declare(target: Any, policy: Policy) -> Any:
    """Attach a policy to a route that takes no dependencies (a Starlette route, a mount, an endpoint)."""
    setattr(target, _POLICY_ATTR, policy)
    return target


def _from_dependant(dependant: Dependant) -> list[Policy]:
    found: list[Policy] = []
    for sub in dependant.dependencies:
        if isinstance(sub.call, Policy):
            found.append(sub.call)
        found.extend(_from_dependant(sub))
    return found


def iter_routes(
    routes: Iterable[BaseRoute], prefix: str = "", extra: tuple[Policy, ...] = ()
) -> Iterable[tuple[str, BaseRoute, tuple[Policy, ...]]]:
    """``(path, route, policies of the include)`` of every route, routers included with
    ``app.include_router`` flattened (FastAPI keeps those as one entry of ``app.routes``)."""
    for route in routes:
        original = getattr(route, "original_router", None)
        context = getattr(route, "include_context", None)
        if original is not None and context is not None:
            added = tuple(d.dependency for d in context.dependencies if isinstance(d.dependency, Policy))
            yield from iter_routes(original.routes, prefix + context.prefix, extra + added)
        else:
            yield prefix + getattr(route, "path", ""), route, extra


# Policies under which a route takes no credential (it may still check a signature over the body itself).
_OPEN_KINDS = frozenset({"public", "stripe-signature"})


def document_refusals(app: Any) -> None:
    """Make ``app``'s OpenAPI document list the 401 and 403 of every route whose policy takes a credential
    (every non-public one can refuse both: no credential; another customer's key, the wrong key kind, an
    operator below the role), so the document cannot forget them when a route does (schemathesis checks
    every answer against it). Lazy, like FastAPI's own ``openapi()``: routers included later count."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return cast(dict[str, Any], app.openapi_schema)
        schema: dict[str, Any] = build()
        refusals = {str(code): entry for code, entry in responses().items()}
        for path, route, included in iter_routes(app.routes):
            policies = (*included, *policies_of(route, app))
            if not any(p.kind not in _OPEN_KINDS for p in policies):
                continue
            operations = schema.get("paths", {}).get(path, {})
            for method in getattr(route, "methods", None) or ():
                operation = operations.get(method.lower())
                if operation is not None:
                    for code, entry in refusals.items():
                        operation.setdefault("responses", {}).setdefault(code, entry)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def policies_of(route: BaseRoute, app: Any = None) -> list[Policy]:
    """Every policy a route declares (a well-declared route has exactly one)."""
    declared = getattr(route, _POLICY_ATTR, None) or getattr(
        getattr(route, "endpoint", None), _POLICY_ATTR, None
    )
    if isinstance(declared, Policy):
        return [declared]
    dependant = getattr(route, "dependant", None)
    if isinstance(dependant, Dependant):
        found = _from_dependant(dependant)
        if found:
            return found
    path = getattr(route, "path", None)
    if app is not None and path in {
        app.openapi_url,
        app.docs_url,
        app.redoc_url,
        app.swagger_ui_oauth2_redirect_url,
    }:
        return [_DOCS]
    return []
