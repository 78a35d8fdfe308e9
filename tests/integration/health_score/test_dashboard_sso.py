"""The CS dashboard's sign-in against a real OpenID Connect provider (zitadel/oidc's example OP, built into
``.plg/bin`` by ``make install``): headless Chromium signs in on the provider's own login page and reaches
the dashboard; the role the provider's claim maps to decides what the operator may do; without a session
no customer is shown; a tampered, replayed or expired state, a wrong nonce or PKCE verifier is refused; an
operator token pasted on the login page gives a session too."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import psycopg
import pytest

from services.devstack import oidc_provider
from services.devstack.config import StackSettings, free_port
from services.devstack.oidc_provider import User
from services.kernel import apikeys
from services.kernel.oidc import OidcSettings
from services.kernel.sessions import COOKIE, STATE_COOKIE
from tests.integration.health_score.harness import Health, enriched, wait_for
from tests.integration.metering.harness import RunningApi

pytestmark = pytest.mark.integration

# The provider's users; the role claim is "email" (as with Google, whose ID tokens carry no groups), mapped
# by PLG_OIDC_ROLE_MAP. The example provider puts e-mail only in its userinfo answer, so this also covers
# claims fetched from userinfo.
ADA = User("u-ada", "ada", "ada-Passw0rd", "ada@example.com")  # admin
VIC = User("u-vic", "vic", "vic-Passw0rd", "vic@example.com")  # viewer
EVE = User("u-eve", "eve", "eve-Passw0rd", "eve@example.com")  # no plg role
ROLE_MAP = {ADA.email: "admin", VIC.email: "viewer"}


@dataclass
class Sso:
    api: RunningApi
    issuer: str
    customer: str
    operator_name: str
    operator_token: str
    database_url: str


@pytest.fixture(scope="module")
def provider_binary() -> Path:
    bin_dir = StackSettings().bin_dir
    oidc_provider.ensure_installed(bin_dir)  # present after `make install`; built once otherwise
    return oidc_provider.binary(bin_dir)


@pytest.fixture
def sso(health: Health, provider_binary: Path, tmp_path: Path) -> Iterator[Sso]:
    port, op_port = free_port(), free_port()
    users = oidc_provider.write_users(tmp_path / "users.json", [ADA, VIC, EVE])
    log = (tmp_path / "provider.log").open("wb")
    env = oidc_provider.environment(op_port, [f"http://127.0.0.1:{port}/auth/callback"], users)
    process = subprocess.Popen([str(provider_binary)], env=env, stdout=log, stderr=subprocess.STDOUT)
    issuer = oidc_provider.issuer(op_port)
    try:
        wait_for(
            lambda: _answers(f"{issuer}.well-known/openid-configuration") or process.poll() is not None,
            timeout=30,
            what="the OIDC provider",
        )
        assert process.poll() is None, (tmp_path / "provider.log").read_text()
        oidc = OidcSettings(
            issuer=issuer,
            client_id=oidc_provider.CLIENT_ID,
            client_secret=oidc_provider.CLIENT_SECRET,
            role_claim="email",
            role_map=ROLE_MAP,
        )
        url = health.database.url.get_secret_value()
        customer = health.customer("sso-co")
        with psycopg.connect(url, autocommit=True) as conn:
            operator = f"{health.prefix}cs-bot"
            _, token = apikeys.create_operator(conn, operator, "viewer")
        api = health.start(port=port, oidc=oidc)
        health.send(enriched(customer, "core_action_completed"))
        with api.client() as client:
            wait_for(
                lambda: client.get(f"/v1/health/{customer}", headers=_bearer(token)).status_code == 200,
                what="the customer's first score",
            )
        yield Sso(api, issuer, customer, operator, token, url)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _sign_in(page: Any, sso: Sso, user: User) -> None:
    """From the dashboard's login page through the provider's own login form."""
    page.goto(sso.api.url + "/")
    assert "/auth/login" in page.url
    page.click("#sso")
    page.wait_for_url(re.compile(re.escape(sso.issuer) + "login/"))
    page.fill("#username", user.username)
    page.fill("#password", user.password)
    page.click("button[type=submit]")


def test_sso_sign_in_reaches_the_dashboard_and_the_role_decides(sso: Sso, browser: Any) -> None:
    admin = browser.new_context()
    page = admin.new_page()
    page.goto(sso.api.url + "/")
    # No session: the login page, and no customer on it.
    assert urlsplit(page.url).path == "/auth/login"
    assert sso.customer not in page.content()
    assert page.request.get(sso.api.url + "/v1/health/stream").status == 401

    _sign_in(page, sso, ADA)
    page.wait_for_url(sso.api.url + "/")  # back where the operator started: "/" (the login page's next)
    page.locator(f"#c-{sso.customer}").wait_for(timeout=10_000)
    assert page.locator("#operator").inner_text() == ADA.email
    assert page.locator("#role").inner_text() == "admin"
    cookie = next(c for c in admin.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Lax"
    assert not cookie["secure"]
    assert len(cookie["value"]) >= 43  # 256 bits
    # The session is an operator credential for the API and the live stream too.
    listed = page.request.get(sso.api.url + "/v1/health")
    assert listed.status == 200
    assert sso.customer in listed.text()
    assert httpx.get(sso.api.url + "/v1/health").status_code == 401

    # Admins see who is signed in; the session id itself is nowhere in the database, only its hash.
    page.click("#sessions-link")
    page.locator("#sessions", has_text=ADA.email).wait_for(timeout=10_000)
    with psycopg.connect(sso.database_url) as conn:
        stored = conn.execute(
            "SELECT encode(session_sha256, 'hex'), role, via FROM operator_sessions WHERE operator_name = %s",
            (ADA.email,),
        ).fetchall()
    assert stored
    assert all(row[1:] == ("admin", "oidc") for row in stored)
    assert all(cookie["value"] not in row[0] for row in stored)

    viewer = browser.new_context()
    vpage = viewer.new_page()
    _sign_in(vpage, sso, VIC)
    vpage.wait_for_url(sso.api.url + "/")
    vpage.locator(f"#c-{sso.customer}").wait_for(timeout=10_000)
    assert vpage.locator("#role").inner_text() == "viewer"
    assert vpage.locator("#sessions-link").count() == 0
    denied = vpage.goto(sso.api.url + "/auth/sessions")
    assert denied is not None
    assert denied.status == 403
    assert "admin" in vpage.locator("#error").inner_text()

    # An admin ends the viewer's session; the viewer's next page is the login page.
    page.goto(sso.api.url + "/auth/sessions")
    page.locator("#sessions tr", has_text=VIC.email).locator("button").click()
    page.wait_for_url(sso.api.url + "/auth/sessions")
    assert page.locator("#sessions", has_text=VIC.email).count() == 0
    vpage.goto(sso.api.url + "/")
    assert urlsplit(vpage.url).path == "/auth/login"

    # Logout ends the session server-side: the old cookie no longer opens anything.
    page.goto(sso.api.url + "/")
    page.click("#logout")
    page.wait_for_url(re.compile(r".*/auth/login.*"))
    assert httpx.get(sso.api.url + "/v1/health", cookies={COOKIE: cookie["value"]}).status_code == 401
    page.goto(sso.api.url + "/")
    assert urlsplit(page.url).path == "/auth/login"
    admin.close()
    viewer.close()


def test_a_person_without_a_mapped_role_is_refused_with_a_clear_page(sso: Sso, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, sso, EVE)
    page.locator("#error").wait_for(timeout=10_000)
    text = page.locator("#error").inner_text()
    assert "no plg role" in text
    assert EVE.email in text
    assert "PLG_OIDC_ROLE_MAP" in text
    assert not any(c["name"] == COOKIE for c in context.cookies())
    assert sso.customer not in page.content()
    context.close()


# -- the callback's checks, driven over HTTP through the same provider -------------------------------------


def _start(client: httpx.Client) -> str:
    """Start a login at the dashboard; returns the provider's authorization URL."""
    answer = client.get("/auth/oidc/start", params={"next": "/"})
    assert answer.status_code == 303
    return answer.headers["location"]


