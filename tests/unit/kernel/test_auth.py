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


def test_a_cached_key_survives_a_database_outage_without_waiting_on_it() -> None:
    clock = [0.0]
    down = [False]
    lookups = [0]
    g = apikeys.generate()
    row = KeyRecord(g.key_id, "acme", g.secret_sha256, False)

    async def lookup(key_id: str) -> KeyRecord | None:
        lookups[0] += 1
        if down[0]:
            raise OSError("database down")
        return row

    async def go() -> None:
        cache = KeyCache(lookup, ttl=10, negative_ttl=1, clock=lambda: clock[0], stale_ttl=100)
        await cache.authenticate(f"Bearer {g.token}")
        down[0] = True
        clock[0] = 20  # expired, within the stale window: the failed lookup, then the cached row
        assert (await cache.authenticate(f"Bearer {g.token}")).customer_id == "acme"
        assert lookups[0] == 2
        for t in (21, 25, 29):  # trusted again until 30: no request waits for the failing database
            clock[0] = t
            assert (await cache.authenticate(f"Bearer {g.token}")).customer_id == "acme"
        assert lookups[0] == 2
        clock[0] = 105  # the stale window counts from the last confirmation (0 + 10 + 100)
        await cache.authenticate(f"Bearer {g.token}")
        clock[0] = 111  # beyond it: the outage shows
        with pytest.raises(OSError):
            await cache.authenticate(f"Bearer {g.token}")

    asyncio.run(go())


def _limited_app(limit: int, clock: list[float], lookups: list[str]) -> FastAPI:
    async def key_lookup(key_id: str) -> Any:
        lookups.append(key_id)
        return KEY_ROWS.get(key_id)

    async def op_lookup(key_id: str) -> Any:
        lookups.append(key_id)
        return OP_ROWS.get(key_id)

    app = FastAPI()
    install_error_handlers(app, service="test")
    failed = auth.FailedAttempts(limit, 60, clock=lambda: clock[0])
    cache = KeyCache(key_lookup, 1000, 1000)
    auth.install(
        app, auth.Authenticator(cache, CredentialCache(op_lookup, 1000, 1000), failed_attempts=failed)
    )

    @app.post("/send")
    async def send(
        caller: Annotated[Caller, Depends(auth.publishable_key(customer_param=None, operator_role=None))],
    ) -> dict[str, Any]:
        return {"customer": caller.customer_id}

    return app


def _unknown_key() -> str:
    return apikeys.generate().token


def test_an_address_with_too_many_failed_keys_gets_429_without_a_lookup() -> None:
    clock = [0.0]
    lookups: list[str] = []
    app = _limited_app(3, clock, lookups)
    bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
    with TestClient(app, client=("203.0.113.7", 5000)) as guesser:
        assert guesser.post("/send", headers=bearer(KEYS["a_secret"])).status_code == 200  # cached now
        for _ in range(3):
            assert guesser.post("/send", headers=bearer(_unknown_key())).status_code == 401
        assert guesser.post("/send", headers=bearer("plg_malformed")).status_code == 429
        looked_up = len(lookups)
        refused = guesser.post("/send", headers=bearer(_unknown_key()))
        assert refused.status_code == 429
        assert refused.json()["code"] == "too_many_failed_attempts"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        # An uncached key would need a lookup: refused as well, and nothing was looked up.
        assert guesser.post("/send", headers=bearer(KEYS["b_secret"])).status_code == 429
        assert len(lookups) == looked_up
        # A key the cache holds as valid still passes (a good client behind the guesser's NAT).
        assert guesser.post("/send", headers=bearer(KEYS["a_secret"])).json() == {"customer": "acme"}
    with TestClient(app, client=("198.51.100.1", 5000)) as other:  # another address is not affected
        assert other.post("/send", headers=bearer(_unknown_key())).status_code == 401
    clock[0] = 61  # the window is over
    with TestClient(app, client=("203.0.113.7", 5000)) as guesser:
        assert guesser.post("/send", headers=bearer(_unknown_key())).status_code == 401
        assert guesser.post("/send", headers=bearer(KEYS["b_secret"])).json() == {"customer": "beta"}


def test_failed_attempts_are_bounded_and_a_zero_limit_is_off() -> None:
    clock = [0.0]
    failed = auth.FailedAttempts(1, 60, max_clients=3, clock=lambda: clock[0])
    for client in ("a", "b", "c", "d"):
        failed.failed(client)
    assert failed.retry_after("a") == 0  # forgotten: the oldest window went first
    assert [failed.retry_after(c) for c in ("b", "c", "d")] == [60, 60, 60]
    off = auth.FailedAttempts(0, 60)
    for _ in range(100):
        off.failed("a")
    assert off.retry_after("a") == 0
