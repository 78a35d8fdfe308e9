"""The Python SDK's OpenFeature provider through OpenFeature's own client API (every shared vector case), and
the entitlement client's cache, last-known state, fallback and structured refusal against a real HTTP
server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from plg_sdk.entitlements import Entitlements
from plg_sdk.growth import FlagsClient
from plg_sdk.openfeature import PlgProvider

VECTORS = json.loads(
    (Path(__file__).resolve().parents[3] / "sdk" / "testdata" / "flag_evaluations.json").read_text()
)


@pytest.fixture
def of_client() -> Iterator[Any]:
    flags = FlagsClient(bootstrap=VECTORS["document"], start=False)
    api.set_provider(PlgProvider(flags))
    try:
        yield api.get_client()
    finally:
        api.shutdown()


def _context(ctx: dict[str, Any]) -> EvaluationContext:
    attrs = {k: v for k, v in ctx.items() if k != "user_id"}
    return EvaluationContext(ctx.get("user_id"), attrs)


def test_every_vector_case_through_the_openfeature_client(of_client: Any) -> None:
    assert len(VECTORS["cases"]) >= 200
    for case in VECTORS["cases"]:
        details = of_client.get_object_details(case["flag"], {"d": 1}, _context(case["context"]))
        where = f"{case['flag']} {case['context']}"
        if isinstance(case["value"], bool | str | int | float):
            # Scalars are not "object": ask with their own type.
            value = case["value"]
            getter = {bool: of_client.get_boolean_details, str: of_client.get_string_details}.get(type(value))
            getter = getter or (
                of_client.get_integer_details if isinstance(value, int) else of_client.get_float_details
            )
            details = getter(case["flag"], value, _context(case["context"]))
        assert details.value == case["value"], where
        assert details.variant == case["variant"], where
        assert details.reason == case["reason"], where
        assert details.error_code is None, where


def test_unknown_flags_and_wrong_types_answer_the_default_with_openfeature_error_codes(
    of_client: Any,
) -> None:
    missing = of_client.get_boolean_details("nope", True)
    assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
    wrong = of_client.get_integer_details("abc", 7, EvaluationContext("u-1"))
    assert (wrong.value, wrong.error_code) == (7, ErrorCode.TYPE_MISMATCH)


def test_before_any_definitions_the_provider_answers_provider_not_ready() -> None:
    flags = FlagsClient("http://127.0.0.1:9", start=False)
    api.set_provider(PlgProvider(flags, ready_timeout=0.01))
    try:
        details = api.get_client().get_boolean_details("kill", True)
        assert details.value is True
        assert details.error_code == ErrorCode.PROVIDER_NOT_READY
    finally:
        api.shutdown()


class _Scripted(BaseHTTPRequestHandler):
    answers: list[tuple[int, dict[str, Any]] | None] = []
    seen: list[str] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        answer = type(self).answers.pop(0) if type(self).answers else None
        if answer is None:
            self.connection.close()  # unreachable, as far as the client can tell
            return
        body = json.dumps(answer[1]).encode()
        self.send_response(answer[0])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def ents_server() -> Iterator[str]:
    _Scripted.answers, _Scripted.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


REFUSED = {
    "customer_id": "acme",
    "feature": "sso",
    "allowed": False,
    "plan": "free",
    "usage": None,
    "limit": None,
    "remaining": None,
    "upgrade": {
        "code": "feature_not_in_plan",
        "upgrade_url": "http://up/acme?f=sso",
        "suggested_plan": "pro",
    },
}


def test_entitlements_cache_then_last_known_then_fallback(ents_server: str) -> None:
    now = [0.0]
    ents = Entitlements(ents_server, ttl=60, fallback={"exports": False}, clock=lambda: now[0])
    _Scripted.answers = [(200, REFUSED), None, None]
    first = ents.check("acme", "sso")
    assert (first.allowed, first.source, first.plan) == (False, "live", "free")
    assert first.upgrade is not None
    assert first.upgrade.suggested_plan == "pro"
    assert first.refusal() == {
        "code": "feature_not_in_plan",
        "message": "sso is not available to acme now",
        "feature": "sso",
        "upgrade_url": "http://up/acme?f=sso",
        "suggested_plan": "pro",
    }
    assert ents.check("acme", "sso").source == "cache"
    assert len(_Scripted.seen) == 1, "within the TTL nothing is asked"
    now[0] = 61.0
    stale = ents.check("acme", "sso")
    assert (stale.allowed, stale.source) == (False, "stale")
    never = ents.check("acme", "exports")
    assert (never.allowed, never.source) == (False, "fallback")


def test_entitlements_say_why_a_question_is_refused(ents_server: str) -> None:
    _Scripted.answers = [(404, {"code": "unknown_feature", "message": "no feature x"})]
    answer = Entitlements(ents_server).check("acme", "x")
    assert answer.source == "fallback"
    assert answer.error == (404, "unknown_feature", "no feature x")