def _state_of(authorization_url: str) -> str:
    return parse_qs(urlsplit(authorization_url).query)["state"][0]


def _through_the_provider(authorization_url: str, user: User) -> str:
    """What the browser would do at the provider: open its login form, post the user's password, follow
    redirects until it sends us back; returns our callback URL with its code and state."""
    ours = parse_qs(urlsplit(authorization_url).query)["redirect_uri"][0]
    with httpx.Client(timeout=10) as idp:
        answer = idp.get(authorization_url)
        while answer.status_code in (302, 303):
            answer = idp.get(urljoin(str(answer.url), answer.headers["location"]))
        form_id = re.search(r'name="id" value="([^"]+)"', answer.text)
        assert form_id, answer.text[:500]
        action = urljoin(str(answer.url), "/login/username")
        answer = idp.post(
            action, data={"id": form_id.group(1), "username": user.username, "password": user.password}
        )
        while not answer.headers.get("location", "").startswith(ours):
            assert answer.status_code in (302, 303), answer.text[:500]
            answer = idp.get(urljoin(str(answer.url), answer.headers["location"]))
        return answer.headers["location"]


def _callback(client: httpx.Client, callback_url: str) -> httpx.Response:
    parts = urlsplit(callback_url)
    return client.get(f"{parts.path}?{parts.query}")


