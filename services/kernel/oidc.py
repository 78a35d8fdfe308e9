"""OpenID Connect single sign-on for operators: the relying party side of the authorization code flow with
PKCE, ``state`` and ``nonce`` (docs/security.md "Browser sessions and single sign-on").

``OidcClient`` discovers the provider (``<issuer>/.well-known/openid-configuration``), builds the
authorization URL, exchanges the code and validates the ID token: signature with the provider's JWKS (an
allow-list of asymmetric algorithms, never ``none`` or HMAC), ``iss``, ``aud`` (and ``azp``), ``exp``,
``iat``, ``nonce``. The operator's role comes from one configurable claim (``PLG_OIDC_ROLE_CLAIM``, looked
up in the ID token, then in the userinfo answer) mapped to a plg role by ``PLG_OIDC_ROLE_MAP``; a login
whose claim maps to no role is refused unless ``PLG_OIDC_DEFAULT_ROLE`` is set.

The pure parts (PKCE, token validation, role mapping) are functions, unit-tested without a provider; the
integration test drives the whole flow against a real provider in Chromium.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import (
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.kernel.auth import Role
from services.kernel.settings import DevDefault, PlgSettings

RoleName = Literal["viewer", "editor", "admin"]

#: Signature algorithms an ID token may use. Asymmetric only: ``none`` is never a signature, and HMAC
#: (HS256) would make the client secret a signing key, which a JWKS cannot carry anyway.
ALLOWED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DISCOVERY_TTL_SECONDS = 3600.0
#: A kid the cached JWKS does not know makes one refetch (key rotation), at most this often.
JWKS_REFETCH_MIN_SECONDS = 30.0
MAX_ID_TOKEN_CHARS = 16_384


class OidcSettings(PlgSettings):
    """``PLG_OIDC_*``: single sign-on through an OpenID Connect provider (off while ``issuer`` is unset)."""

    model_config = SettingsConfigDict(env_prefix="PLG_OIDC_", extra="ignore")

    # The provider's issuer URL, exactly as its discovery document names it (https; plain http only on
    # loopback, for tests and a local IdP).
    issuer: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    # The claim that carries the operator's groups or roles: a string or a list of strings; a dotted path
    # reaches into objects (Keycloak's ``realm_access.roles``).
    role_claim: str = "groups"
    # Claim value -> plg role, e.g. {"plg-admins": "admin", "plg-cs": "viewer"}. Several matching values:
    # the highest role wins.
    role_map: dict[str, RoleName] = Field(default_factory=dict)
    # The role of a signed-in person whose claim maps to no role. Unset (the default): such a login is
    # refused — an IdP usually federates the whole company, and plg shows every customer.
    default_role: RoleName | None = None
    # What names the operator in the UI and in audit rows (falls back to preferred_username, then sub).
    name_claim: str = "email"
    scopes: str = "openid email profile"
    # The callback URL registered at the provider; default: this service's own /auth/callback as the
    # browser reached it. Set it behind a proxy that rewrites the host or the scheme.
    redirect_uri: str | None = None
    http_timeout_seconds: float = Field(default=10.0, gt=0)
    # Clock skew tolerated on exp / iat.
    leeway_seconds: int = Field(default=60, ge=0, le=600)
    # How long a login may take at the provider (state, nonce and verifier are kept this long).
    login_timeout_seconds: int = Field(default=600, ge=30, le=3600)

    @field_validator("issuer", "client_id", "redirect_uri")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _complete(self) -> OidcSettings:
        if self.issuer is None:
            return self
        problems = []
        if not self.client_id:
            problems.append("PLG_OIDC_CLIENT_ID is required with PLG_OIDC_ISSUER")
        if self.client_secret is None or not self.client_secret.get_secret_value():
            problems.append("PLG_OIDC_CLIENT_SECRET is required with PLG_OIDC_ISSUER")
        if not _https_or_loopback(self.issuer):
            problems.append("PLG_OIDC_ISSUER must be an https URL (plain http only on a loopback host)")
        if "openid" not in self.scopes.split():
            problems.append("PLG_OIDC_SCOPES must include openid")
        if not self.role_map and self.default_role is None:
            problems.append(
                "set PLG_OIDC_ROLE_MAP (claim value -> viewer|editor|admin) or PLG_OIDC_DEFAULT_ROLE: "
                "otherwise no one could sign in"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def enabled(self) -> bool:
        return self.issuer is not None

    def development_defaults(self) -> list[DevDefault]:
        if self.issuer is not None and urlsplit(self.issuer).scheme != "https":
            return [
                DevDefault(
                    "PLG_OIDC_ISSUER",
                    "is plain http (a local test provider): ID tokens and the client secret would travel "
                    "unencrypted; use the IdP's https issuer",
                )
            ]
        return []


def _https_or_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


class OidcError(Exception):
    """A login that cannot go on: ``code`` for logs and tests, ``message`` for the person's page."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class RoleRefused(OidcError):
    def __init__(self, message: str) -> None:
        super().__init__("no_role", message, status=403)


