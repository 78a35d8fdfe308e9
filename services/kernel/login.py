"""The operators' sign-in for plg's browser pages (the CS dashboard): the login page, single sign-on through
the OIDC provider, a pasted operator token as the fallback for installs without SSO, logout, and the admins'
list of live sessions (docs/security.md "Browser sessions and single sign-on").

A service with browser pages wires it in two lines: ``login.mount(app)`` in ``build_app`` (the routes
below and the pages' answers), and ``login.install(app, BrowserLogin(...))`` once its database pool is
open; its pages declare ``Depends(login.operator_page(Role.viewer))`` — without a session
they redirect to the login page, and its APIs keep ``auth.operator(...)`` (401 without a credential).

Routes (all under ``/auth``): ``GET /auth/login``, ``POST /auth/token``, ``GET /auth/oidc/start``,
``GET /auth/callback``, ``POST /auth/logout``, ``GET /auth/sessions``, ``POST /auth/sessions/revoke``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, FastAPI, Query
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from services.kernel import apikeys, auth
from services.kernel.apikeys import CredentialError
from services.kernel.auth import Operator, OperatorPolicy, Role
from services.kernel.http import HttpError
from services.kernel.oidc import LoginAttempt, OidcClient, OidcError, OidcSettings, random_token
from services.kernel.sessions import (
    LOGIN_CSRF_COOKIE,
    STATE_COOKIE,
    Session,
    SessionSettings,
    SessionStore,
    same,
)
from services.kernel.settings import AuthSettings

log = logging.getLogger(__name__)

LOGIN_PATH = "/auth/login"
CALLBACK_PATH = "/auth/callback"
MAX_FORM_BYTES = 8192
_STATE = "plg_browser_login"
_NEXT: Any = Query(default=None, alias="next", max_length=2000)


@dataclass(frozen=True, slots=True)
class BrowserLogin:
    """What the sign-in routes need: the session store and, when SSO is configured, the OIDC client."""

    store: SessionStore
    oidc: OidcClient | None
    oidc_settings: OidcSettings

    async def aclose(self) -> None:
        if self.oidc is not None:
            await self.oidc.aclose()


def open_browser_login(
    connect: Callable[[], Any], auth_settings: AuthSettings, sessions: SessionSettings, oidc: OidcSettings
) -> tuple[auth.Authenticator, BrowserLogin]:
    """The authenticator of a service with operator pages, its sessions an operator credential, and the
    sign-in's :class:`BrowserLogin` (SSO when ``PLG_OIDC_ISSUER`` is set); ``connect`` gives a database
    connection (the service's pool). Blocking: call it where the pool was opened, off the event loop."""
    authenticator = auth.open_authenticator(connect, auth_settings)
    store = SessionStore(connect, sessions)
    authenticator.sessions = store.resolve  # a signed-in browser is an operator credential
    return authenticator, BrowserLogin(store, OidcClient(oidc) if oidc.enabled else None, oidc)


def install(app: Any, login: BrowserLogin | None) -> None:
    """Put (or take away) the app's browser login, and make its sessions an operator credential."""
    setattr(app.state, _STATE, login)


def login_of(request: Request) -> BrowserLogin:
    found = getattr(request.app.state, _STATE, None)
    if found is None:
        raise HttpError(
            503, "service_unavailable", "the service is starting or stopping", {"Retry-After": "1"}
        )
    return found  # type: ignore[no-any-return]


# -- pages ---------------------------------------------------------------------------------------------------

_STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2230}"
    "main{max-width:460px;margin:9vh auto;background:#fff;padding:28px 32px;border-radius:8px;"
    "box-shadow:0 1px 4px #0002}h1{font-size:21px;margin:0 0 18px}label{display:block;margin:14px 0 4px}"
    "input[type=password]{width:100%;box-sizing:border-box;padding:8px;font:inherit}"
    ".button,button{display:inline-block;margin-top:14px;padding:9px 16px;border:0;border-radius:5px;"
    "background:#4a67d6;color:#fff;font:inherit;text-decoration:none;cursor:pointer}"
    ".alt{background:#59607a}.error{color:#b3261e;background:#fbeaea;padding:10px;border-radius:5px}"
    "hr{border:0;border-top:1px solid #e3e5ea;margin:22px 0}table{border-collapse:collapse;width:100%}"
    "td,th{text-align:left;padding:5px 8px;border-bottom:1px solid #eee}.muted{color:#6b7285}"
    "main.wide{max-width:900px}"
)


