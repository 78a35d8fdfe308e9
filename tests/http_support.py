"""Helpers for the hostile-input and schemathesis tests of every plg HTTP API: a client that records every
answer, so a test module can prove that no request of it got a 5xx (other than a documented 503)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx


@dataclass
class AnswerLog:
    """Every (method, path, status) a guarded client saw."""

    answers: list[tuple[str, str, int]] = field(default_factory=list)

    def record(self, response: httpx.Response) -> None:
        self.answers.append((response.request.method, response.request.url.path, response.status_code))

    def server_errors(self, allowed: frozenset[int] = frozenset()) -> list[tuple[str, str, int]]:
        return [a for a in self.answers if a[2] >= 500 and a[2] not in allowed]

    def assert_no_server_error(self, allowed: frozenset[int] = frozenset()) -> None:
        errors = self.server_errors(allowed)
        assert not errors, f"{len(errors)} of {len(self.answers)} requests got a server error: {errors[:20]}"


@contextmanager
def guarded_client(base_url: str, log: AnswerLog, **kw: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30, event_hooks={"response": [log.record]}, **kw) as client:
        yield client


def assert_error(
    response: httpx.Response, status: int, code: str | int, *fragments: str, code_key: str = "code"
) -> dict[str, Any]:
    """The answer is ``status`` with the service's error body: ``code`` and a message naming ``fragments``;
    plg's own APIs also carry the request id, equal to the ``X-Request-Id`` header."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert body[code_key] == code, body
    for fragment in fragments:
        assert fragment in body["message"], (fragment, body["message"])
    if code_key == "code":
        assert body["request_id"] == response.headers["x-request-id"], body
    return body


def raw_request(
    base_url: str, head: bytes, body_parts: list[bytes], pause: float, read_timeout: float
) -> bytes:
    """Send ``head`` then each of ``body_parts`` ``pause`` seconds apart over a plain socket (a slow or
    stalled client), and return everything the server answered until it closed (or ``read_timeout``)."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=read_timeout) as sock:
        sock.sendall(head)
        try:
            for part in body_parts:
                time.sleep(pause)
                sock.sendall(part)
        except OSError:
            pass  # the server may have answered and closed already
        chunks: list[bytes] = []
        deadline = time.monotonic() + read_timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
