"""Server-sent events for every HTTP service: one stream shape, bounded in number.

A service hands :func:`event_stream` the asyncio queue its publisher fills and gets a ``text/event-stream``
answer that sends ``retry:`` (how long EventSource waits before reconnecting) and the first message at
once, a comment every ``heartbeat`` seconds (proxies close idle connections), each queued item rendered,
and stops — unsubscribing and freeing its slot — when the client goes away. :class:`StreamLimits` bounds the
open streams per credential and overall: beyond either, 503 ``too_many_streams`` with ``Retry-After``, so
one client (or a crowd) cannot hold every connection and queue the process has::

    slot = limits.acquire(request)                       # 503 beyond the limits
    queue = broadcaster.subscribe()
    return event_stream(request, queue, slot=slot, first=snapshot, heartbeat=15,
                        close=lambda: broadcaster.unsubscribe(queue))
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from services.kernel.http import HttpError
from services.kernel.metrics import gauge

TOO_MANY_STREAMS = "too_many_streams"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

OPEN_STREAMS = gauge("plg_sse_streams", "Server-sent event streams open", ["stream"])


def event(name: str, data: bytes, event_id: str | None = None) -> bytes:
    """One server-sent event (``data`` on one line: plg's JSON has no newlines)."""
    head = f"event: {name}\n" + (f"id: {event_id}\n" if event_id else "")
    return head.encode() + b"data: " + data + b"\n\n"


def credential_key(request: Request) -> str:
    """Whose stream this is: the credential presented (API key, operator token, session cookie), else the
    client's address. Hashed, so no secret is kept as a dictionary key."""
    headers = request.headers
    credential = headers.get("authorization") or headers.get("cookie")
    if credential:
        return "c:" + hashlib.blake2b(credential.encode(), digest_size=12).hexdigest()
    return "a:" + (request.client.host if request.client else "unknown")


class StreamSlot:
    """One open stream's place in its :class:`StreamLimits`; ``release`` is idempotent."""

    __slots__ = ("_key", "_limits", "_released")

    def __init__(self, limits: StreamLimits, key: str) -> None:
        self._limits = limits
        self._key = key
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limits._release(self._key)


class StreamLimits:
    """At most ``per_key`` open streams per credential and ``total`` in the process (a stream holds a
    connection, a task and a queue for as long as the client likes)."""

    def __init__(self, name: str, *, per_key: int, total: int, retry_after_seconds: int = 5) -> None:
        if per_key < 1 or total < 1:
            raise ValueError("stream limits must be at least 1")
        self.name = name
        self.per_key = per_key
        self.total = total
        self.retry_after_seconds = retry_after_seconds
        self._lock = threading.Lock()  # publishers may ask from other threads (len)
        self._open: dict[str, int] = {}
        self._count = 0

    def acquire(self, request: Request, key: str | None = None) -> StreamSlot:
        """A slot for a new stream of ``key`` (default: the request's credential), or 503."""
        key = key if key is not None else credential_key(request)
        with self._lock:
            if self._count >= self.total:
                raise self._refusal(f"this server has {self.total} {self.name} streams open, its limit")
            mine = self._open.get(key, 0)
            if mine >= self.per_key:
                raise self._refusal(
                    f"this credential already has {mine} {self.name} streams open, the most allowed; "
                    "close one (each EventSource holds one)"
                )
            self._open[key] = mine + 1
            self._count += 1
            OPEN_STREAMS.labels(self.name).set(self._count)
        return StreamSlot(self, key)

    def _release(self, key: str) -> None:
        with self._lock:
            left = self._open.get(key, 0) - 1
            if left > 0:
                self._open[key] = left
            else:
                self._open.pop(key, None)
            self._count -= 1
            OPEN_STREAMS.labels(self.name).set(self._count)

    def __len__(self) -> int:
        return self._count

    def _refusal(self, message: str) -> HttpError:
        return HttpError(
            503,
            TOO_MANY_STREAMS,
            f"{message}; retry in {self.retry_after_seconds} s",
            {"Retry-After": str(self.retry_after_seconds)},
        )


def event_stream(
    request: Request,
    queue: asyncio.Queue[Any],
    *,
    slot: StreamSlot | None,
    close: Callable[[], None] = lambda: None,
    first: bytes = b"",
    render: Callable[[Any], bytes | None] | None = None,
    heartbeat: float = 15.0,
    retry_ms: int = 1000,
) -> StreamingResponse:
    """The ``text/event-stream`` answer for what arrives on ``queue`` (``render`` turns an item into its
    event bytes, or None to skip it; without it items are sent as they are). ``close`` (unsubscribe) and
    the slot's release run once the stream ends, however it ends."""

    async def events() -> AsyncIterator[bytes]:
        try:
            yield f"retry: {retry_ms}\n\n".encode() + first
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), heartbeat)
                except TimeoutError:
                    # Starlette cancels the stream when it sees the disconnect; this catches a client that
                    # vanished without one (a dead TCP peer shows up only when we write).
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    continue
                message = item if render is None else render(item)
                if message is not None:
                    yield message
        finally:
            close()
            if slot is not None:
                slot.release()

    return StreamingResponse(events(), media_type="text/event-stream", headers=HEADERS)
