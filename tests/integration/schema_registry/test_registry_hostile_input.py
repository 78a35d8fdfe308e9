"""Hostile and malformed input against a real registry process (``python -m services.schema_registry``):
Confluent's error codes, never a 5xx. Every request goes through a guarded client; the module ends by
asserting none got a server error."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.http_support import AnswerLog, assert_error, drip_request, guarded_client
from tests.integration.schema_registry.support import CONTENT_TYPE

V1 = json.dumps({"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]})


@pytest.fixture(scope="module")
def answers() -> Iterator[AnswerLog]:
    log = AnswerLog()
    yield log
    log.assert_no_server_error()


@pytest.fixture(scope="module")
def registry_url(start_registry, registry_database) -> str:
    return start_registry(registry_database, REGISTRY_BODY_READ_TIMEOUT_SECONDS="1").url


@pytest.fixture
def client(registry_url: str, answers: AnswerLog) -> Iterator[httpx.Client]:
    with guarded_client(registry_url, answers, headers={"Content-Type": CONTENT_TYPE}) as c:
        yield c


def confluent(response: httpx.Response, status: int, code: int, *fragments: str) -> None:
    assert_error(response, status, code, *fragments, code_key="error_code")


def field_with_default(type_: str, default_literal: str) -> str:
    # The default is spliced in as raw text: json.dumps would never write NaN into a test by accident.
    field = f'{{"name": "x", "type": "{type_}", "default": {default_literal}}}'
    return f'{{"type": "record", "name": "D", "fields": [{field}]}}'


@pytest.mark.parametrize(
    ("type_", "default"),
    [
        ("double", "NaN"),
        ("double", "Infinity"),
        ("float", "-Infinity"),
        ("double", "1e999"),
        ("double", "1" + "0" * 400),
    ],
)
def test_schemas_with_nan_infinity_or_overflowing_defaults_are_42201(client, type_, default) -> None:
    subject = f"nan-{uuid.uuid4().hex[:8]}"
    schema = field_with_default(type_, default)
    confluent(client.post(f"/subjects/{subject}/versions", json={"schema": schema}), 422, 42201)
    confluent(client.post(f"/compatibility/subjects/{subject}/versions", json={"schema": schema}), 422, 42201)
    confluent(client.get(f"/subjects/{subject}/versions"), 404, 40401)


def test_nan_in_the_request_body_itself_is_a_400(client) -> None:
    body = b'{"schema": "\\"string\\"", "metadata": {"properties": {"n": NaN}}}'
    confluent(client.post("/subjects/x/versions", content=body), 400, 400, "Malformed JSON")
    confluent(client.post("/subjects/x/versions", content=b'{"schema": 1' + b"0" * 5000 + b"}"), 400, 400)


@pytest.mark.parametrize(
    "version",
    ["0", "-2", "2147483648", "99999999999999999999", "1.5", "lat", "%20", "LATEST1", "+1", "1_0", "%D9%A1"],
)
def test_bad_versions_are_42202(client, version) -> None:
    subject = f"v-{uuid.uuid4().hex[:8]}"
    assert client.post(f"/subjects/{subject}/versions", json={"schema": V1}).status_code == 200
    confluent(client.get(f"/subjects/{subject}/versions/{version}"), 422, 42202)
    confluent(client.delete(f"/subjects/{subject}/versions/{version}"), 422, 42202)


def test_latest_and_minus_one_are_the_latest_version(client) -> None:
    subject = f"v-{uuid.uuid4().hex[:8]}"
    assert client.post(f"/subjects/{subject}/versions", json={"schema": V1}).status_code == 200
    for alias in ("latest", "-1", "2147483647", "1"):
        response = client.get(f"/subjects/{subject}/versions/{alias}")
        assert response.status_code == (404 if alias == "2147483647" else 200), response.text
    confluent(client.get(f"/subjects/{subject}/versions/2147483647"), 404, 40402)


@pytest.mark.parametrize(
    ("subject", "status", "code"),
    [
        ("ünïcødé-☃-value", 200, None),
        ("emoji-😀", 200, None),
        ("x" * 512, 200, None),
        ("😀" * 512, 200, None),  # 2 KB of UTF-8: the store's index holds it
        ("x" * 513, 422, 42208),
        ("x" * 10_000, 422, 42208),
        ("bell%07", 422, 42208),
        ("%ED%A0%80", 422, 42208),  # a lone surrogate, percent-encoded
    ],
)
def test_odd_subject_names_are_stored_or_refused_with_42208(client, subject, status, code) -> None:
    path = (
        httpx.URL(f"/subjects/{subject}/versions") if "%" not in subject else f"/subjects/{subject}/versions"
    )
    response = client.post(path, json={"schema": V1})
    if code is None:
        assert response.status_code == status, response.text
        assert client.get(httpx.URL(f"/subjects/{subject}/versions")).json() == [1]
    else:
        confluent(response, status, code)


def test_an_encoded_slash_in_a_subject_is_a_precise_404_not_a_500(client) -> None:
    confluent(client.post("/subjects/a%2Fb/versions", json={"schema": V1}), 404, 404)
    confluent(client.get("/subjects/a%2Fb/versions/1"), 404, 404)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b'{"schema": "\\ud800"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"schema": ' + json.dumps("[" * 5000 + "]" * 5000).encode() + b"}",
        b'{"schema": "{\\"type\\": \\"record\\", \\"name\\": \\"\\u0000\\", \\"fields\\": []}"}',
        b'{"schema": "{\\"type\\": \\"enum\\", \\"name\\": \\"E\\", \\"symbols\\": [1]}"}',
        b'{"schema": "{\\"type\\": \\"fixed\\", \\"name\\": \\"F\\", \\"size\\": -1}"}',
        b'{"schema": "\\"string\\"", "references": '
        b'[{"name": "x", "subject": "nope", "version": 2147483648}]}',
        b'{"schema": "\\"string\\"", "schemaType": 5}',
        b'{"schema": "\\"string\\"", "id": 99999999999999999999}',
    ],
)
def test_malformed_schemas_and_bodies_are_4xx(client, body) -> None:
    response = client.post(f"/subjects/m-{uuid.uuid4().hex[:8]}/versions", content=body)
    assert response.status_code in (400, 422), response.text
    assert response.json()["error_code"] in (400, 42201, 42202), response.text


def test_wrong_content_types_are_served_as_json_or_refused_never_a_500(client) -> None:
    # Confluent accepts application/json and its vnd types alike; anything else is read as JSON too.
    for media in ("text/plain", "application/xml", "application/octet-stream", ""):
        response = client.post(
            f"/subjects/ct-{uuid.uuid4().hex[:8]}/versions",
            content=json.dumps({"schema": V1}),
            headers={"Content-Type": media},
        )
        assert response.status_code == 200, response.text


def test_a_body_that_never_arrives_is_408(registry_url, answers) -> None:
    head = (
        b"POST /subjects/slow/versions HTTP/1.1\r\nHost: registry\r\n"
        b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    )
    # Answered on the registry's body deadline, before this client has sent its 20 bytes (6 s).
    answer, sent = drip_request(registry_url, head, [b"{"] * 20, pause=0.3, read_timeout=30)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b'"error_code":408' in answer
    assert sent < 20, "the connection was held until the client had sent everything"


def test_unknown_routes_and_methods_answer_in_confluents_shape(client) -> None:
    confluent(client.get("/no/such/route"), 404, 404, "HTTP 404")
    confluent(client.patch("/subjects"), 405, 405, "HTTP 405")
    rid = client.get("/nope", headers={"X-Request-Id": "sr-trace"})
    assert rid.headers["x-request-id"] == "sr-trace" == rid.json()["request_id"]
