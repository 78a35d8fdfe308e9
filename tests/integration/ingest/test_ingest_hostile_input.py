"""Hostile and malformed input against the real ingest service: every answer is a precise 4xx in the
``{"code", "message", "request_id"}`` shape (or a 202 with per-event results), never a 5xx.

Each test runs its requests through a guarded client and ends by asserting that none got a server error.
"""

from __future__ import annotations

import gzip
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.http_support import AnswerLog, assert_error, drip_request, guarded_client, raw_request
from tests.integration.ingest.conftest import IngestFactory, RunningIngest, Tenant

JSON_ENDPOINTS = ("/v1/batch", "/v1/track", "/v1/identify")
CE_ENDPOINTS = ("/v1/events", "/api/v1/events")
CE = "application/cloudevents+json"
CE_BATCH = "application/cloudevents-batch+json"
NOT_JSON_TYPES = (
    "text/plain",
    CE,
    CE_BATCH,
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "text/json",
    "application/octet-stream",
    "application/vnd.api+json",
)


@pytest.fixture
def answers() -> Iterator[AnswerLog]:
    log = AnswerLog()
    yield log
    log.assert_no_server_error()


@pytest.fixture
def hostile_ingest(start_ingest: IngestFactory) -> RunningIngest:
    return start_ingest(body_read_timeout_seconds=1.0)


def now_ms() -> int:
    return int(time.time() * 1000)


def event(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"event_id": uuid.uuid4().hex, "name": "api_call", "timestamp": now_ms()}
    out.update(overrides)
    return out


def post(
    client: httpx.Client, path: str, body: bytes, tenant: Tenant | None, **headers: str
) -> httpx.Response:
    sent = {"Content-Type": "application/json", **headers}
    if tenant is not None:
        sent.update(tenant.headers)
    return client.post(path, content=body, headers=sent)


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == wanted:
            return float(m.group(2))
    return 0.0


def test_every_wrong_content_type_on_every_endpoint_is_a_415_naming_the_right_one_and_is_counted(
    hostile_ingest: RunningIngest, tenant: Tenant, answers: AnswerLog
) -> None:
    body = orjson.dumps({"batch": [event()]})
    with guarded_client(hostile_ingest.url, answers) as client:
        before = metric(client, "plg_ingest_requests_total", endpoint="batch", status="415")
        tried = 0
        for path in JSON_ENDPOINTS:
            for media in NOT_JSON_TYPES:
                for who in (None, tenant):  # refused before authentication, with or without a key
                    response = post(client, path, body, who, **{"Content-Type": media})
                    media_type = media.split(";")[0]
                    expected = "POST /v1/events" if media_type in (CE, CE_BATCH) else "application/json"
                    assert_error(
                        response, 415, "unsupported_media_type", media_type, f"POST {path}", expected
                    )
                    tried += 1
        for path in CE_ENDPOINTS:
            for media in ("application/json", "text/plain", "", "application/json; charset=utf-8"):
                for who in (None, tenant):
                    response = post(client, path, body, who, **{"Content-Type": media})
                    fragments = [f"POST {path}", CE, CE_BATCH]
                    if media.split(";")[0] in ("", "application/json"):
                        fragments.append("/v1/batch")
                    assert_error(response, 415, "unsupported_media_type", *fragments)
                    tried += 1
        assert tried == 70
        after = metric(client, "plg_ingest_requests_total", endpoint="batch", status="415")
        assert after - before == 2 * len(NOT_JSON_TYPES)
        # JSON with parameters, and no Content-Type at all, are JSON.
        ok = post(client, "/v1/batch", body, tenant, **{"Content-Type": "application/json; charset=utf-8"})
        assert ok.status_code == 202, ok.text
        assert (
            post(client, "/v1/track", orjson.dumps(event()), tenant, **{"Content-Type": ""}).status_code
            == 202
        )


