"""Admin-token check: Bearer and HTTP Basic (token as password), writes protected, reads optional."""

from __future__ import annotations

import base64

import pytest
from pydantic import SecretStr

from services.schema_registry.auth import AdminGuard, presented_token
from services.schema_registry.model import RegistryError


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer s3cret", "s3cret"),
        ("bearer s3cret", "s3cret"),
        (basic("anyone", "s3cret"), "s3cret"),
        (basic("anyone", "with:colon"), "with:colon"),
        ("Basic !!notbase64", None),
        ("Basic " + base64.b64encode(b"no-colon").decode(), None),
        ("Digest abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_the_token_is_read_from_bearer_or_basic_password(header, token):
    assert presented_token(header) == token


def test_without_a_configured_token_everything_is_open():
    guard = AdminGuard(None)
    guard.check(None, write=True)
    guard.check(None, write=False)


def test_writes_need_the_token_reads_do_not():
    guard = AdminGuard(SecretStr("s3cret"))
    guard.check(None, write=False)
    guard.check("Bearer s3cret", write=True)
    guard.check(basic("sr-user", "s3cret"), write=True)
    for header in (None, "Bearer wrong", basic("sr-user", "wrong")):
        with pytest.raises(RegistryError) as exc_info:
            guard.check(header, write=True)
        assert int(exc_info.value.code) == 40101
        assert exc_info.value.http_status == 401


def test_protected_reads_need_the_token_too():
    guard = AdminGuard(SecretStr("s3cret"), protect_reads=True)
    with pytest.raises(RegistryError):
        guard.check(None, write=False)
    guard.check("Bearer s3cret", write=False)