# -- pure parts ---------------------------------------------------------------------------------------------


def random_token(nbytes: int = 32) -> str:
    """URL-safe text of ``nbytes`` random bytes (32: 256 bits)."""
    return secrets.token_urlsafe(nbytes)


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """What the relying party remembers between the redirect to the provider and the one back."""

    state: str
    nonce: str
    code_verifier: str
    return_to: str

    @classmethod
    def new(cls, return_to: str) -> LoginAttempt:
        # 43+ characters of the unreserved set, as RFC 7636 asks of a verifier (32 bytes → 43).
        return cls(random_token(), random_token(), random_token(), return_to)


def validate_id_token(
    id_token: str,
    keys: KeySet,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    algorithms: Iterable[str] = ALLOWED_ALGORITHMS,
    now: int | None = None,
    leeway: int = 60,
) -> dict[str, Any]:
    """The claims of a valid ID token (OIDC Core 3.1.3.7), else :class:`OidcError`.

    Raises ``OidcError("unknown_key")`` when no key of ``keys`` has the token's ``kid`` (the caller may
    refetch the JWKS once: the provider may have rotated its keys)."""
    if len(id_token) > MAX_ID_TOKEN_CHARS:
        raise OidcError("invalid_id_token", "the ID token is too large")
    allowed = [a for a in algorithms if a in ALLOWED_ALGORITHMS]
    try:
        token = jwt.decode(id_token, keys, algorithms=allowed)
    except InvalidKeyIdError:
        raise OidcError(
            "unknown_key", "the ID token is signed with a key the provider does not publish"
        ) from None
    except JoseError as exc:
        raise OidcError("invalid_id_token", f"the ID token's signature is not valid ({exc.error})") from None
    claims: dict[str, Any] = dict(token.claims)
    registry = jwt.JWTClaimsRegistry(
        now=int(time.time()) if now is None else now,
        leeway=leeway,
        iss={"essential": True, "value": issuer},
        sub={"essential": True},
        aud={"essential": True, "value": client_id},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise OidcError("expired_id_token", "the ID token has expired; sign in again") from None
    except (MissingClaimError, InvalidClaimError) as exc:
        raise OidcError(
            "invalid_id_token", f"the ID token's claim {exc.claim!r} is not valid ({exc.description})"
        ) from None
    except JoseError as exc:
        raise OidcError("invalid_id_token", f"the ID token is not valid ({exc.error})") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    # Several audiences: the token must say it was issued to us (azp); one: an azp, if any, must be us.
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise OidcError("invalid_id_token", "the ID token was issued to another client (azp)")
    return claims


def claim_values(claims: Mapping[str, Any], path: str) -> list[str]:
    """The string values at ``path`` (dots reach into objects): a string, a list of strings, or []."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return []
        value = value[part]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def has_claim(claims: Mapping[str, Any], path: str) -> bool:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def role_for(values: Iterable[str], role_map: Mapping[str, str], default: str | None, *, claim: str) -> Role:
    """The highest role any claim value maps to; else ``default``; else :class:`RoleRefused`."""
    values = list(values)
    mapped = [Role[role_map[v]] for v in values if v in role_map]
    if mapped:
        return max(mapped)
    if default is not None:
        return Role[default]
    shown = ", ".join(repr(v) for v in values[:10]) or "none"
    raise RoleRefused(
        f"You signed in, but your account has no plg role: the claim {claim!r} has "
        f"{shown}, and none of these is mapped to a role. Ask a plg administrator to add your group to "
        "PLG_OIDC_ROLE_MAP."
    )


def operator_name(claims: Mapping[str, Any], name_claim: str) -> str:
    for path in (name_claim, "preferred_username", "sub"):
        values = claim_values(claims, path)
        if values and values[0].strip():
            return values[0].strip()[:256]
    return "unknown"


@dataclass(frozen=True, slots=True)
class Identity:
    """A person the provider vouched for, with the plg role their claim maps to."""

    subject: str  # "<issuer> <sub>": sub is unique only per issuer
    name: str
    role: Role
    claims: Mapping[str, Any]


# -- the client ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    algorithms: tuple[str, ...]
    token_auth_methods: tuple[str, ...]

    @classmethod
    def parse(cls, doc: Any, configured_issuer: str) -> ProviderMetadata:
        if not isinstance(doc, dict):
            raise OidcError("discovery_failed", "the provider's discovery document is not a JSON object", 502)
        issuer = doc.get("issuer")
        # OIDC Discovery 4.3: the document's issuer must be the one we asked (a trailing slash aside).
        if not isinstance(issuer, str) or issuer.rstrip("/") != configured_issuer.rstrip("/"):
            raise OidcError(
                "discovery_failed",
                f"the provider calls itself {issuer!r}, not PLG_OIDC_ISSUER {configured_issuer!r}",
                502,
            )
        missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not doc.get(k)]
        if missing:
            raise OidcError("discovery_failed", f"the discovery document lacks {', '.join(missing)}", 502)
        algorithms = tuple(
            a
            for a in doc.get("id_token_signing_alg_values_supported") or ["RS256"]
            if a in ALLOWED_ALGORITHMS
        )
        if not algorithms:
            raise OidcError(
                "discovery_failed", "the provider signs ID tokens with no algorithm plg accepts", 502
            )
        return cls(
            issuer=issuer,
            authorization_endpoint=str(doc["authorization_endpoint"]),
            token_endpoint=str(doc["token_endpoint"]),
            jwks_uri=str(doc["jwks_uri"]),
            userinfo_endpoint=str(doc["userinfo_endpoint"]) if doc.get("userinfo_endpoint") else None,
            algorithms=algorithms,
            token_auth_methods=tuple(
                doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            ),
        )


class OidcClient:
    """The relying party: one per process, shared by every login."""

    def __init__(self, settings: OidcSettings, http: httpx.AsyncClient | None = None) -> None:
        if not settings.enabled or settings.issuer is None or settings.client_id is None:
            raise ValueError("OIDC is not configured (PLG_OIDC_ISSUER)")
        self.settings = settings
        self.issuer: str = settings.issuer
        self.client_id: str = settings.client_id
        self._http = http or httpx.AsyncClient(timeout=settings.http_timeout_seconds, follow_redirects=False)
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get_json(self, url: str, what: str, **kwargs: Any) -> Any:
        try:
            answer = await self._http.get(url, **kwargs)
        except httpx.HTTPError as exc:
            raise OidcError(
                "provider_unreachable", f"the identity provider did not answer ({what}): {exc}", 502
            ) from None
        if answer.status_code != 200:
            raise OidcError(
                "provider_error", f"the identity provider answered {answer.status_code} to the {what}", 502
            )
        try:
            return answer.json()
        except ValueError:
            raise OidcError("provider_error", f"the identity provider's {what} is not JSON", 502) from None

    async def metadata(self) -> ProviderMetadata:
        if self._metadata is None or time.monotonic() - self._metadata_at > DISCOVERY_TTL_SECONDS:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            self._metadata = ProviderMetadata.parse(await self._get_json(url, "discovery"), self.issuer)
            self._metadata_at = time.monotonic()
        return self._metadata

    async def _key_set(self, refresh: bool = False) -> KeySet:
        stale = time.monotonic() - self._keys_at > DISCOVERY_TTL_SECONDS
        may_refetch = time.monotonic() - self._keys_at > JWKS_REFETCH_MIN_SECONDS
        if self._keys is None or stale or (refresh and may_refetch):
            doc = await self._get_json((await self.metadata()).jwks_uri, "key set (JWKS)")
            try:
                self._keys = KeySet.import_key_set(doc)
            except (JoseError, ValueError, TypeError, KeyError):
                raise OidcError("provider_error", "the provider's key set (JWKS) is not valid", 502) from None
            self._keys_at = time.monotonic()
        return self._keys

    async def authorization_url(self, attempt: LoginAttempt, redirect_uri: str) -> str:
        meta = await self.metadata()
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.settings.scopes,
            "state": attempt.state,
            "nonce": attempt.nonce,
            "code_challenge": pkce_challenge(attempt.code_verifier),
            "code_challenge_method": "S256",
        }
        glue = "&" if "?" in meta.authorization_endpoint else "?"
        return meta.authorization_endpoint + glue + urlencode(query)

    async def finish(self, code: str, attempt: LoginAttempt, redirect_uri: str) -> Identity:
        """Exchange ``code``, validate the ID token against ``attempt``'s nonce, map the role."""
        meta = await self.metadata()
        tokens = await self._exchange(meta, code, attempt.code_verifier, redirect_uri)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("invalid_token_response", "the provider sent no ID token", 502)
        claims = await self._validated(id_token, attempt.nonce, meta)
        role_claim = self.settings.role_claim
        needs_userinfo = not has_claim(claims, role_claim) or not has_claim(claims, self.settings.name_claim)
        access_token = tokens.get("access_token")
        if needs_userinfo and meta.userinfo_endpoint and isinstance(access_token, str):
            # Many providers put groups and email only in the userinfo answer (OIDC Core 5.4).
            info = await self._get_json(
                meta.userinfo_endpoint, "userinfo", headers={"Authorization": f"Bearer {access_token}"}
            )
            if not isinstance(info, dict) or info.get("sub") != claims["sub"]:
                # OIDC Core 5.3.2: a userinfo answer about someone else must not be used.
                raise OidcError(
                    "invalid_userinfo", "the provider's userinfo answer is for another subject", 502
                )
            claims = {**info, **claims}
        role = role_for(
            claim_values(claims, role_claim),
            self.settings.role_map,
            self.settings.default_role,
            claim=role_claim,
        )
        return Identity(
            subject=f"{meta.issuer} {claims['sub']}",
            name=operator_name(claims, self.settings.name_claim),
            role=role,
            claims=claims,
        )

    async def _exchange(
        self, meta: ProviderMetadata, code: str, verifier: str, redirect_uri: str
    ) -> dict[str, Any]:
        secret = self.settings.client_secret.get_secret_value() if self.settings.client_secret else ""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        auth: httpx.BasicAuth | None = None
        if (
            "client_secret_basic" in meta.token_auth_methods
            or "client_secret_post" not in meta.token_auth_methods
        ):
            auth = httpx.BasicAuth(
                self.client_id, secret
            )  # RFC 6749 2.3.1: basic is the one every provider must take
        else:
            form.update(client_id=self.client_id, client_secret=secret)
        try:
            answer = await self._http.post(
                meta.token_endpoint,
                data=form,
                auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise OidcError(
                "provider_unreachable", f"the identity provider did not answer: {exc}", 502
            ) from None
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            # invalid_grant: a code used twice, expired, or a verifier that does not match the challenge.
            raise OidcError(
                "code_exchange_failed",
                f"the identity provider refused the login ({error or answer.status_code}); sign in again",
                400 if error == "invalid_grant" else 502,
            )
        return body

    async def _validated(self, id_token: str, nonce: str, meta: ProviderMetadata) -> dict[str, Any]:
        check = {
            "issuer": meta.issuer,
            "client_id": self.client_id,
            "nonce": nonce,
            "algorithms": meta.algorithms,
            "leeway": self.settings.leeway_seconds,
        }
        try:
            return validate_id_token(id_token, await self._key_set(), **check)  # type: ignore[arg-type]
        except OidcError as exc:
            if exc.code != "unknown_key":
                raise
        return validate_id_token(id_token, await self._key_set(refresh=True), **check)  # type: ignore[arg-type]
