"""Helpers for the hostile-input and schemathesis tests of every plg HTTP API: a client that records every
answer, so a test module can prove that no request of it got a 5xx (other than a documented 503)."""

from __future__ import annotations

import select
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
    return drip_request(base_url, head, body_parts, pause, read_timeout)[0]


def drip_request(
    base_url: str, head: bytes, body_parts: list[bytes], pause: float, read_timeout: float
) -> tuple[bytes, int]:
    """:func:`raw_request`, which stops sending once the server has answered: ``(answer, parts sent)``.
    Fewer parts sent than given means the server answered before the client finished its body."""
    url = urlsplit(base_url)
    sent = 0
    with socket.create_connection((url.hostname, url.port), timeout=read_timeout) as sock:
        sock.sendall(head)
        try:
            for part in body_parts:
                readable, _, _ = select.select([sock], [], [], pause)  # the pause, cut short by an answer
                if readable:
                    break
                sock.sendall(part)
                sent += 1
        except OSError:
            pass  # the server may have answered and closed already
        chunks: list[bytes] = []
        deadline = time.monotonic() + read_timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), sent


@dataclass
class SchemathesisReport:
    """What one engine run (the same phases and checks as ``st run``) found."""

    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    operations: set[str] = field(default_factory=set)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    stop_reason: str = ""

    def server_errors(self, allowed: frozenset[int] = frozenset()) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500 and status not in allowed)

    def summary(self) -> str:
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.phase_seconds.items())
        return (
            f"{self.requests} requests to {len(self.operations)} operations ({phases}; {self.stop_reason}), "
            f"statuses {sorted(self.statuses.items())}; {len(self.failures)} failures, "
            f"{len(self.errors)} errors:\n" + "\n".join(self.failures + self.errors)
        )

    def assert_clean(self, min_requests: int, allowed: frozenset[int] = frozenset()) -> None:
        assert not self.failures, self.summary()
        assert not self.errors, self.summary()
        assert self.server_errors(allowed) == 0, self.summary()
        assert self.requests >= min_requests, self.summary()
        assert self.stop_reason == "completed", self.summary()


def run_schemathesis(
    openapi_url: str,
    *,
    base_url: str,
    max_examples: int,
    headers: dict[str, str] | None = None,
    exclude_path_regex: str | None = None,
    **project: Any,
) -> SchemathesisReport:
    """Run schemathesis' engine against a live service: every operation of its OpenAPI document, the
    default phases (examples, coverage, fuzzing, stateful links), every default check, at most
    ``max_examples`` generated cases per operation and phase, a fixed seed, no example database;
    ``exclude_path_regex`` leaves operations out (streams that never end)."""
    import schemathesis
    from schemathesis.engine import Status, events, from_schema

    config = schemathesis.Config.from_dict(
        {
            "seed": 20251009,
            "base-url": base_url,
            "headers": headers or {},
            "generation": {"max-examples": max_examples, "database": "none", "deterministic": True},
            **project,
        }
    )
    schema = schemathesis.openapi.from_url(openapi_url, config=config)
    if exclude_path_regex is not None:  # e.g. endless SSE streams
        schema = schema.exclude(path_regex=exclude_path_regex)
    report = SchemathesisReport()
    phase_started: dict[str, float] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.PhaseStarted):
            phase_started[event.phase.name.value] = time.monotonic()
        elif isinstance(event, events.PhaseFinished) and event.phase.name.value in phase_started:
            name = event.phase.name.value
            elapsed = time.monotonic() - phase_started.pop(name)
            report.phase_seconds[name] = report.phase_seconds.get(name, 0.0) + elapsed
        elif isinstance(event, events.EngineFinished):
            report.stop_reason = str(event.stop_reason.value if event.stop_reason else "")
        elif isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            report.operations.add(recorder.label)
            for interaction in recorder.interactions.values():
                report.requests += 1
                if interaction.response is not None:
                    code = interaction.response.status_code
                    report.statuses[code] = report.statuses.get(code, 0) + 1
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        interaction = recorder.interactions.get(case_id)
                        request = interaction.request if interaction else None
                        where = f"{request.method} {request.uri}" if request else recorder.label
                        report.failures.append(
                            f"[{check.name}] {where}: {failure.title}: {str(failure.message)[:300]}"
                        )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            report.errors.append(
                f"{type(event).__name__}: {getattr(event, 'label', '')}: {event.info.message}"
            )
    return report


def fuzz_as(
    name: str,
    base_url: str,
    runs: list[tuple[dict[str, Any], str]],
    *,
    max_examples: int,
    min_requests: int,
    allowed: frozenset[int] = frozenset(),
    **options: Any,
) -> None:
    """:func:`run_schemathesis` on ``base_url`` once per ``(parameters, token)`` run — e.g. as an operator
    with
    generated ids, then as a real customer's own key with its id fixed — each authenticated with the token
    and required clean (no failure, no 5xx outside ``allowed``, at least ``min_requests``)."""
    for parameters, token in runs:
        report = run_schemathesis(
            f"{base_url}/openapi.json",
            base_url=base_url,
            max_examples=max_examples,
            headers={"Authorization": f"Bearer {token}"},
            **({"parameters": parameters} if parameters else {}),
            **options,
        )
        print(f"schemathesis on {name} {parameters or '(generated ids)'}: {report.summary()}")
        report.assert_clean(min_requests=min_requests, allowed=allowed)
