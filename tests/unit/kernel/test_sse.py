"""The kernel's server-sent events: retry and first message at once, keep-alives, items rendered, the
stream's slot and subscription released when the client goes, and limits per credential and overall."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request

from services.kernel.http import HttpError, install_error_handlers
from services.kernel.sse import StreamLimits, event, event_stream


def _request(authorization: str | None = None, client: str = "10.0.0.1", *, gone: asyncio.Event) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization else []

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "headers": headers, "client": (client, 1234)}, receive)


def test_limits_per_credential_and_overall_answer_503_with_retry_after() -> None:
    limits = StreamLimits("flags", per_key=2, total=3, retry_after_seconds=7)
    gone = asyncio.Event()
    ann, bob = _request("Bearer ann", gone=gone), _request("Bearer bob", gone=gone)

    first, _second = limits.acquire(ann), limits.acquire(ann)
    with pytest.raises(HttpError) as per_key:
        limits.acquire(ann)
    limits.acquire(bob)
    with pytest.raises(HttpError) as overall:
        limits.acquire(_request("Bearer cy", gone=gone))

    for refused in (per_key.value, overall.value):
        assert (refused.status, refused.code, refused.headers["Retry-After"]) == (
            503,
            "too_many_streams",
            "7",
        )
    first.release()
    first.release()  # idempotent: one stream frees one place
    assert len(limits) == 2
    limits.acquire(ann)  # ann's closed stream made room for one more of hers


def test_without_a_credential_the_client_address_is_the_key() -> None:
    limits = StreamLimits("health", per_key=1, total=10)
    gone = asyncio.Event()
    limits.acquire(_request(client="10.0.0.1", gone=gone))
    limits.acquire(_request(client="10.0.0.2", gone=gone))
    with pytest.raises(HttpError):
        limits.acquire(_request(client="10.0.0.1", gone=gone))


def test_a_stream_sends_retry_first_keepalives_and_items_then_frees_everything_on_disconnect() -> None:
    async def scenario() -> tuple[list[bytes], list[str], int]:
        limits = StreamLimits("t", per_key=1, total=1)
        gone = asyncio.Event()
        request = _request("Bearer k", gone=gone)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        closed: list[str] = []
        response = event_stream(
            request,
            queue,
            slot=limits.acquire(request),
            close=lambda: closed.append("unsubscribed"),
            first=b": hello\n\n",
            render=lambda item: None if item == "skip" else event("score", item.encode(), "1"),
            heartbeat=0.05,
            retry_ms=2500,
        )
        assert response.media_type == "text/event-stream"
        chunks: list[bytes] = []
        body: Any = response.body_iterator
        chunks.append(await body.__anext__())
        chunks.append(await body.__anext__())  # nothing queued: a keep-alive
        queue.put_nowait("skip")
        queue.put_nowait('{"s":1}')
        chunks.append(await body.__anext__())
        gone.set()  # the client leaves: the next heartbeat notices and the stream ends
        async for chunk in body:
            chunks.append(chunk)
        return chunks, closed, len(limits)

    chunks, closed, still_open = asyncio.run(scenario())

    assert chunks[0] == b"retry: 2500\n\n: hello\n\n"
    assert chunks[1] == b": keep-alive\n\n"
    assert chunks[2] == b'event: score\nid: 1\ndata: {"s":1}\n\n'
    assert closed == ["unsubscribed"]
    assert still_open == 0


def test_a_refused_stream_is_a_503_in_the_services_error_shape() -> None:
    app = FastAPI()
    limits = StreamLimits("t", per_key=1, total=1)
    limits.acquire(_request("Bearer k", gone=asyncio.Event()))  # the only place is taken

    @app.get("/stream")
    async def stream(request: Request) -> Any:
        return event_stream(request, asyncio.Queue(), slot=limits.acquire(request))

    install_error_handlers(app, service="unit")
    answer = TestClient(app).get("/stream", headers={"Authorization": "Bearer other"})

    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "5"
    assert answer.json()["code"] == "too_many_streams"
