"""Route policies: who gets 401, who gets 403, and that the customer always comes from the key."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from services.kernel import apikeys, auth
from services.kernel.apikeys import CredentialCache, KeyCache, KeyRecord, OperatorRecord
from services.kernel.auth import Caller, Operator, Role
from services.kernel.http import install_error_handlers
from services.kernel.ops import ops_routes


def _keys() -> tuple[dict[str, Any], dict[str, str]]:
    rows: dict[str, Any] = {}
    tokens: dict[str, str] = {}
    for name, customer, kind in [
        ("a_secret", "acme", "secret"),
        ("a_pub", "acme", "publishable"),
        ("b_secret", "beta", "secret"),
    ]:
        prefix = apikeys.KEY_PREFIX if kind == "secret" else apikeys.PUBLISHABLE_PREFIX
        g = apikeys.generate(prefix)
        rows[g.key_id] = KeyRecord(g.key_id, customer, g.secret_sha256, False, kind)  # type: ignore[arg-type]
        tokens[name] = g.token
    g = apikeys.generate()
    rows[g.key_id] = KeyRecord(g.key_id, "acme", g.secret_sha256, True, "secret")
    tokens["revoked"] = g.token
    return rows, tokens


def _operators() -> tuple[dict[str, Any], dict[str, str]]:
    rows: dict[str, Any] = {}
    tokens: dict[str, str] = {}
    for role in ("viewer", "editor", "admin"):
        g = apikeys.generate(apikeys.OPERATOR_PREFIX)
        rows[g.key_id] = OperatorRecord(g.key_id, f"{role}@example.com", role, g.secret_sha256, False)
        tokens[role] = g.token
    return rows, tokens


KEY_ROWS, KEYS = _keys()
OP_ROWS, OPS = _operators()


def _app(sessions: Any = None) -> FastAPI:
    async def key_lookup(key_id: str) -> Any:
        return KEY_ROWS.get(key_id)

    async def op_lookup(key_id: str) -> Any:
        return OP_ROWS.get(key_id)

    app = FastAPI()
    auth.install(
        app,
        auth.Authenticator(KeyCache(key_lookup, 10, 1), CredentialCache(op_lookup, 10, 1), sessions=sessions),
    )

    @app.get("/secret/{customer_id}")
    async def secret(
        customer_id: str, caller: Annotated[Caller, Depends(auth.secret_key())]
    ) -> dict[str, Any]:
        return {"customer": caller.customer_id, "operator": bool(caller.operator)}

    @app.get("/pub/{customer_id}")
    async def pub(
        customer_id: str, caller: Annotated[Caller, Depends(auth.publishable_key())]
    ) -> dict[str, Any]:
        return {"customer": caller.customer_id}

    @app.post("/send")
    async def send(
        caller: Annotated[Caller, Depends(auth.publishable_key(customer_param=None, operator_role=None))],
    ) -> dict[str, Any]:
        return {"customer": caller.customer_id}

    @app.patch("/admin")
    async def admin(op: Annotated[Operator, Depends(auth.operator(Role.editor))]) -> dict[str, Any]:
        return {"name": op.name, "via": op.via}

    ops_routes(app, {})
    install_error_handlers(app, service="test")
    return app


def _get(client: TestClient, method: str, path: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.request(method, path, headers=headers)


@pytest.mark.parametrize(
    ("method", "path", "token", "status"),
    [
        # no credential, or a bad one: 401
        ("GET", "/secret/acme", None, 401),
        ("GET", "/secret/acme", "plg_nonsense", 401),
        ("GET", "/secret/acme", "revoked", 401),
        ("POST", "/send", None, 401),
        ("PATCH", "/admin", None, 401),
        # the right key
        ("GET", "/secret/acme", "a_secret", 200),
        ("GET", "/pub/acme", "a_secret", 200),
        ("GET", "/pub/acme", "a_pub", 200),
        ("POST", "/send", "a_pub", 200),
        # another customer's key: 403, whether or not the customer exists
        ("GET", "/secret/acme", "b_secret", 403),
        ("GET", "/pub/acme", "b_secret", 403),
        ("GET", "/secret/nobody", "a_secret", 403),
        # a publishable key where a secret one is needed
        ("GET", "/secret/acme", "a_pub", 403),
        # operators
        ("GET", "/secret/acme", "viewer", 200),
        ("POST", "/send", "admin", 403),
        ("PATCH", "/admin", "viewer", 403),
        ("PATCH", "/admin", "editor", 200),
        ("PATCH", "/admin", "admin", 200),
        ("PATCH", "/admin", "a_secret", 403),
        # ops endpoints stay public
        ("GET", "/livez", None, 200),
    ],
)
def test_route_policies_answer_401_403_or_pass(
    method: str, path: str, token: str | None, status: int
) -> None:
    with TestClient(_app()) as client:
        answer = _get(client, method, path, KEYS.get(token or "") or OPS.get(token or "") or token)
        assert answer.status_code == status, answer.text
        if status == 401:
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert answer.json()["code"] == "unauthorized"
        if status == 403:
            assert answer.json()["code"] == "forbidden"


def test_the_customer_comes_from_the_key_and_operators_act_for_the_path() -> None:
    with TestClient(_app()) as client:
        assert _get(client, "POST", "/send", KEYS["b_secret"]).json() == {"customer": "beta"}
        assert _get(client, "GET", "/secret/acme", OPS["viewer"]).json() == {
            "customer": "acme",
            "operator": True,
        }
        assert _get(client, "PATCH", "/admin", OPS["editor"]).json() == {
            "name": "editor@example.com",
            "via": "token",
        }


def test_a_browser_session_is_asked_when_there_is_no_bearer_token() -> None:
    async def session(request: Any) -> Operator | None:
        if request.cookies.get("sid") == "ok":
            return Operator("ann@example.com", Role.admin, "session")
        return None

    with TestClient(_app(session)) as client:
        assert client.patch("/admin").status_code == 401
        client.cookies.set("sid", "ok")
        assert client.patch("/admin").json() == {"name": "ann@example.com", "via": "session"}


def test_a_key_whose_prefix_disagrees_with_its_stored_kind_is_refused() -> None:
    secret_token = KEYS["a_secret"]
    disguised = "plgpk_" + secret_token.split("_", 1)[1]
    with TestClient(_app()) as client:
        assert _get(client, "GET", "/pub/acme", disguised).status_code == 401


def test_every_route_of_the_test_app_declares_one_policy() -> None:
    app = _app()
    for route in app.routes:
        assert len(auth.policies_of(route, app)) == 1, getattr(route, "path", route)


def test_basic_auth_password_is_taken_as_the_token() -> None:
    import base64

    basic = base64.b64encode(f"any:{OPS['admin']}".encode()).decode()
    with TestClient(_app()) as client:
        assert client.patch("/admin", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_a_cached_key_survives_a_database_outage() -> None:
    clock = [0.0]
    down = [False]
    g = apikeys.generate()
    row = KeyRecord(g.key_id, "acme", g.secret_sha256, False)

    async def lookup(key_id: str) -> KeyRecord | None:
        if down[0]:
            raise OSError("database down")
        return row

    async def go() -> None:
        cache = KeyCache(lookup, ttl=10, negative_ttl=1, clock=lambda: clock[0], stale_ttl=100)
        await cache.authenticate(f"Bearer {g.token}")
        down[0] = True
        clock[0] = 50  # expired, within the stale window: served from the cache
        assert (await cache.authenticate(f"Bearer {g.token}")).customer_id == "acme"
        clock[0] = 500  # beyond it: the outage shows
        with pytest.raises(OSError):
            await cache.authenticate(f"Bearer {g.token}")

    asyncio.run(go())