def page(title: str, body: str, status: int = 200, wide: bool = False) -> HTMLResponse:
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} - plg</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>'
        f"<body><main{' class=wide' if wide else ''}>{body}</main></body></html>"
    )
    # Pages that carry CSRF tokens or say who is signed in are never cached or framed.
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' "
            "; frame-ancestors 'none'",
            "Referrer-Policy": "no-referrer",
        },
    )


def refused(status: int, title: str, message: str) -> HTMLResponse:
    body = (
        f'<h1>{escape(title)}</h1><p class="error" id="error">{escape(message)}</p>'
        f'<a class="button" href="{LOGIN_PATH}">Back to sign-in</a>'
    )
    return page(title, body, status)


def safe_next(value: str | None) -> str:
    """A same-site path to go to after signing in; anything else (another host, ``//evil``) becomes ``/``."""
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(c in value for c in "\r\n\\") or ":" in value.split("?", 1)[0]:
        return "/"
    return value


def operator_header(session: Session | None, operator: Operator) -> str:
    """The strip a page shows: who is signed in, their role, the sessions page for admins, and logout."""
    sessions = (
        ' · <a id="sessions-link" href="/auth/sessions">sessions</a>' if operator.role >= Role.admin else ""
    )
    logout = (
        f'<form method="post" action="/auth/logout" class="logout" style="display:inline">'
        f'<input type="hidden" name="csrf" value="{escape(session.csrf)}">'
        f'<button type="submit" id="logout">Log out</button></form>'
        if session is not None
        else ""
    )
    return (
        f'<span class="who"><span id="operator">{escape(operator.name)}</span> · '
        f'<span id="role">{escape(operator.role.name)}</span>{sessions} {logout}</span>'
    )


# -- the policy of browser pages -----------------------------------------------------------------------------


