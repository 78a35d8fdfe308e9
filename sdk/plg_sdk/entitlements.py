"""Entitlement checks for servers: ``GET /v1/entitlements/{customer}/{feature}`` of the entitlements service,
cached for a TTL, answered from the last-known state (or a configured fallback) while the service cannot be
reached, with the structured refusal (``code``, ``upgrade_url``, ``suggested_plan``) as a typed result. The
same behaviour as the browser SDK's ``plg.entitlements.check``. Standard library only.

    ents = Entitlements("http://127.0.0.1:8082", fallback={"sso": False})
    e = ents.check("acme", "sso")
    if not e.allowed and e.upgrade:
        return redirect(e.upgrade.upgrade_url)
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

log = logging.getLogger("plg_sdk.entitlements")

Source = Literal["live", "cache", "stale", "fallback"]


@dataclass(frozen=True, slots=True)
class Upgrade:
    """Why a feature is refused and where to go: ``usage_limit_exceeded`` or ``feature_not_in_plan``."""

    code: str
    upgrade_url: str
    suggested_plan: str | None


@dataclass(frozen=True, slots=True)
class Entitlement:
    """One answer. ``source``: live (just asked), cache (within the TTL), stale (last-known, the service
    unreachable), fallback (never known). ``error`` is set when the service refused the question itself
    (unknown customer or feature): ``(status, code, message)``."""

    customer_id: str
    feature: str
    allowed: bool
    source: Source
    upgrade: Upgrade | None = None
    usage: float | None = None
    limit: float | None = None
    remaining: float | None = None
    plan: str | None = None
    error: tuple[int, str, str] | None = None

    def refusal(self) -> dict[str, Any]:
        """The structured refusal as JSON for an API's 403 (what UsageMeter answers)."""
        body: dict[str, Any] = {
            "code": self.upgrade.code if self.upgrade else "not_entitled",
            "message": f"{self.feature} is not available to {self.customer_id} now",
            "feature": self.feature,
        }
        if self.upgrade is not None:
            body["upgrade_url"] = self.upgrade.upgrade_url
            body["suggested_plan"] = self.upgrade.suggested_plan
        return body


class Entitlements:
    """Thread-safe client with a per-(customer, feature) cache. Never raises for the service's state."""

    def __init__(
        self,
        host: str = "http://127.0.0.1:8082",
        *,
        api_key: str | None = None,
        ttl: float = 60.0,
        timeout: float = 1.0,
        fallback: bool | Mapping[str, bool] = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = urllib.parse.urlsplit(host.rstrip("/"))
        self.api_key = api_key
        self.ttl = ttl
        self.timeout = timeout
        self.fallback = fallback
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Entitlement]] = {}
        self._lock = threading.Lock()

    def _fallback(
        self, customer_id: str, feature: str, error: tuple[int, str, str] | None = None
    ) -> Entitlement:
        f = self.fallback
        allowed = f if isinstance(f, bool) else f.get(feature, True)
        return Entitlement(customer_id, feature, allowed, "fallback", error=error)

    def peek(self, customer_id: str, feature: str) -> Entitlement | None:
        """The cached answer within the TTL, without asking; None when there is none."""
        with self._lock:
            hit = self._cache.get((customer_id, feature))
        if hit and self._clock() - hit[0] < self.ttl:
            return replace(hit[1], source="cache")
        return None

    def check(self, customer_id: str, feature: str) -> Entitlement:
        cached = self.peek(customer_id, feature)
        if cached is not None:
            return cached
        try:
            status, body = self._get(customer_id, feature)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.debug("entitlements unreachable, answering the last-known state: %s", exc)
            return self._last_known(customer_id, feature)
        if status == 200 and isinstance(body, dict):
            upgrade = body.get("upgrade")
            answer = Entitlement(
                customer_id,
                feature,
                body.get("allowed") is True,
                "live",
                Upgrade(upgrade["code"], upgrade["upgrade_url"], upgrade.get("suggested_plan"))
                if isinstance(upgrade, dict)
                else None,
                body.get("usage"),
                body.get("limit"),
                body.get("remaining"),
                body.get("plan"),
            )
            with self._lock:
                self._cache[(customer_id, feature)] = (self._clock(), answer)
            return answer
        if 400 <= status < 500 and status not in (408, 429):
            b = body if isinstance(body, dict) else {}
            return self._fallback(customer_id, feature, (status, str(b.get("code")), str(b.get("message"))))
        return self._last_known(customer_id, feature)

    def _last_known(self, customer_id: str, feature: str) -> Entitlement:
        with self._lock:
            hit = self._cache.get((customer_id, feature))
        return replace(hit[1], source="stale") if hit else self._fallback(customer_id, feature)

    def _get(self, customer_id: str, feature: str) -> tuple[int, Any]:
        cls = http.client.HTTPSConnection if self._base.scheme == "https" else http.client.HTTPConnection
        conn = cls(self._base.hostname or "127.0.0.1", self._base.port, timeout=self.timeout)
        path = (
            f"{self._base.path}/v1/entitlements/{urllib.parse.quote(customer_id, safe='')}/"
            f"{urllib.parse.quote(feature, safe='')}"
        )
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
