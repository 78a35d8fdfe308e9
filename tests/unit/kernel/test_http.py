"""The kernel's HTTP error discipline on a small FastAPI app: request ids, framework refusals in the
service's shape, dependency outages as 503, our bugs as a logged and counted 500, the body deadline."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response

from services.kernel.errors import KafkaUnavailableError
from services.kernel.http import (
    DEFAULT_MAX_BODY_BYTES,
    BodyReadTimeout,
    HttpError,
    RequestOutcome,
    install_error_handlers,
    request_id_of,
)


class Refused(Exception):
    pass


def make_app(outcomes: list[RequestOutcome], **kw: object) -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    async def ok(request: Request) -> Response:
        return Response(request_id_of(request))

    @app.get("/bug")
    async def bug() -> Response:
        raise RuntimeError("secret internals: password=hunter2")

    @app.get("/refused")
    async def refused() -> Response:
        raise Refused("no")

    @app.get("/http-error")
    async def http_error() -> Response:
        raise HttpError(409, "conflict", "already there", {"X-Extra": "1"})

    @app.get("/db-down")
    async def db_down() -> Response:
        raise PoolTimeout("couldn't get a connection after 5.00 sec")

    @app.get("/db-gone")
    async def db_gone() -> Response:
        raise psycopg.OperationalError("connection refused")

    @app.get("/kafka-down")
    async def kafka_down() -> Response:
        raise KafkaUnavailableError("all brokers down")

    @app.get("/typed/{n}")
    async def typed(n: int) -> Response:
        return Response(str(n))

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body())

    @app.post("/dawdle")
    async def dawdle(request: Request) -> Response:
        async for _chunk in request.stream():
            await asyncio.sleep(10)  # the deadline strikes here, not inside receive
        return Response(b"done")

    install_error_handlers(
        app,
        service="unit",
        errors={Refused: lambda e: HttpError(418, "refused", f"refused: {e}")},
        observe=outcomes.append,
        **kw,  # type: ignore[arg-type]
    )
    return app


@pytest.fixture
def outcomes() -> list[RequestOutcome]:
    return []


@pytest.fixture
def client(outcomes: list[RequestOutcome]) -> TestClient:
    return TestClient(make_app(outcomes), raise_server_exceptions=False)


def test_every_answer_carries_a_request_id_and_a_sane_client_id_is_kept(client: TestClient) -> None:
    fresh = client.get("/ok")
    assert fresh.headers["x-request-id"] == fresh.text
    assert len(fresh.text) == 32
    given = client.get("/ok", headers={"X-Request-Id": "trace-123"})
    assert given.headers["x-request-id"] == given.text == "trace-123"
    hostile = client.get("/ok", headers={"X-Request-Id": "x" * 500})
    assert hostile.text != "x" * 500
    assert hostile.headers["x-request-id"] == hostile.text


def test_a_bug_is_a_500_with_the_request_id_logged_with_its_traceback_and_counted(
    client: TestClient, outcomes: list[RequestOutcome], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="services.kernel.http"):
        response = client.get("/bug", headers={"X-Request-Id": "req-500"})
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "internal_error"
    assert body["request_id"] == "req-500"
    assert "req-500" in body["message"]
    assert "hunter2" not in response.text
    assert response.headers["x-request-id"] == "req-500"
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.request_id == "req-500"
    assert record.exc_info is not None
    assert outcomes[-1].status == 500
    assert outcomes[-1].route == "/bug"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/refused", 418, "refused"),
        ("/http-error", 409, "conflict"),
        ("/db-down", 503, "database_unavailable"),
        ("/db-gone", 503, "database_unavailable"),
        ("/kafka-down", 503, "kafka_unavailable"),
        ("/no/such/route", 404, "not_found"),
        ("/typed/abc", 422, "invalid_parameter"),
    ],
)
def test_known_failures_get_their_status_in_the_service_shape(
    client: TestClient, outcomes: list[RequestOutcome], path: str, status: int, code: str
) -> None:
    response = client.get(path)
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code
    assert body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    if status == 503:
        assert response.headers["retry-after"] == "5"
    assert outcomes[-1].status == status


def test_wrong_method_is_405_with_allow(client: TestClient) -> None:
    response = client.delete("/ok")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]


def test_405_allow_names_the_methods_of_every_route_on_the_path() -> None:
    app = FastAPI()

    @app.get("/config")
    async def get_config() -> Response:
        return Response()

    @app.put("/config")
    async def put_config() -> Response:
        return Response()

    install_error_handlers(app, service="unit")
    response = TestClient(app).delete("/config")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, PUT"


def test_a_custom_error_shape_is_used_everywhere(outcomes: list[RequestOutcome]) -> None:
    app = FastAPI()

    @app.get("/bug")
    async def bug() -> Response:
        raise ValueError("x")

    install_error_handlers(
        app, service="shaped", error_body=lambda s, c, m, r: {"error_code": s, "message": m, "id": r}
    )
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/bug").json()["error_code"] == 500
    assert client.get("/nope").json()["error_code"] == 404


@pytest.mark.parametrize("path", ["/echo", "/dawdle"])
def test_a_body_that_does_not_arrive_in_time_is_408_and_closes_the_connection(
    outcomes: list[RequestOutcome], path: str
) -> None:
    app = make_app(outcomes, body_timeout_seconds=0.2)

    async def run() -> list[dict[str, object]]:
        sent: list[dict[str, object]] = []
        first = True

        async def receive() -> dict[str, object]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"{", "more_body": True}
            await asyncio.sleep(10)  # the rest never comes
            return {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
            "http_version": "1.1",
            "scheme": "http",
            "server": ("test", 80),
            "client": ("test", 1),
            "root_path": "",
        }
        await app(scope, receive, send)  # type: ignore[arg-type]
        return sent

    sent = asyncio.run(run())
    start = sent[0]
    assert start["status"] == 408
    headers = dict(start["headers"])  # type: ignore[arg-type]
    assert headers[b"connection"] == b"close"
    assert b"x-request-id" in headers
    assert b'"request_timeout"' in sent[1]["body"]  # type: ignore[operator]
    assert outcomes[-1].status == 408


def test_the_body_deadline_does_not_touch_a_body_that_arrives(client: TestClient) -> None:
    assert client.post("/echo", content=b"x" * 100_000).content == b"x" * 100_000


def test_body_read_timeout_names_the_limit() -> None:
    assert "2.5 s" in BodyReadTimeout(2.5).message


def _capped_app(limit: int) -> FastAPI:
    app = FastAPI()

    @app.post("/json")
    async def parsed(payload: dict[str, object]) -> Response:  # FastAPI reads and parses the body
        return Response(str(len(payload)))

    @app.post("/raw")
    async def raw(request: Request) -> Response:
        return Response(str(len(await request.body())))

    install_error_handlers(app, service="unit", max_body_bytes=limit)
    return app


def test_a_body_over_the_cap_is_413_whether_declared_or_streamed() -> None:
    client = TestClient(_capped_app(1000))

    assert client.post("/raw", content=b"x" * 1000).text == "1000"
    declared = client.post("/raw", content=b"x" * 1001)
    assert declared.status_code == 413
    assert declared.json()["code"] == "body_too_large"
    assert "1000 bytes" in declared.json()["message"]

    def chunks():  # no Content-Length: counted while it streams, cut off at the cap
        for _ in range(100):
            yield b"x" * 100

    for path in ("/raw", "/json"):  # also through FastAPI's own body parsing, which would say 400
        streamed = client.post(path, content=chunks(), headers={"Content-Type": "application/json"})
        assert (streamed.status_code, streamed.json()["code"]) == (413, "body_too_large"), path


def test_every_service_gets_a_cap_by_default() -> None:
    app = FastAPI()

    @app.post("/raw")
    async def raw(request: Request) -> Response:
        return Response(str(len(await request.body())))

    install_error_handlers(app, service="unit")
    client = TestClient(app)
    assert client.post("/raw", content=b"x" * (DEFAULT_MAX_BODY_BYTES + 1)).status_code == 413
