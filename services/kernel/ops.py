"""Operations endpoints every service exposes: ``/metrics``, ``/livez``, ``/readyz``.

* ``/metrics`` — Prometheus text exposition (the default registry unless another is given).
* ``/livez`` — 200 while the process serves requests at all; a failing liveness probe restarts the pod,
  so it checks nothing else.
* ``/readyz`` — 200 ``{"status": "ready"}`` when every readiness check passes, else 503 with the failing
  ones: ``{"status": "not ready", "failing": ["kafka", ...]}``. A check is a ``() -> bool``; one that
  raises counts as failing (and is logged). Checks should be cheap and non-blocking: read a flag that the
  service's own loop keeps up to date rather than calling the broker per probe. *Degraded* checks name a
  dependency the service can serve without for a while (ingest's PostgreSQL, its keys cached): a failing
  one is listed, ``"degraded": ["database"]``, and leaves the answer 200 — readiness says whether to send
  the service traffic, and a degraded service still takes it.

:class:`OpsServer` serves them on its own port from a small threaded HTTP server, for services without an
HTTP app (consumers/workers). :func:`ops_routes` mounts the same three endpoints on a FastAPI/Starlette
app.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from services.kernel.auth import declare, public
from services.kernel.metrics import render

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], bool]


def failing_checks(readiness: Mapping[str, ReadinessCheck]) -> list[str]:
    """Names of the checks that return false or raise."""
    failing = []
    for name, check in readiness.items():
        try:
            ok = bool(check())
        except Exception:
            log.warning("readiness check raised", extra={"check": name}, exc_info=True)
            ok = False
        if not ok:
            failing.append(name)
    return failing


def readiness_response(
    readiness: Mapping[str, ReadinessCheck], degraded: Mapping[str, ReadinessCheck] | None = None
) -> tuple[int, bytes]:
    failing = failing_checks(readiness)
    body: dict[str, Any] = {"status": "not ready", "failing": failing} if failing else {"status": "ready"}
    impaired = failing_checks(degraded) if degraded else []
    if impaired:
        body["degraded"] = impaired
    return (503 if failing else 200), json.dumps(body).encode()


class OpsServer:
    """Threaded HTTP server for the ops endpoints. ``port=0`` picks a free port (see ``.port``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9100,
        readiness: Mapping[str, ReadinessCheck] | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.readiness: dict[str, ReadinessCheck] = dict(readiness or {})
        self.registry = registry
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self.readiness[name] = check

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "plg-ops"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, content_type = render(ops.registry)
                    self._send(200, body, content_type)
                elif path == "/livez":
                    self._send(200, b'{"status": "alive"}', "application/json")
                elif path == "/readyz":
                    status, body = readiness_response(ops.readiness)
                    self._send(status, body, "application/json")
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                # Probes hit these endpoints every few seconds; access logs would drown the service's own.
                pass

        return Handler

    def start(self) -> OpsServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="ops-http", daemon=True
            )
            self._thread.start()
            log.info("ops endpoints listening", extra={"url": self.url})
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> OpsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def ops_routes(
    app: Any,
    readiness: Mapping[str, ReadinessCheck] | None = None,
    registry: CollectorRegistry = REGISTRY,
    degraded: Mapping[str, ReadinessCheck] | None = None,
) -> None:
    """Add ``/metrics``, ``/livez`` and ``/readyz`` to a FastAPI or Starlette app (or router); ``degraded``
    checks are reported in ``/readyz`` without making it fail.

    Checks run in the thread pool, so a slow one never blocks the event loop.
    """
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response

    checks: Mapping[str, ReadinessCheck] = readiness if readiness is not None else {}

    async def metrics_endpoint(_request: Request) -> Response:
        body, content_type = render(registry)
        return Response(body, media_type=content_type)

    async def livez(_request: Request) -> Response:
        return Response(b'{"status": "alive"}', media_type="application/json")

    async def readyz(_request: Request) -> Response:
        status, body = await run_in_threadpool(readiness_response, checks, degraded)
        return Response(body, status_code=status, media_type="application/json")

    # Public on purpose: probes and Prometheus scrape without credentials; keep the port off the internet.
    for endpoint in (metrics_endpoint, livez, readyz):
        declare(endpoint, public("operations endpoint (probes, Prometheus)"))
    app.add_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    app.add_route("/livez", livez, methods=["GET"], include_in_schema=False)
    app.add_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
