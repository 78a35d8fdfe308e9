"""The registry's policies: Bearer and HTTP Basic (token as password), writes protected, reads optional."""

from __future__ import annotations

import asyncio
import base64

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from services.kernel import auth
from services.kernel.apikeys import CredentialCache, KeyCache
from services.kernel.auth import presented_token
from services.schema_registry.auth import RegistryAccess
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


class _App:
    class state:
        pass


async def _unused(key_id: str) -> None:
    raise AssertionError("a malformed token must not reach the database")


auth.install(
    _App,
    auth.Authenticator(KeyCache(_unused, 1, 1), CredentialCache(_unused, 1, 1)),
)


def check(access: RegistryAccess, header: str | None) -> None:
    headers = [(b"authorization", header.encode())] if header else []
    asyncio.run(access(Request({"type": "http", "headers": headers, "app": _App})))


def test_without_a_configured_token_everything_is_open():
    for write in (True, False):
        check(RegistryAccess(None, False, write=write), None)


def test_writes_need_the_token_reads_do_not():
    reads = RegistryAccess(SecretStr("s3cret"), False, write=False)
    writes = RegistryAccess(SecretStr("s3cret"), False, write=True)
    check(reads, None)
    check(writes, "Bearer s3cret")
    check(writes, basic("sr-user", "s3cret"))
    for header in (None, "Bearer wrong", basic("sr-user", "wrong")):
        with pytest.raises(RegistryError) as exc_info:
            check(writes, header)
        assert int(exc_info.value.code) == 40101
        assert exc_info.value.http_status == 401


def test_protected_reads_need_the_token_too():
    reads = RegistryAccess(SecretStr("s3cret"), True, write=False)
    with pytest.raises(RegistryError):
        check(reads, None)
    check(reads, "Bearer s3cret")
