"""ID token validation, role mapping and the small guards of the sign-in flow, without a provider (the
integration test signs in through a real one)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from services.kernel.auth import Role
from services.kernel.login import safe_next
from services.kernel.oidc import (
    LoginAttempt,
    OidcError,
    OidcSettings,
    ProviderMetadata,
    RoleRefused,
    claim_values,
    operator_name,
    pkce_challenge,
    role_for,
    validate_id_token,
)
from services.kernel.sessions import csrf_token, digest

ISSUER = "https://idp.example.com/"
CLIENT = "plg-dashboard"
NONCE = "n-0S6_WzA2Mj"
NOW = 1_800_000_000

SIGNING = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
OTHER = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)  # same kid, another key
PUBLISHED = KeySet([RSAKey.import_key(SIGNING.as_dict(private=False))])


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": CLIENT,
        "exp": NOW + 300,
        "iat": NOW - 5,
        "nonce": NONCE,
        "email": "ada@example.com",
        "groups": ["plg-admins"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = SIGNING, alg: str = "RS256", kid: str | None = "k1") -> str:
    header: dict[str, Any] = {"alg": alg}
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(header, payload, key, algorithms=[alg])


def check(token: str, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"issuer": ISSUER, "client_id": CLIENT, "nonce": NONCE, "now": NOW, "leeway": 60}
    args.update(kw)
    return validate_id_token(token, PUBLISHED, **args)


def refused(token: str, **kw: Any) -> OidcError:
    with pytest.raises(OidcError) as caught:
        check(token, **kw)
    return caught.value


def test_a_valid_id_token_gives_its_claims() -> None:
    assert check(sign(claims()))["email"] == "ada@example.com"


def test_audience_list_with_our_client_and_azp_is_accepted() -> None:
    assert check(sign(claims(aud=[CLIENT, "other-api"], azp=CLIENT)))["sub"] == "user-1"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"iss": "https://evil.example.com/"}, "iss"),
        ({"aud": "another-client"}, "aud"),
        ({"nonce": "replayed-nonce"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"sub": None}, "sub"),
        ({"exp": None}, "exp"),
        ({"iat": NOW + 3600}, "iat"),
    ],
)
def test_a_token_with_a_wrong_or_missing_claim_is_refused(overrides: dict[str, Any], expected: str) -> None:
    error = refused(sign(claims(**overrides)))
    assert error.code == "invalid_id_token"
    assert expected in error.message


def test_an_expired_token_is_refused_beyond_the_leeway_only() -> None:
    assert check(sign(claims(exp=NOW - 30)))  # within 60 s of skew
    assert refused(sign(claims(exp=NOW - 61))).code == "expired_id_token"


def test_several_audiences_without_our_azp_are_refused() -> None:
    assert "azp" in refused(sign(claims(aud=[CLIENT, "other-api"]))).message
    assert "azp" in refused(sign(claims(azp="other-client"))).message


def test_a_token_signed_by_another_key_is_refused() -> None:
    assert refused(sign(claims(), key=OTHER)).code == "invalid_id_token"


def test_a_tampered_payload_is_refused() -> None:
    header, payload, signature = sign(claims()).split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["groups"] = ["plg-admins", "root"]
    body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    assert refused(f"{header}.{body}.{signature}").code == "invalid_id_token"


def test_an_unknown_kid_asks_for_a_fresh_key_set() -> None:
    assert refused(sign(claims(), kid="rotated")).code == "unknown_key"


def test_alg_none_and_hmac_are_never_accepted() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k1"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=").decode()
    assert refused(f"{header}.{body}.").code == "invalid_id_token"
    # HS256 keyed with something an attacker knows (the public key's bytes, the client secret).
    hmac_key = OctKey.import_key(b"client-secret-or-public-key-bytes-32+")
    hs = jwt.encode({"alg": "HS256", "kid": "k1"}, claims(), hmac_key, algorithms=["HS256"])
    assert refused(hs, algorithms=["HS256", "RS256"]).code == "invalid_id_token"


def test_an_algorithm_the_provider_does_not_announce_is_refused() -> None:
    assert refused(sign(claims()), algorithms=["ES256"]).code == "invalid_id_token"


def test_a_huge_token_is_refused_before_parsing() -> None:
    assert refused("a" * 20_000).code == "invalid_id_token"


def test_role_claim_values_from_lists_strings_and_nested_objects() -> None:
    c = {"groups": ["a", 3, "b"], "email": "x@y", "realm_access": {"roles": ["plg-admin"]}}
    assert claim_values(c, "groups") == ["a", "b"]
    assert claim_values(c, "email") == ["x@y"]
    assert claim_values(c, "realm_access.roles") == ["plg-admin"]
    assert claim_values(c, "realm_access.missing") == []
    assert claim_values(c, "email.deeper") == []


def test_the_highest_mapped_role_wins() -> None:
    mapping = {"cs": "viewer", "cs-leads": "editor", "plg-admins": "admin"}
    assert role_for(["cs", "plg-admins"], mapping, None, claim="groups") is Role.admin
    assert role_for(["cs", "other"], mapping, None, claim="groups") is Role.viewer


def test_an_unmapped_or_absent_role_is_refused_unless_a_default_is_configured() -> None:
    with pytest.raises(RoleRefused) as caught:
        role_for(["marketing"], {"cs": "viewer"}, None, claim="groups")
    assert "'marketing'" in caught.value.message
    assert "PLG_OIDC_ROLE_MAP" in caught.value.message
    assert caught.value.status == 403
    with pytest.raises(RoleRefused):
        role_for([], {"cs": "viewer"}, None, claim="groups")
    assert role_for([], {"cs": "admin"}, "viewer", claim="groups") is Role.viewer


def test_operator_name_falls_back_to_username_then_sub() -> None:
    assert operator_name({"email": "a@b", "sub": "s"}, "email") == "a@b"
    assert operator_name({"preferred_username": "ada", "sub": "s"}, "email") == "ada"
    assert operator_name({"sub": "s"}, "email") == "s"


def test_pkce_challenge_is_rfc7636_s256() -> None:
    # The example of RFC 7636 appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    attempt = LoginAttempt.new("/")
    assert len(attempt.code_verifier) >= 43
    assert len({attempt.state, attempt.nonce, attempt.code_verifier}) == 3


def test_discovery_must_name_the_configured_issuer() -> None:
    doc = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}auth",
        "token_endpoint": f"{ISSUER}token",
        "jwks_uri": f"{ISSUER}keys",
        "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"],
    }
    meta = ProviderMetadata.parse(doc, ISSUER.rstrip("/"))
    assert meta.algorithms == ("RS256",)
    with pytest.raises(OidcError, match="calls itself"):
        ProviderMetadata.parse({**doc, "issuer": "https://evil.example.com/"}, ISSUER)
    with pytest.raises(OidcError, match="no algorithm"):
        ProviderMetadata.parse({**doc, "id_token_signing_alg_values_supported": ["HS256"]}, ISSUER)


def test_oidc_settings_are_checked_up_front() -> None:
    assert not OidcSettings().enabled
    with pytest.raises(ValueError, match="CLIENT_ID") as caught:
        OidcSettings(issuer="http://idp.example.com/")
    text = str(caught.value)
    assert "https" in text
    assert "CLIENT_SECRET" in text
    assert "ROLE_MAP" in text
    ok = OidcSettings(
        issuer="http://127.0.0.1:9998/", client_id="c", client_secret="s", default_role="viewer"
    )
    assert ok.enabled
    with pytest.raises(ValueError, match="viewer"):
        OidcSettings(issuer=ISSUER, client_id="c", client_secret="s", role_map={"g": "root"})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/customers/acme?x=1", "/customers/acme?x=1"),
        ("//evil.example.com/", "/"),
        ("/\\evil.example.com", "/"),
        ("https://evil.example.com/", "/"),
        ("javascript:alert(1)", "/"),
        ("/ok\r\nSet-Cookie: x", "/"),
        (None, "/"),
    ],
)
def test_after_sign_in_only_same_site_paths_are_followed(given: str | None, expected: str) -> None:
    assert safe_next(given) == expected


def test_session_ids_are_stored_hashed_and_csrf_is_not_the_stored_hash() -> None:
    session_id = "abc"
    assert digest(session_id) == hashlib.sha256(b"abc").digest()
    assert csrf_token(session_id) != digest(session_id).hex()
    assert csrf_token(session_id) == csrf_token(session_id) != csrf_token("abd")


def test_production_mode_refuses_plain_http_sso_and_insecure_session_cookies() -> None:
    from services.health_score.config import HealthSettings
    from services.kernel.sessions import SessionSettings

    insecure = HealthSettings(
        sessions=SessionSettings(cookie_secure="never"),
        oidc=OidcSettings(
            issuer="http://127.0.0.1:9998/", client_id="c", client_secret="s", default_role="viewer"
        ),
    )
    found = {d.variable for d in insecure.development_defaults()}
    assert {"PLG_SESSION_COOKIE_SECURE", "PLG_OIDC_ISSUER"} <= found
    secure = HealthSettings(
        oidc=OidcSettings(issuer=ISSUER, client_id="c", client_secret="s", role_map={"g": "admin"})
    )
    found = {d.variable for d in secure.development_defaults()}
    assert not found & {"PLG_SESSION_COOKIE_SECURE", "PLG_OIDC_ISSUER"}
