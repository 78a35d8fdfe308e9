"""Growth for apps: feature flags evaluated locally (the growth service's definitions, kept fresh by its SSE
stream with ETag polling as the fallback), and onboarding/activation calls that never break the app.

    flags = FlagsClient("http://127.0.0.1:8085")
    flags.wait_ready(2.0)
    if flags.is_enabled("new_dashboard", {"user_id": "u-42", "plan": "pro"}):
        ...
    step = Onboarding("http://127.0.0.1:8085").next_step("acme", "u-42")   # None when the service is down

Evaluation is the same engine as the service's (:mod:`plg_sdk.flags`): pure, local, no network per call.
Standard library only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import threading
import urllib.parse
from collections.abc import Mapping, MutableMapping
from typing import Any

from plg_sdk.flags import ERROR, Evaluation, FlagConfigError, FlagSet, compile_document

log = logging.getLogger("plg_sdk.growth")

PROVIDER_NOT_READY = "PROVIDER_NOT_READY"
USER_AGENT = "plg-sdk-python-growth/0.1.0"


def _connection(base: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
    cls = http.client.HTTPSConnection if base.scheme == "https" else http.client.HTTPConnection
    return cls(base.hostname or "127.0.0.1", base.port, timeout=timeout)


class FlagsClient:
    """Local flag evaluation kept in step with the growth service.

    A background thread follows ``GET /v1/flags/stream`` (a change reaches the app within a second); when
    the stream cannot be opened it polls ``GET /v1/flags`` with ``If-None-Match`` every ``poll_interval``
    seconds (a 304 costs no body) and tries the stream again. Until the first document arrives every
    evaluation answers the caller's default with error ``PROVIDER_NOT_READY`` — unless ``bootstrap`` (a
    flags document, e.g. saved from an earlier run) was given. Sticky assignments live in ``sticky`` (a
    dict by default: pass a persistent mapping to keep them across restarts). ``api_key`` is the app's
    plg key: a publishable one (``plgpk_...``) in browsers and apps, a secret one on servers.
    """

    def __init__(
        self,
        host: str = "http://127.0.0.1:8085",
        *,
        api_key: str | None = None,
        stream: bool = True,
        poll_interval: float = 30.0,
        timeout: float = 5.0,
        sticky: MutableMapping[str, str] | None = None,
        bootstrap: Mapping[str, Any] | None = None,
        start: bool = True,
    ) -> None:
        self._base = urllib.parse.urlsplit(host.rstrip("/"))
        self._auth = _authorization(api_key)
        self.stream = stream
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.sticky: MutableMapping[str, str] = sticky if sticky is not None else {}
        self.flags: FlagSet | None = None
        self.revision: int | None = None
        self.etag: str | None = None
        self.ready = threading.Event()
        self.updates = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plg-flags", daemon=True)
        if bootstrap is not None:
            self._load(bootstrap)
        if start:
            self._thread.start()

    # -- evaluation (local) -----------------------------------------------------------------------------

    def evaluate(
        self, key: str, context: Mapping[str, Any], default: Any = None, expected_type: str | None = None
    ) -> Evaluation:
        flags = self.flags
        if flags is None:
            return Evaluation(key, default, None, ERROR, PROVIDER_NOT_READY, "no flags loaded yet")
        return flags.evaluate(key, context, default, expected_type=expected_type, sticky=self.sticky)

    def is_enabled(self, key: str, context: Mapping[str, Any], default: bool = False) -> bool:
        return self.evaluate(key, context, default, "boolean").value is True

    def variant(self, key: str, context: Mapping[str, Any]) -> str | None:
        return self.evaluate(key, context).variant

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    # -- keeping the definitions fresh --------------------------------------------------------------------

    def _load(self, document: Mapping[str, Any]) -> None:
        try:
            flags = compile_document(
                document, source="growth service", revision=str(document.get("revision"))
            )
        except FlagConfigError as exc:  # keep the last good set rather than lose every flag
            log.error("flags document refused: %s", exc)
            return
        self.flags = flags
        self.revision = document.get("revision")
        self.updates += 1
        self.ready.set()

    def refresh(self) -> bool:
        """One ``GET /v1/flags`` (conditional); True when a new document was loaded."""
        conn = _connection(self._base, self.timeout)
        try:
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **self._auth}
            if self.etag:
                headers["If-None-Match"] = self.etag
            conn.request("GET", f"{self._base.path}/v1/flags", headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status == 304:
                return False
            if response.status != 200:
                raise OSError(f"GET /v1/flags answered {response.status}")
            self.etag = response.getheader("ETag")
            self._load(json.loads(body))
            return True
        finally:
            conn.close()

    def _follow_stream(self) -> None:
        """Read the SSE stream until it ends, the thread stops, or an error (raised)."""
        conn = _connection(self._base, max(self.timeout, 60.0))  # heartbeats come every 15 s
        try:
            conn.request(
                "GET",
                f"{self._base.path}/v1/flags/stream",
                headers={"User-Agent": USER_AGENT, "Accept": "text/event-stream", **self._auth},
            )
            response = conn.getresponse()
            if response.status != 200:
                raise OSError(f"GET /v1/flags/stream answered {response.status}")
            event, data = "message", []
            while not self._stop.is_set():
                raw = response.readline()
                if not raw:
                    return  # the server closed the stream
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "":
                    if data and event == "flags":
                        self._load(json.loads("\n".join(data)))
                    event, data = "message", []
        finally:
            conn.close()

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                if self.stream:
                    self._follow_stream()
                    delay = 0.5
                    continue
                self.refresh()
                delay = 0.5
                self._stop.wait(self.poll_interval)
                continue
            except (OSError, http.client.HTTPException, ValueError) as exc:
                log.debug("flags update failed: %s", exc)
            # The stream failed: poll once (the document may still be reachable), back off, try again.
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                self.refresh()
            self._stop.wait(delay * random.uniform(0.8, 1.2))
            delay = min(self.poll_interval, delay * 2)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


def _authorization(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Onboarding:
    """The onboarding and activation endpoints, made safe for the product: every call has a short timeout
    and any failure (service down, slow, an error answer) is "no step" / ``None`` / ``False``, logged at
    debug level. If the engine fails, the product stays usable. ``api_key``: the customer's key (either
    kind); its customer must be the one the calls name."""

    def __init__(
        self, host: str = "http://127.0.0.1:8085", *, api_key: str | None = None, timeout: float = 0.5
    ) -> None:
        self._base = urllib.parse.urlsplit(host.rstrip("/"))
        self._auth = _authorization(api_key)
        self.timeout = timeout

    def _call(self, method: str, path: str, query: Mapping[str, str | None] | None = None) -> Any:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        url = f"{self._base.path}{path}" + (f"?{urllib.parse.urlencode(q)}" if q else "")
        conn = _connection(self._base, self.timeout)
        try:
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **self._auth}
            conn.request(method, url, headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status >= 300:
                raise OSError(f"{method} {path} answered {response.status}")
            return json.loads(body)
        finally:
            conn.close()

    def _safe(self, method: str, path: str, query: Mapping[str, str | None] | None = None) -> Any:
        try:
            return self._call(method, path, query)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.debug("growth call failed, answering the fallback: %s", exc)
            return None

    @staticmethod
    def _ids(customer: str, person: str) -> str:
        return f"{urllib.parse.quote(customer, safe='')}/{urllib.parse.quote(person, safe='')}"

    def next_step(self, customer: str, person: str, intent: str | None = None) -> dict[str, Any] | None:
        """The recommended step (``{"id", "title", "intent", "priority"}``) or None: none left, or the
        service is unreachable."""
        body = self._safe("GET", f"/v1/onboarding/{self._ids(customer, person)}/next", {"intent": intent})
        step = body.get("step") if isinstance(body, dict) else None
        return step if isinstance(step, dict) else None

    def complete_step(self, customer: str, person: str, step_id: str) -> bool:
        """Record a step (idempotent); False when it could not be recorded now (call again later)."""
        step = urllib.parse.quote(step_id, safe="")
        path = f"/v1/onboarding/{self._ids(customer, person)}/steps/{step}/complete"
        return self._safe("POST", path) is not None

    def activation(self, customer: str, person: str) -> dict[str, Any] | None:
        body = self._safe("GET", f"/v1/activation/{self._ids(customer, person)}")
        return body if isinstance(body, dict) else None

    def show_upgrade_prompt(self, customer: str, person: str) -> bool:
        status = self.activation(customer, person)
        return bool(status and status.get("show_upgrade_prompt"))
