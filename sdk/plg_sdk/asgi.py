"""``UsageMeter``: meter a Starlette/FastAPI (any ASGI) app's requests as ``api_call_made`` events, and
optionally refuse a request before its handler when the customer is not entitled.

    from fastapi import FastAPI
    from plg_sdk import Client
    from plg_sdk.asgi import UsageMeter
    from plg_sdk.entitlements import Entitlements

    app = FastAPI()
    client = Client("plg_<key-id>_<secret>", host="http://127.0.0.1:8080")
    app.add_middleware(
        UsageMeter,
        client=client,
        user_id=lambda scope: scope.get("state", {}).get("user"),     # optional
        entitlements=Entitlements("http://127.0.0.1:8082"),           # optional: enforce
        customer_id="acme",
        feature="api_requests",
    )

Each request becomes one event ``api_call_made`` with ``endpoint`` (the route template, e.g.
``/v1/items/{item_id}`` — not the raw path, whose ids would explode the cardinality), ``status`` and
``latency_ms`` (the tracking plan's version 2 names), queued through the SDK's client: batched, retried,
kept on disk while ingest is away; the request never waits for ingest. A request the entitlement check
refuses is answered 403 with the structured refusal (``code``, ``upgrade_url``, ``suggested_plan``) and
metered with that status. The check runs in a thread (the SDK's HTTP is blocking) and is cached for its
TTL, so an entitled request costs a dictionary look-up. Standard library only, like the rest of the SDK.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from plg_sdk.client import Client
from plg_sdk.entitlements import Entitlements

log = logging.getLogger("plg_sdk.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EVENT = "api_call_made"
SCHEMA_VERSION = 2  # tracking plan: api_call_made v2 says endpoint/status (v1 said path/status_code)


def _endpoint(scope: Scope) -> str:
    route = scope.get("route")  # Starlette's router leaves the matched route here
    if route is None:
        route = _match(scope)  # refused before routing: find it the way the router would
    template = getattr(route, "path", None) if route is not None else None
    if isinstance(template, str):
        return f"{scope.get('root_path', '')}{template}"
    # No route matched (a 404): the raw path would let any client mint new endpoint values.
    return "(unmatched)"


def _match(scope: Scope) -> Any:
    """The Starlette route ``scope`` fully matches, without importing Starlette (duck-typed)."""
    router = getattr(scope.get("app"), "router", None)
    for route in getattr(router, "routes", ()):
        matches = getattr(route, "matches", None)
        if matches is None:
            continue
        match, _ = matches(scope)
        if getattr(match, "name", "") == "FULL":
            return route
    return None


class UsageMeter:
    """ASGI middleware; see the module docstring. ``customer_id`` and ``feature`` may be callables of the
    scope (a multi-tenant gateway's customer, a per-route feature), returning None to skip the check."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: Client,
        event: str = EVENT,
        user_id: Callable[[Scope], str | None] | None = None,
        entitlements: Entitlements | None = None,
        customer_id: str | Callable[[Scope], str | None] | None = None,
        feature: str | Callable[[Scope], str | None] | None = None,
        skip_paths: Iterable[str] = ("/livez", "/readyz", "/metrics", "/healthz"),
    ) -> None:
        if entitlements is not None and (customer_id is None or feature is None):
            raise ValueError("UsageMeter: enforcing entitlements needs customer_id and feature")
        self.app = app
        self.client = client
        self.event = event
        self.user_id = user_id
        self.entitlements = entitlements
        self.customer_id = customer_id
        self.feature = feature
        self.skip_paths = frozenset(skip_paths)

    @staticmethod
    def _value(option: str | Callable[[Scope], str | None] | None, scope: Scope) -> str | None:
        return option(scope) if callable(option) else option

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.skip_paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees when the app raises before answering
        refused = await self._refusal(scope)
        if refused is not None:
            status = 403
            body = json.dumps(refused).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            self._meter(scope, status, started)
            return

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self._meter(scope, status, started)

    async def _refusal(self, scope: Scope) -> dict[str, Any] | None:
        if self.entitlements is None:
            return None
        customer = self._value(self.customer_id, scope)
        feature = self._value(self.feature, scope)
        if not customer or not feature:
            return None
        answer = self.entitlements.peek(customer, feature)
        if answer is None:  # not cached: ask off the event loop (the SDK's HTTP blocks)
            answer = await asyncio.to_thread(self.entitlements.check, customer, feature)
        return None if answer.allowed else answer.refusal()

    def _meter(self, scope: Scope, status: int, started: float) -> None:
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        properties: dict[str, str | int | float] = {
            "endpoint": _endpoint(scope),
            "status": status,
            "latency_ms": latency_ms,
            "schema_version": SCHEMA_VERSION,
        }
        try:
            user = self.user_id(scope) if self.user_id is not None else None
            self.client.track(self.event, properties, user_id=user)
        except Exception:  # metering must never fail the request it measures
            log.exception("could not meter a request")