def test_empty_and_not_json_bodies_are_400(
    hostile_ingest: RunningIngest, tenant: Tenant, answers: AnswerLog
) -> None:
    with guarded_client(hostile_ingest.url, answers) as client:
        for path in JSON_ENDPOINTS:
            assert_error(post(client, path, b"", tenant), 400, "invalid_json")
            assert_error(post(client, path, b"   ", tenant), 400, "invalid_json")
            assert_error(post(client, path, b"\xff\xfe{}", tenant), 400, "invalid_json")  # invalid UTF-8
            assert_error(post(client, path, b'{"name": "\\ud800"}', tenant), 400, "invalid_json", "surrogate")
            levels = 100_000 if path == "/v1/batch" else 10_000  # within each endpoint's size limit
            deep = b"[" * levels + b"]" * levels
            assert_error(post(client, path, deep, tenant), 400, "invalid_json", "depth")
            assert_error(post(client, path, b'{"a": NaN}', tenant), 400, "invalid_json")
            assert_error(post(client, path, b'{"a": Infinity}', tenant), 400, "invalid_json")
            assert_error(post(client, path, b'{"a": 1e999}', tenant), 400, "invalid_json", "infinity")
            assert_error(post(client, path, b"null", tenant), 400, "invalid_body")
        for path in CE_ENDPOINTS:
            assert_error(post(client, path, b"", tenant, **{"Content-Type": CE}), 400, "invalid_json")
            deep = b"[" * 100_000 + b"]" * 100_000
            assert_error(post(client, path, deep, tenant, **{"Content-Type": CE_BATCH}), 400, "invalid_json")


def test_gzip_bodies_are_read_whole_or_refused(
    hostile_ingest: RunningIngest, tenant: Tenant, answers: AnswerLog
) -> None:
    gz = {"Content-Encoding": "gzip"}
    with guarded_client(hostile_ingest.url, answers) as client:
        # Two members: the body is their concatenation (as `gzip -d` reads it), not just the first.
        first, second = event(), event()
        text = orjson.dumps({"batch": [first, second]})
        cut = text.index(b"},{") + 2
        two_members = gzip.compress(text[:cut]) + gzip.compress(text[cut:])
        accepted = post(client, "/v1/batch", two_members, tenant, **gz)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["accepted"] == 2
        one = gzip.compress(orjson.dumps({"batch": [event()]}))
        assert_error(
            post(client, "/v1/batch", one + b"trailing junk", tenant, **gz), 400, "invalid_body", "follow"
        )
        assert_error(
            post(client, "/v1/batch", one + b"\x1f\x8bnot", tenant, **gz), 400, "invalid_body", "member 2"
        )
        assert_error(
            post(client, "/v1/batch", b"not gzip at all", tenant, **gz), 400, "invalid_body", "not valid gzip"
        )
        assert_error(post(client, "/v1/batch", one[:-8], tenant, **gz), 400, "invalid_body", "truncated")
        assert_error(post(client, "/v1/batch", b"", tenant, **gz), 400, "invalid_body", "empty")
        bomb = gzip.compress(b" " * 20_000_000)
        assert_error(post(client, "/v1/batch", bomb, tenant, **gz), 413, "batch_too_large", "decompressed")
        assert_error(
            post(client, "/v1/batch", one, tenant, **{"Content-Encoding": "br"}),
            415,
            "unsupported_media_type",
            "gzip",
        )


def test_oversized_bodies_are_413_whether_declared_or_streamed(
    hostile_ingest: RunningIngest, tenant: Tenant, answers: AnswerLog
) -> None:
    big = orjson.dumps({"batch": [event(properties={"pad": "x" * 600_000})]})
    with guarded_client(hostile_ingest.url, answers) as client:
        assert_error(post(client, "/v1/batch", big, tenant), 413, "batch_too_large")
        assert_error(
            post(client, "/v1/track", orjson.dumps(event(properties={"p": "x" * 40_000})), tenant),
            413,
            "event_too_large",
        )

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        streamed = client.post(
            "/v1/batch", content=chunks(), headers={**tenant.headers, "Content-Type": "application/json"}
        )
        assert_error(streamed, 413, "batch_too_large")


