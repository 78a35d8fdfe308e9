"""Credentials for tests that call the HTTP services: operator tokens and customer keys made in the test
stack's PostgreSQL, exactly as `plg operators create` and `plg keys create` make them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from services.kernel import apikeys
from services.kernel.db import migrate

_operators: dict[tuple[str, str, str], str] = {}


def _url(database: Any) -> str:
    """A database URL from a URL string or ``DatabaseSettings``."""
    return database if isinstance(database, str) else database.url.get_secret_value()


def operator_token(database: Any, role: str = "admin", name: str | None = None) -> str:
    """A token of an operator with ``role`` (one per name and role for the whole test session)."""
    url = _url(database)
    name = name or f"test-{role}@plg.test"
    key = (url, name, role)
    if key not in _operators:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            # Names are unique among active tokens: a unique one per session, unless the test named it.
            taken = conn.execute(
                "SELECT 1 FROM operators WHERE name = %s AND revoked_at IS NULL", (name,)
            ).fetchone()
            if taken:
                apikeys.revoke_operator(conn, name)
            _operators[key] = apikeys.create_operator(conn, name, role)[1]
    return _operators[key]


def customer_key(database: Any, customer_id: str, kind: apikeys.KeyKind = "secret") -> str:
    """A new key of ``kind`` for an existing customer."""
    with psycopg.connect(_url(database), autocommit=True) as conn:
        return apikeys.create_key(conn, customer_id, f"test {kind} key", kind=kind)[1]


def new_customer(database: Any, plan: str = "pro", prefix: str = "auth") -> str:
    customer_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_url(database), autocommit=True) as conn:
        conn.execute("INSERT INTO customers (customer_id, plan) VALUES (%s, %s)", (customer_id, plan))
    return customer_id


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Tenants:
    """Two customers with keys of both kinds, and operators of every role: the cast of the auth tests."""

    a: str
    b: str
    tokens: dict[str, str]

    @classmethod
    def make(cls, database: Any, plan: str = "free", a: str | None = None, b: str | None = None) -> Tenants:
        a = a or new_customer(database, plan)
        b = b or new_customer(database, plan)
        tokens = {
            "a.secret": customer_key(database, a, "secret"),
            "a.publishable": customer_key(database, a, "publishable"),
            "b.secret": customer_key(database, b, "secret"),
            "b.publishable": customer_key(database, b, "publishable"),
        }
        for role in ("viewer", "editor", "admin"):
            tokens[role] = operator_token(database, role)
        return cls(a, b, tokens)


@dataclass(frozen=True)
class Case:
    """``who`` (a key of :class:`Tenants`, ``none``, or ``bogus``) calls ``method path``: ``expect``."""

    who: str
    method: str
    path: str
    expect: int
    json: Any = None


def check_cases(base_url: str, tenants: Tenants, cases: list[Case]) -> None:
    """Run every case; fail once, listing every case that answered otherwise (and each 401 must say how
    to authenticate, each refusal must not be a 404 that would reveal another customer)."""
    wrong: list[str] = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for case in cases:
            token = {"none": None, "bogus": "plg_" + "a" * 16 + "_" + "b" * 43}.get(case.who, "")
            if token == "":
                token = tenants.tokens[case.who]
            headers = bearer(token) if token else {}
            answer = client.request(case.method, case.path, headers=headers, json=case.json)
            if answer.status_code != case.expect:
                wrong.append(
                    f"{case.who} {case.method} {case.path}: {answer.status_code} {answer.text[:200]}"
                )
            elif answer.status_code == 401 and not answer.headers.get("www-authenticate"):
                wrong.append(f"{case.who} {case.method} {case.path}: 401 without WWW-Authenticate")
    assert not wrong, f"{len(wrong)} of {len(cases)} cases answered otherwise:\n" + "\n".join(wrong)


def tenant_cases(
    method: str,
    path_of: Callable[[str], str],
    tenants: Tenants,
    *,
    ok: int = 200,
    publishable: bool,
    operator: str | None = "viewer",
    json: Any = None,
) -> list[Case]:
    """The standard cases of a tenant route (``path_of(customer)``): no credential or a bogus one 401,
    another customer's key 403 (its own customer's path or not), a publishable key 403 unless allowed,
    the right key ``ok``, the operator role ``ok``, an unknown customer's path with a key 403."""
    a, b = tenants.a, tenants.b
    cases = [
        Case("none", method, path_of(a), 401, json),
        Case("bogus", method, path_of(a), 401, json),
        Case("b.secret", method, path_of(a), 403, json),
        Case("b.publishable", method, path_of(a), 403, json),
        Case("a.secret", method, path_of(f"nobody-{uuid.uuid4().hex[:6]}"), 403, json),
        Case("a.publishable", method, path_of(a), ok if publishable else 403, json),
        Case("a.secret", method, path_of(a), ok, json),
        Case("b.secret", method, path_of(b), ok, json),
    ]
    if operator is not None:
        cases.append(Case(operator, method, path_of(a), ok, json))
    return cases


def check_origin_limits(base_url: str, database: Any, customer_id: str, method: str, path: str) -> None:
    """A browser's view of a route the SDK calls: a publishable key limited to one page's origin (``plg keys
    create C --publishable --origin URL``) is answered with CORS from that page, refused 403
    ``origin_not_allowed`` from any other — before the route runs, without CORS headers the page could read
    — and a secret key is refused from every page; servers (no ``Origin``) are not concerned."""
    page, other = "https://app.example", "https://evil.example"
    with psycopg.connect(_url(database), autocommit=True) as conn:
        limited = apikeys.create_key(
            conn, customer_id, "origin test", kind="publishable", allowed_origins=[page]
        )[1]
        secret = apikeys.create_key(conn, customer_id, "origin test secret", kind="secret")[1]
    with httpx.Client(base_url=base_url, timeout=30) as client:

        def call(token: str, origin: str | None) -> httpx.Response:
            headers = bearer(token) | ({"Origin": origin} if origin else {})
            return client.request(method, path, headers=headers, json={} if method == "POST" else None)

        ok = call(limited, page)
        assert ok.status_code == 200, ok.text
        assert ok.headers["access-control-allow-origin"] == page
        for token, origin in ((limited, other), (secret, page)):
            refused = call(token, origin)
            assert refused.status_code == 403, refused.text
            assert refused.json()["code"] == "origin_not_allowed"
            assert "access-control-allow-origin" not in refused.headers
        assert call(limited, None).status_code == 200
        assert call(secret, None).status_code == 200