class LoginRequired(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class PageRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class PageCaller:
    """The operator a page is for, and their session when they came with one (for the CSRF token)."""

    operator: Operator
    session: Session | None

    def header(self) -> str:
        return operator_header(self.session, self.operator)


class OperatorPage(OperatorPolicy):
    """:func:`auth.operator` for HTML pages: without a credential the browser goes to the login page (with
    ``next``) instead of a JSON 401; below the role it gets a 403 page."""

    def describe(self) -> str:
        return f"operator ≥ {self.role.name} (browser session or token; no credential: the login page)"

    async def __call__(self, request: Request) -> PageCaller:  # type: ignore[override]
        try:
            operator = await super().__call__(request)
        except HttpError as exc:
            if exc.status == 401:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                raise LoginRequired(safe_next(target)) from None
            raise PageRefused(exc.status, exc.message) from None
        found = getattr(request.app.state, _STATE, None)
        session = await found.store.current(request) if isinstance(found, BrowserLogin) else None
        return PageCaller(operator, session if operator.via == "session" else None)


def operator_page(role: Role) -> OperatorPage:
    return OperatorPage(role)


def mount(app: FastAPI) -> None:
    """What every service with operator pages does in ``build_app``: the sign-in routes (:func:`router`) and
    the answers of its pages' policy (:func:`install_handlers`); ``install(app, BrowserLogin(...))`` follows
    in its lifespan, once the database pool is open."""
    app.include_router(router())
    install_handlers(app)


def install_handlers(app: FastAPI) -> None:
    """Answers of :class:`OperatorPage`: a redirect to the login page, or a refusal page."""

    async def to_login(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return RedirectResponse(f"{LOGIN_PATH}?{urlencode({'next': exc.next_path})}", status_code=303)

    async def refusal(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageRefused)
        return refused(exc.status, "Not allowed", exc.message)

    app.add_exception_handler(LoginRequired, to_login)
    app.add_exception_handler(PageRefused, refusal)


# -- the routes ----------------------------------------------------------------------------------------------


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form (the login and logout forms); anything else is refused precisely."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise HttpError(415, "unsupported_media_type", "send the form as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HttpError(413, "payload_too_large", f"a form of at most {MAX_FORM_BYTES} bytes")
    try:
        parsed = parse_qs(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=20, strict_parsing=False
        )
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "invalid_form", "the form is not valid urlencoded UTF-8") from None
    return {k: v[0] for k, v in parsed.items() if v}


def _login_page(
    request: Request, login: BrowserLogin, next_path: str, error: str | None = None, status: int = 200
) -> HTMLResponse:
    csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or random_token()
    sso = (
        f'<a class="button" id="sso" href="/auth/oidc/start?{urlencode({"next": next_path})}">'
        "Sign in with single sign-on</a><hr>"
        if login.oidc is not None
        else ""
    )
    message = f'<p class="error" id="error">{escape(error)}</p>' if error else ""
    body = (
        f"<h1>Sign in to plg</h1>{message}{sso}"
        f'<form method="post" action="/auth/token">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        '<label for="token">Operator token <span class="muted">(from <code>plg operators create</code>)'
        "</span></label>"
        '<input type="password" id="token" name="token" autocomplete="off" required>'
        f'<button type="submit" id="token-login" class="{"alt" if sso else ""}">Sign in with a token</button>'
        "</form>"
    )
    response = page("Sign in", body, status)
    # Double-submit: a form posted from another site cannot know this cookie's value.
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        csrf,
        max_age=3600,
        path="/auth",
        secure=login.store.cookie_secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


def _callback_url(request: Request, settings: OidcSettings) -> str:
    return settings.redirect_uri or str(request.base_url).rstrip("/") + CALLBACK_PATH


def router() -> APIRouter:
    """The sign-in routes; each declares its policy (the login flow is public, by nature)."""
    routes = APIRouter(include_in_schema=False)
    login_flow: Any = Depends(auth.public("the operators' sign-in flow (it creates the credential)"))

    @routes.get(LOGIN_PATH, dependencies=[login_flow])
    async def login_page(request: Request, next_path: str | None = _NEXT) -> Response:
        login = login_of(request)
        current = await login.store.current(request)
        target = safe_next(next_path)
        if current is not None:
            return RedirectResponse(target, status_code=303)
        return _login_page(request, login, target)

    @routes.post("/auth/token", dependencies=[login_flow])
    async def token_login(request: Request) -> Response:
        login = login_of(request)
        form = await read_form(request)
        target = safe_next(form.get("next"))
        if not same(form.get("csrf"), request.cookies.get(LOGIN_CSRF_COOKIE)):
            return _login_page(request, login, target, "The form expired; try again.", 403)
        token = form.get("token", "").strip()
        try:
            principal = await auth.authenticator_of(request).from_token(token)
        except CredentialError:
            return _login_page(
                request, login, target, "That token is not valid (unknown, revoked or mistyped).", 401
            )
        if not isinstance(principal, Operator):
            return _login_page(
                request, login, target, "That is a customer API key; sign in with an operator token.", 403
            )
        parts = apikeys.split(token)
        operator_id = parts[1] if parts is not None and parts[0] == apikeys.OPERATOR_PREFIX else None
        session_id = await asyncio.to_thread(
            login.store.create,
            principal.name,
            principal.role,
            via="token",
            subject=operator_id or f"configured:{principal.name}",
            operator_id=operator_id,
        )
        log.info("operator signed in", extra={"operator": principal.name, "via": "token"})
        response = RedirectResponse(target, status_code=303)
        login.store.set_cookie(response, request, session_id)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/auth")
        return response

    @routes.get("/auth/oidc/start", dependencies=[login_flow])
    async def oidc_start(request: Request, next_path: str | None = _NEXT) -> Response:
        login = login_of(request)
        if login.oidc is None:
            return refused(404, "Single sign-on is off", "This plg has no identity provider configured.")
        attempt = LoginAttempt.new(safe_next(next_path))
        try:
            url = await login.oidc.authorization_url(attempt, _callback_url(request, login.oidc_settings))
        except OidcError as exc:
            log.warning("oidc login could not start", extra={"code": exc.code, "reason": exc.message})
            return refused(exc.status, "Single sign-on is unavailable", exc.message)
        ttl = login.oidc_settings.login_timeout_seconds
        await asyncio.to_thread(login.store.save_attempt, attempt, ttl)
        response = RedirectResponse(url, status_code=303)
        # The state is bound to this browser too: a callback URL planted in another browser (login CSRF)
        # arrives without the cookie and is refused.
        response.set_cookie(
            STATE_COOKIE,
            attempt.state,
            max_age=ttl,
            path="/auth",
            secure=login.store.cookie_secure(request),
            httponly=True,
            samesite="lax",
        )
        return response

    @routes.get(CALLBACK_PATH, dependencies=[login_flow])
    async def oidc_callback(
        request: Request,
        code: str | None = None,
        state: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> Response:
        login = login_of(request)
        if login.oidc is None:
            return refused(404, "Single sign-on is off", "This plg has no identity provider configured.")
        if error:
            detail = f" ({error_description[:300]})" if error_description else ""
            return refused(403, "Sign-in cancelled", f"The identity provider answered {error[:100]}{detail}.")
        if not code or not state:
            return refused(400, "Sign-in failed", "The identity provider's answer has no code or state.")
        bound = request.cookies.get(STATE_COOKIE)
        attempt = await asyncio.to_thread(login.store.take_attempt, state) if same(state, bound) else None
        if attempt is None:
            log.warning("oidc callback with an unknown, replayed, expired or foreign state")
            return refused(
                400,
                "Sign-in expired",
                "This sign-in link is expired, was already used, or was started in another browser. "
                "Sign in again.",
            )
        try:
            identity = await login.oidc.finish(code, attempt, _callback_url(request, login.oidc_settings))
        except OidcError as exc:
            log.warning("oidc login refused", extra={"code": exc.code, "reason": exc.message})
            title = "No plg role" if exc.code == "no_role" else "Sign-in failed"
            return refused(exc.status, title, exc.message)
        session_id = await asyncio.to_thread(
            login.store.create, identity.name, identity.role, via="oidc", subject=identity.subject
        )
        log.info(
            "operator signed in", extra={"operator": identity.name, "via": "oidc", "role": identity.role.name}
        )
        response = RedirectResponse(attempt.return_to, status_code=303)
        login.store.set_cookie(response, request, session_id)
        response.delete_cookie(STATE_COOKIE, path="/auth")
        return response

    @routes.post("/auth/logout", dependencies=[login_flow])
    async def logout(request: Request) -> Response:
        login = login_of(request)
        form = await read_form(request)
        session_id = login.store.session_id(request)
        current = await login.store.current(request)
        if current is not None and session_id is not None:
            if not same(form.get("csrf"), current.csrf):
                return refused(403, "Not signed out", "The form expired; reload the page and log out again.")
            await asyncio.to_thread(login.store.revoke, session_id)
            log.info("operator signed out", extra={"operator": current.operator.name})
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        login.store.clear_cookie(response, request)
        return response

    admin_page: Any = Depends(operator_page(Role.admin))

    @routes.get("/auth/sessions")
    async def sessions_page(request: Request, caller: PageCaller = admin_page) -> Response:
        login = login_of(request)
        rows = await asyncio.to_thread(login.store.active)
        csrf = caller.session.csrf if caller.session is not None else ""
        items = "".join(
            f'<tr id="s-{escape(r.key)}"><td>{escape(r.operator_name)}</td><td>{escape(r.role)}</td>'
            f"<td>{escape(r.via)}</td><td>{r.created_at:%Y-%m-%d %H:%M} UTC</td>"
            f"<td>{r.expires_at:%Y-%m-%d %H:%M} UTC</td><td>"
            f'<form method="post" action="/auth/sessions/revoke"><input type="hidden" name="csrf" '
            f'value="{escape(csrf)}"><input type="hidden" name="key" value="{escape(r.key)}">'
            f'<button type="submit" class="alt">Revoke</button></form></td></tr>'
            for r in rows
        )
        body = (
            f'<p><a href="/">dashboard</a> · {caller.header()}</p><h1>Signed-in operators</h1>'
            "<table><thead><tr><th>operator</th><th>role</th><th>via</th><th>since</th><th>until</th>"
            f'<th></th></tr></thead><tbody id="sessions">{items}</tbody></table>'
        )
        return page("Sessions", body, wide=True)

    @routes.post("/auth/sessions/revoke")
    async def revoke_session(request: Request, caller: PageCaller = admin_page) -> Response:
        login = login_of(request)
        form = await read_form(request)
        if caller.session is None or not same(form.get("csrf"), caller.session.csrf):
            return refused(403, "Not revoked", "The form expired; reload the sessions page and try again.")
        await asyncio.to_thread(login.store.revoke_key, form.get("key", ""))
        log.info("operator session revoked", extra={"operator": caller.operator.name})
        return RedirectResponse("/auth/sessions", status_code=303)

    return routes