def test_numbers_nuls_and_unicode_in_events_get_precise_per_event_codes(
    hostile_ingest: RunningIngest, tenant: Tenant, answers: AnswerLog
) -> None:
    cases: list[tuple[bytes, str | None, str]] = [
        # (the event's JSON, expected rejection code or None for accepted, a fragment of the message)
        (b'"properties": {"n": 9223372036854775807}', None, ""),
        (b'"properties": {"n": -9223372036854775808}', None, ""),
        (b'"properties": {"n": 9223372036854775808}', "unrepresentable_property", "properties.n"),
        (b'"properties": {"n": -9223372036854775809}', "unrepresentable_property", "properties.n"),
        (b'"properties": {"n": 18446744073709551616}', "unrepresentable_property", "properties.n"),
        (b'"properties": {"n": 1' + b"0" * 300 + b"}", "unrepresentable_property", "digits"),
        (b'"properties": {"n": 1e300, "m": 1.5}', None, ""),
        (b'"properties": {"n": "a\\u0000b"}', None, ""),  # a string may hold any character
        (b'"properties": {"n\\u0000": 1}', "invalid_property_key", ""),
        (b'"properties": {"n": {"deep": 1}}', "unrepresentable_property", "flat"),
        (b'"properties": {"n": "\\udfff"}', "invalid_json", ""),
    ]
    with guarded_client(hostile_ingest.url, answers) as client:
        for fragment, code, message in cases:
            body = b'{"batch": [{"event_id": "%s", "name": "n", "timestamp": %d, %s}]}' % (
                uuid.uuid4().hex.encode(),
                now_ms(),
                fragment,
            )
            response = post(client, "/v1/batch", body, tenant)
            if code == "invalid_json":
                assert_error(response, 400, code)
                continue
            assert response.status_code == 202, (fragment, response.text)
            [result] = response.json()["results"]
            if code is None:
                assert result["status"] == "accepted", (fragment, result)
            else:
                assert (result["status"], result["code"]) == ("rejected", code), (fragment, result)
                assert message in result["message"], (fragment, result)
        ts = "2025-01-01T00:00:00Z"
        for bad in (ts[:19] + "\x00Z", ts[:10] + "\x00" + ts[11:], ts + "\x00", ts[:10] + "X" + ts[11:]):
            response = post(client, "/v1/track", orjson.dumps(event(timestamp=bad)), tenant)
            assert_error(response, 400, "invalid_timestamp", "not an ISO-8601")
        for field, code in (
            ("event_id", "invalid_event_id"),
            ("name", "invalid_name"),
            ("user_id", "invalid_field"),
        ):
            response = post(client, "/v1/track", orjson.dumps(event(**{field: "a\x00b"})), tenant)
            assert_error(response, 400, code)
        big_track = post(
            client,
            "/v1/track",
            b'{"event_id": "e1", "name": "n", "timestamp": %d, "properties": {"x": 99999999999999999999}}'
            % now_ms(),
            tenant,
        )
        assert_error(big_track, 400, "unrepresentable_property", "properties.x", "64-bit")
        identify = b'{"event_id": "i1", "timestamp": %d, "anonymous_id": "a", "user_id": "u"}' % 2**70
        assert_error(post(client, "/v1/identify", identify, tenant), 400, "timestamp_in_future")


def test_a_body_that_never_arrives_is_answered_408_and_the_connection_closed(
    hostile_ingest: RunningIngest, tenant: Tenant, answers: AnswerLog
) -> None:
    head = (
        b"POST /v1/batch HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
        b"Authorization: " + tenant.headers["Authorization"].encode() + b"\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    # A slowloris: a byte every 0.3 s would take 5 minutes; the service answers after its 1 s deadline,
    # long before this client has sent its 20 bytes (6 s).
    answer, sent = drip_request(hostile_ingest.url, head, [b"{"] * 20, pause=0.3, read_timeout=30)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer[:300]
    assert b"connection: close" in rest.lower()
    assert b'"request_timeout"' in rest
    assert sent < 20, "the connection was held until the client had sent everything"
    # A stalled body (nothing after the headers) the same.
    stalled = raw_request(hostile_ingest.url, head, [], pause=0, read_timeout=10)
    assert stalled.startswith(b"HTTP/1.1 408 ")
    with guarded_client(hostile_ingest.url, answers) as client:
        assert metric(client, "plg_ingest_requests_total", endpoint="batch", status="408") >= 2


def test_unknown_routes_and_methods_get_the_error_shape(
    hostile_ingest: RunningIngest, tenant: Tenant, answers: AnswerLog
) -> None:
    with guarded_client(hostile_ingest.url, answers) as client:
        assert_error(client.get("/v1/batch"), 405, "method_not_allowed")
        assert_error(client.post("/v1/nope", content=b"{}"), 404, "not_found")
        assert_error(client.get("/%ff%fe"), 404, "not_found")
        given = client.get("/v1/nope", headers={"X-Request-Id": "my-trace-1"})
        assert given.headers["x-request-id"] == "my-trace-1" == given.json()["request_id"]
