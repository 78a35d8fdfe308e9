"""HTTP error discipline every plg API installs with one call: ``install_error_handlers(app, service=...)``.

The rule (DEVELOPERS.md): bad input gets a precise 4xx, never a 500; a 500 means a bug of ours. So, for
every request of a FastAPI/Starlette app, this module

* gives it a **request id** — the client's ``X-Request-Id`` when it is sane, else a fresh one — readable as
  ``request.state.request_id`` and sent back in the ``X-Request-Id`` header of every answer;
* caps the **body size** (``max_body_bytes``, 1 MiB unless the service says otherwise): a declared
  ``Content-Length`` over it is answered 413 before anything is read, and a body that grows past it while
  streaming (chunked, or lying about its length) is cut off there with the same 413 — no service reads an
  unbounded body whole;
* bounds the **body read**: a body that has not fully arrived ``body_timeout_seconds`` after the app first
  asked for it is answered 408 and the connection closed (otherwise one client trickling bytes holds a
  connection and its buffers for as long as it likes — "slowloris");
* answers the framework's own refusals (404 no such route, 405 wrong method, 422 bad path/query parameter)
  in the service's error shape instead of Starlette's ``{"detail": ...}``;
* answers 503 with ``Retry-After`` when a dependency is down (PostgreSQL pool exhausted or unreachable,
  Kafka or the schema registry unavailable): retriable, and not the client's fault;
* maps the service's own exceptions through ``errors`` (exception type → :class:`HttpError`);
* and turns **anything else** into a 500 that is logged with its traceback and the request id, carries
  the request id in its body (never the exception text: it may hold internals), and is reported to
  ``observe`` like every other answer, so the service's request metrics count it.

The middleware is plain ASGI (no ``BaseHTTPMiddleware``): a few microseconds per request, nothing per
event. Install it last in ``build_app`` so it wraps everything else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import orjson
import psycopg
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.kernel import metrics
from services.kernel.errors import KafkaUnavailableError, SchemaRegistryUnavailableError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
MAX_REQUEST_ID_CHARS = 128
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0
DEFAULT_RETRY_AFTER_SECONDS = 5
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

# Codes of the answers this module writes itself (services may use them too).
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
INVALID_PARAMETER = "invalid_parameter"
REQUEST_TIMEOUT = "request_timeout"
CLIENT_DISCONNECTED = "client_disconnected"
DATABASE_UNAVAILABLE = "database_unavailable"
KAFKA_UNAVAILABLE = "kafka_unavailable"
REGISTRY_UNAVAILABLE = "schema_registry_unavailable"
INTERNAL_ERROR = "internal_error"
INVALID_INPUT = "invalid_input"
BODY_TOO_LARGE = "body_too_large"

_HTTP_CODES = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED, 408: REQUEST_TIMEOUT}


class HttpError(Exception):
    """A refusal with its status, machine-readable code and message; raise it anywhere in a request."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


R = TypeVar("R")


def resources_dependency(
    kind: type[R], message: str, code: str = "service_unavailable"
) -> Callable[[Request], Awaitable[R]]:
    """The FastAPI dependency through which a service's routes receive its running resources (``kind``,
    put on ``app.state.resources`` by the lifespan once opened): 503 ``code`` with ``Retry-After`` while
    the service starts or stops (``message`` says so)."""

    async def resources(request: Request) -> R:
        found = getattr(request.app.state, "resources", None)
        if found is None:
            raise HttpError(503, code, message, {"Retry-After": "1"})
        return cast(R, found)

    return resources


class BodyReadTimeout(HttpError):
    """The request body did not arrive in time (raised from ``receive``)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            408,
            REQUEST_TIMEOUT,
            f"the request body did not arrive within {timeout:g} s; send the whole body at once",
            {"Connection": "close"},
        )


class BodyTooLarge(HttpError, HTTPException):  # type: ignore[misc]  # headers: a dict is a Mapping
    """The request body is over the service's cap (raised before reading, or from ``receive``).

    Also an ``HTTPException`` so that FastAPI's body parsing, which turns any other error while reading
    into a 400 "error parsing the body", lets it through.
    """

    def __init__(self, limit: int) -> None:
        HttpError.__init__(
            self,
            413,
            BODY_TOO_LARGE,
            f"the request body is over {limit} bytes, the most this API takes; send less per request",
            {"Connection": "close"},
        )
        self.status_code = 413
        self.detail = self.message


def _capped(receive: Receive, limit: int) -> Receive:
    """``receive`` that counts the body's bytes as they arrive and stops at ``limit``."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return capped


