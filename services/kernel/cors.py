"""CORS for the routes browsers call with a publishable key (the browser SDK, sdk/js): ingest's event
routes, growth's flags and onboarding, entitlement checks.

A pure ASGI middleware rather than Starlette's ``CORSMiddleware`` because the allowed origins are not one
list for the app: they belong to the API key a request carries (``plg keys create C --publishable --origin
URL``), and a preflight carries no key. So:

* a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered at once for any origin —
  it only says which methods and headers may follow, it does nothing;
* the request that follows is checked: ``origin_allowed(origin, authorization)`` decides (None, or why
  not), and a refused origin is answered 403 ``origin_not_allowed`` **before the route runs** (no event is
  written for a page the key does not allow), without CORS headers, so the page cannot read even that.
  :func:`key_origin_check` is the check by the key: a publishable key from any origin unless it lists
  its own, a secret key never from a browser (a secret key in a page is a leaked key);
* an allowed one gets ``Access-Control-Allow-Origin: <origin>`` (never ``*``: the answer depends on the key)
  and the headers a client needs to read (``Retry-After``, ``ETag``, the request id).

Requests without an ``Origin`` header (servers, curl) pass untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import orjson

from services.kernel import apikeys
from services.kernel.auth import presented_token

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: ``(origin, Authorization header or None) -> None when allowed, else why not``.
OriginCheck = Callable[[str, str | None], Awaitable[str | None]]

ORIGIN_NOT_ALLOWED = "origin_not_allowed"
# Chromium caps a preflight's cache at 2 hours; longer values are cut to that anyway.
PREFLIGHT_MAX_AGE_SECONDS = 7200
DEFAULT_HEADERS = ("authorization", "content-type", "content-encoding", "if-none-match", "accept")
EXPOSED_HEADERS = ("retry-after", "etag", "x-request-id")


async def any_origin(_origin: str, _authorization: str | None) -> str | None:
    return None


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case without a trailing slash: how browsers send ``Origin``."""
    parts = urlsplit(origin.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def key_origin_check(keys: Callable[[], apikeys.KeyCache | None]) -> OriginCheck:
    """The origin check by the request's API key (from ``keys()``, the service's key cache).

    Only the key's row is read, not its secret checked: the route authenticates as always, and a request
    without a key, with an unknown or malformed one, passes here so that the route's 401 reaches the page
    readable (with CORS headers).
    """

    async def check(origin: str, authorization: str | None) -> str | None:
        cache = keys()
        token = presented_token(authorization)
        parts = apikeys.split(token) if token else None
        if cache is None or parts is None or parts[0] == apikeys.OPERATOR_PREFIX:
            return None
        try:
            record = await cache.get(parts[1])
        except Exception:  # the database is down with no cached row: the route answers that (503)
            return None
        if record is None:
            return None
        if record.kind != "publishable":
            return (
                f"API key {record.key_id} is a secret key, which never belongs in a browser (anyone can "
                "read it there): use a publishable key (plg keys create CUSTOMER --publishable), and revoke "
                "this one"
            )
        if not record.allowed_origins:
            return None
        if normalise_origin(origin) in {normalise_origin(o) for o in record.allowed_origins}:
            return None
        return (
            f"API key {record.key_id} may not be used from {origin[:200]}: add the origin to the key "
            "(plg keys create CUSTOMER --publishable --origin URL)"
        )

    return check


class CorsMiddleware:
    """CORS on the paths under ``prefixes``; the origin check is the key's (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefixes: Iterable[str] = ("/v1/",),
        methods: Iterable[str] = ("GET", "POST"),
        headers: Iterable[str] = DEFAULT_HEADERS,
        origin_allowed: OriginCheck,
    ) -> None:
        self.app = app
        self.prefixes = tuple(prefixes)
        self.methods = ", ".join(methods)
        self.headers = ", ".join(headers)
        self.origin_allowed = origin_allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        origin = authorization = None
        request_method = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"access-control-request-method":
                request_method = True
        if origin is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and request_method:
            await self._preflight(origin, send)
            return
        refusal = await self.origin_allowed(origin, authorization)
        if refusal is not None:
            await _refuse(refusal, send)
            return
        allow = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", ", ".join(EXPOSED_HEADERS).encode()),
            (b"vary", b"Origin"),
        ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *allow]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, origin: str, send: Send) -> None:
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", self.methods.encode()),
            (b"access-control-allow-headers", self.headers.encode()),
            (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_SECONDS).encode()),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


async def _refuse(message: str, send: Send) -> None:
    body = orjson.dumps({"code": ORIGIN_NOT_ALLOWED, "message": message})
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