def test_the_callback_refuses_forged_replayed_and_expired_states(sso: Sso) -> None:
    with httpx.Client(base_url=sso.api.url, timeout=10) as client:
        # A callback whose state is not the one this browser started.
        url = _start(client)
        forged = client.get("/auth/callback", params={"code": "x", "state": "forged-state"})
        assert forged.status_code == 400
        assert "expired" in forged.text
        # The same real state, but in a browser without the state cookie (a planted link).
        with httpx.Client(base_url=sso.api.url, timeout=10) as other:
            planted = _callback(other, _through_the_provider(url, ADA))
            assert planted.status_code == 400
            assert COOKIE not in planted.cookies

        # A good login signs in once; the same callback again is refused.
        callback = _through_the_provider(_start(client), ADA)
        first = _callback(client, callback)
        assert first.status_code == 303
        assert first.headers["location"] == "/"
        assert first.cookies.get(COOKIE)
        client.cookies.set(STATE_COOKIE, _state_of(callback), path="/auth")
        client.cookies.delete(COOKIE)
        replayed = _callback(client, callback)
        assert replayed.status_code == 400
        assert COOKIE not in replayed.cookies

        # A login that took longer than PLG_OIDC_LOGIN_TIMEOUT_SECONDS.
        late = _start(client)
        with psycopg.connect(sso.database_url, autocommit=True) as conn:
            conn.execute("UPDATE oidc_login_attempts SET expires_at = now() - interval '1 second'")
        expired = _callback(client, _through_the_provider(late, ADA))
        assert expired.status_code == 400
        assert "expired" in expired.text


def test_a_wrong_nonce_or_pkce_verifier_is_refused(sso: Sso) -> None:
    with httpx.Client(base_url=sso.api.url, timeout=10) as client:
        for column, why in (("nonce", "nonce"), ("code_verifier", "refused the login")):
            url = _start(client)
            with psycopg.connect(sso.database_url, autocommit=True) as conn:
                # As if the provider's answer belonged to another login: the ID token's nonce (or the code's
                # PKCE challenge) no longer matches what this login remembers.
                conn.execute(
                    f"UPDATE oidc_login_attempts SET {column} = 'tampered-value-0123456789-0123456789-0123'"
                )
            answer = _callback(client, _through_the_provider(url, ADA))
            assert answer.status_code in (400, 403), answer.text
            assert why in answer.text
            assert COOKIE not in answer.cookies


def test_an_operator_token_pasted_on_the_login_page_gives_a_session(sso: Sso) -> None:
    with httpx.Client(base_url=sso.api.url, timeout=10) as client:
        form = client.get("/auth/login", params={"next": f"/customers/{sso.customer}"})
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert form.status_code == 200
        assert csrf
        wrong_csrf = client.post("/auth/token", data={"token": sso.operator_token, "csrf": "x", "next": "/"})
        assert wrong_csrf.status_code == 403
        assert COOKIE not in wrong_csrf.cookies
        bad = client.post("/auth/token", data={"token": "plgop_nope_nope", "csrf": csrf.group(1)})
        assert bad.status_code == 401
        signed_in = client.post(
            "/auth/token",
            data={"token": sso.operator_token, "csrf": csrf.group(1), "next": f"/customers/{sso.customer}"},
        )
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == f"/customers/{sso.customer}"
        dashboard = client.get(f"/customers/{sso.customer}")
        assert dashboard.status_code == 200
        assert 'id="role">viewer' in dashboard.text
        # Revoking the operator's token ends the sessions it opened.
        with psycopg.connect(sso.database_url, autocommit=True) as conn:
            apikeys.revoke_operator(conn, sso.operator_name)
        assert client.get("/v1/health").status_code == 401