def _declared_length(headers: Any) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


#: ``(status, code, message, request_id) -> JSON body``: the service's error shape.
ErrorBody = Callable[[int, str, str, str], Any]
#: Exception → the answer; services map their own domain exceptions with these.
ErrorMapper = Callable[[Any], HttpError]


def plg_error_body(status: int, code: str, message: str, request_id: str) -> dict[str, Any]:
    """The shape of plg's own APIs: ``{"code", "message", "request_id"}``."""
    return {"code": code, "message": message, "request_id": request_id}


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """One answered request, as ``observe`` sees it. ``route`` is the matched route's template
    (``/subjects/{subject}/versions``), or None when no route matched (a 404)."""

    method: str
    path: str
    route: str | None
    status: int
    seconds: float


Observe = Callable[[RequestOutcome], None]

# Every HTTP service's answer time by route template (low cardinality: no ids), for the latency panels
# (e.g. the entitlement check's p99 in deploy/grafana). Unmatched paths share one label.
REQUEST_SECONDS = metrics.histogram(
    "plg_http_request_seconds",
    "Time to answer an HTTP request, by service, route template and status class (2xx, 4xx, 5xx).",
    ("service", "route", "status"),
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def _timed(service: str, observe: Observe | None) -> Observe:
    def record(outcome: RequestOutcome) -> None:
        route = outcome.route or "unmatched"
        REQUEST_SECONDS.labels(service, route, f"{outcome.status // 100}xx").observe(outcome.seconds)
        if observe is not None:
            observe(outcome)

    return record


def request_id_of(request: Request) -> str:
    """The request id the middleware gave this request (a fresh one if it is not installed)."""
    state = request.scope.get("state")
    if isinstance(state, dict):
        rid = state.get("request_id")
        if isinstance(rid, str):
            return rid
    return _request_id_from(request.scope.get("headers", ()))


def _request_id_from(headers: Any) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            given: str = value.decode("latin-1")
            # Echoed into logs and headers: only short printable ASCII is taken as it is.
            if 0 < len(given) <= MAX_REQUEST_ID_CHARS and given.isascii() and given.isprintable():
                return given
            break
    # 128 random bits as 32 hex digits, like uuid4().hex at a fifth of its cost.
    return os.urandom(16).hex()


def _unavailable(code: str, what: str) -> Callable[[Exception], HttpError]:
    def mapper(_exc: Exception) -> HttpError:
        return HttpError(
            503,
            code,
            f"{what} is unavailable right now; nothing was changed, retry in {DEFAULT_RETRY_AFTER_SECONDS} s",
            {"Retry-After": str(DEFAULT_RETRY_AFTER_SECONDS)},
        )

    return mapper


def _invalid_input(exc: Exception) -> HttpError:
    # PostgreSQL refused a value from the request (U+0000 in text, an out-of-range number, bad
    # encoding): the input's fault. Services that can tell which parameter should check it first.
    first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return HttpError(400, INVALID_INPUT, f"the request holds a value the database cannot take: {first_line}")


def _client_disconnected(_exc: Exception) -> HttpError:
    # Nobody reads this answer; it exists so the request is counted as the client's doing, not ours.
    return HttpError(400, CLIENT_DISCONNECTED, "the client closed the connection before sending the body")


def _http_exception(exc: HTTPException) -> HttpError:
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return HttpError(status, _HTTP_CODES.get(status, f"http_{status}"), detail, exc.headers)


#: Dependency outages every service maps the same way (services may override with ``errors``).
DEFAULT_ERRORS: Mapping[type[BaseException], ErrorMapper] = {
    ClientDisconnect: _client_disconnected,
    PoolTimeout: _unavailable(DATABASE_UNAVAILABLE, "the database"),
    psycopg.OperationalError: _unavailable(DATABASE_UNAVAILABLE, "the database"),
    psycopg.DataError: _invalid_input,
    KafkaUnavailableError: _unavailable(KAFKA_UNAVAILABLE, "Kafka"),
    SchemaRegistryUnavailableError: _unavailable(REGISTRY_UNAVAILABLE, "the schema registry"),
    HTTPException: _http_exception,
}


@dataclass
class _Config:
    service: str
    error_body: ErrorBody
    media_type: str
    observe: Observe | None
    body_timeout: float | None
    max_body: int | None = DEFAULT_MAX_BODY_BYTES
    errors: dict[type[BaseException], ErrorMapper] = field(default_factory=dict)

    def mapped(self, exc: BaseException) -> HttpError | None:
        exact = self.errors.get(type(exc))  # a service may reshape even the kernel's own (BodyTooLarge)
        if exact is not None:
            return exact(exc)
        if isinstance(exc, HttpError):
            return exc
        for cls in type(exc).__mro__:
            mapper = self.errors.get(cls)
            if mapper is not None:
                return mapper(exc)
        return None

    def response(self, error: HttpError, request_id: str) -> Response:
        body = orjson.dumps(self.error_body(error.status, error.code, error.message, request_id))
        return Response(body, status_code=error.status, media_type=self.media_type, headers=error.headers)


class _Sweeper:
    """Every open body deadline of one event loop, checked by one timer a few times per timeout: a timer
    per request (``call_later``) cost ~5 µs per request on uvloop, this costs a dict insert and delete."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.pending: dict[_BodyDeadline, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    def add(self, deadline: _BodyDeadline, at: float) -> None:
        self.pending[deadline] = at
        if self.timer is None:
            self.timer = self.loop.call_later(self.interval, self.sweep)

    def sweep(self) -> None:
        now = time.monotonic()
        overdue = [d for d, at in self.pending.items() if at <= now]
        for deadline in overdue:
            del self.pending[deadline]
            deadline.fire()
        self.timer = self.loop.call_later(self.interval, self.sweep) if self.pending else None


class _BodyDeadline:
    """``receive`` with one deadline for the whole body, counted from the app's first read; messages after
    the body (the wait for ``http.disconnect``) are not timed. When the deadline passes while the body is
    still incomplete, the request's task is cancelled and the cancellation turned into
    :class:`BodyReadTimeout` where it lands."""

    __slots__ = ("_receive", "_sweepers", "_task", "done", "fired", "timeout")

    def __init__(self, receive: Receive, timeout: float, sweepers: dict[Any, _Sweeper]) -> None:
        self._receive = receive
        self.timeout = timeout
        self._sweepers = sweepers
        self._task: asyncio.Task[Any] | None = None
        self.done = False
        self.fired = False

    async def __call__(self) -> Message:
        if self.done:
            return await self._receive()
        if self._task is None:
            self._task = asyncio.current_task()
            self._sweeper().add(self, time.monotonic() + self.timeout)
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if self.fired:
                self.absorb()
                raise BodyReadTimeout(self.timeout) from None
            raise
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.finish()
        return message

    def _sweeper(self) -> _Sweeper:
        loop = asyncio.get_running_loop()
        sweeper = self._sweepers.get(loop)
        if sweeper is None:
            for old in [lp for lp in self._sweepers if lp.is_closed()]:
                del self._sweepers[old]
            sweeper = self._sweepers[loop] = _Sweeper(loop, min(1.0, self.timeout / 4))
        return sweeper

    def fire(self) -> None:
        if not self.done and self._task is not None:
            self.fired = True
            self._task.cancel()

    def absorb(self) -> None:
        """The cancellation was ours: the task goes on (to answer 408)."""
        self.done = True
        if self._task is not None:
            self._task.uncancel()

    def finish(self) -> None:
        if not self.done:
            self.done = True
            if self._task is not None:
                sweeper = self._sweepers.get(asyncio.get_running_loop())
                if sweeper is not None:
                    sweeper.pending.pop(self, None)


class ErrorDisciplineMiddleware:
    """The ASGI middleware :func:`install_error_handlers` adds (see the module docstring)."""

    def __init__(self, app: ASGIApp, config: _Config) -> None:
        self.app = app
        self.config = config
        self._sweepers: dict[Any, _Sweeper] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        config = self.config
        started = time.perf_counter()
        request_id = _request_id_from(scope["headers"])
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode())
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        deadline = None
        if config.body_timeout is not None:
            receive = deadline = _BodyDeadline(receive, config.body_timeout, self._sweepers)
        app_receive = receive
        if config.max_body is not None:
            app_receive = _capped(receive, config.max_body)
        try:
            try:
                if config.max_body is not None:
                    declared = _declared_length(scope["headers"])
                    if declared is not None and declared > config.max_body:
                        raise BodyTooLarge(config.max_body)  # refused before a byte is read
                await self.app(scope, app_receive, send_with_id)
            except asyncio.CancelledError:
                if deadline is None or not deadline.fired or deadline.done:
                    raise
                # The deadline struck while the app awaited something else than the body.
                deadline.absorb()
                raise BodyReadTimeout(deadline.timeout) from None
            finally:
                if deadline is not None:
                    deadline.finish()
        except Exception as exc:
            error = config.mapped(exc)
            if status:
                # The answer has begun: nothing more can be said to the client; the server drops the
                # connection when we return.
                log.exception(
                    "error after the answer started",
                    extra={"service": config.service, "request_id": request_id, "path": scope.get("path")},
                )
            elif error is not None:
                if error.status >= 500:
                    log.warning(
                        "answering %s: %s",
                        error.status,
                        error.code,
                        extra={"service": config.service, "request_id": request_id, "error": repr(exc)},
                    )
                await config.response(error, request_id)(scope, receive, send_with_id)
            else:
                log.error(
                    "unhandled error answering %s %s",
                    scope.get("method"),
                    scope.get("path"),
                    exc_info=exc,
                    extra={"service": config.service, "request_id": request_id},
                )
                internal = HttpError(
                    500,
                    INTERNAL_ERROR,
                    f"internal error in {config.service}: this is a bug of ours, not your request's; it was "
                    f"logged with request id {request_id} (quote it when you report it)",
                )
                await config.response(internal, request_id)(scope, receive, send_with_id)
        finally:
            if config.observe is not None:
                route = scope.get("route")
                outcome = RequestOutcome(
                    scope.get("method", ""),
                    scope.get("path", ""),
                    getattr(route, "path", None),
                    status or 500,
                    time.perf_counter() - started,
                )
                try:
                    config.observe(outcome)
                except Exception:
                    log.exception("observing a request failed", extra={"service": config.service})


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path. Starlette's 405 names only the first route that
    matched the path, so with ``@app.get`` and ``@app.put`` on one path it answered ``Allow: GET``."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


def install_error_handlers(
    app: Any,
    *,
    service: str,
    error_body: ErrorBody = plg_error_body,
    media_type: str = "application/json",
    errors: Mapping[type[BaseException], ErrorMapper] | None = None,
    observe: Observe | None = None,
    body_timeout_seconds: float | None = DEFAULT_BODY_TIMEOUT_SECONDS,
    max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
) -> None:
    """Install plg's HTTP error discipline on a FastAPI/Starlette ``app`` (before it starts).

    ``error_body`` shapes every error this installs (plg's ``{"code", "message", "request_id"}`` unless the
    API has its own, like the registry's Confluent ``{"error_code", "message"}``); ``errors`` maps the
    service's exceptions to answers (added to, and overriding, :data:`DEFAULT_ERRORS`); ``observe`` is
    called once per answered request, 500s included (request metrics); ``body_timeout_seconds=None``
    turns the body deadline off; ``max_body_bytes`` caps every request body (413 ``body_too_large``), a
    service that takes more says so (the registry: ``REGISTRY_MAX_REQUEST_BYTES``).
    """
    config = _Config(
        service=service,
        error_body=error_body,
        media_type=media_type,
        observe=_timed(service, observe),
        body_timeout=body_timeout_seconds,
        max_body=max_body_bytes,
        errors={**DEFAULT_ERRORS, **(errors or {})},
    )

    async def framework_error(request: Request, exc: Exception) -> Response:
        error = config.mapped(exc)
        assert error is not None
        if error.status == 405:
            error.headers["Allow"] = _allowed_methods(request)
        return config.response(error, request_id_of(request))

    # Raised inside the router, these reach Starlette's ExceptionMiddleware before ours: answer there.
    app.add_exception_handler(HTTPException, framework_error)
    try:
        from fastapi.exceptions import RequestValidationError
    except ImportError:  # pragma: no cover - a plain Starlette app
        pass
    else:

        def validation_error(exc: RequestValidationError) -> HttpError:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()[:5]
            )
            return HttpError(422, INVALID_PARAMETER, f"invalid request parameters: {problems}"[:1000])

        config.errors[RequestValidationError] = validation_error
        app.add_exception_handler(RequestValidationError, framework_error)
    app.add_middleware(ErrorDisciplineMiddleware, config=config)
    if hasattr(app, "openapi"):
        # The 401/403 every credentialed route can answer, in its OpenAPI entry (auth imports this module).
        from services.kernel.auth import document_refusals

        document_refusals(app)


__all__ = [
    "DEFAULT_ERRORS",
    "REQUEST_ID_HEADER",
    "BodyReadTimeout",
    "BodyTooLarge",
    "ErrorBody",
    "ErrorDisciplineMiddleware",
    "ErrorMapper",
    "HttpError",
    "Observe",
    "RequestOutcome",
    "install_error_handlers",
    "plg_error_body",
    "request_id_of",
]
