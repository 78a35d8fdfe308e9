"""The OpenID Connect provider the test suite signs in through: zitadel/oidc's example OP (Go), built with
``go install`` into ``.plg/bin`` by ``make install`` (one of ``gotools.TOOLS``), started by the tests.

Why this one (measured on a 2-core machine, docs/security.md "The provider the tests use"): it costs about
35 CPU-seconds to build once and starts in well under a second; Keycloak's distribution needs ~1-2 minutes
of wall time per start and ~0.5 GB, and ory/hydra cannot be ``go install``ed (replace directives) and
builds for ~2 CPU-minutes before needing a login-and-consent app of ours. It is a real provider: discovery,
the authorization code flow with PKCE, RS256-signed ID tokens with a JWKS, userinfo, its own login page.

What the example is configured with: ``PORT`` (its issuer is ``http://localhost:<PORT>/``),
``REDIRECT_URI`` (comma-separated callback URLs its ``web`` client, secret ``secret``, may use) and
``USERS_FILE`` (users with passwords and e-mail addresses, JSON).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from services.devstack.gotools import OIDC_PROVIDER

#: Built by ``make install`` with the other Go tools (``gotools.ensure_all``).
TOOL = OIDC_PROVIDER
#: The confidential client the example registers.
CLIENT_ID = "web"
CLIENT_SECRET = "secret"  # noqa: S105 - the example provider's fixed test client, never a real secret


def binary(bin_dir: Path) -> Path:
    return TOOL.binary(bin_dir)


def ensure_installed(bin_dir: Path, say: Callable[[str], None] = print) -> float | None:
    return TOOL.ensure(bin_dir, say)


@dataclass(frozen=True, slots=True)
class User:
    """A person who can sign in at the provider."""

    id: str
    username: str
    password: str
    email: str

    def as_json(self) -> dict[str, object]:
        first, _, last = self.username.partition(".")
        return {
            "ID": self.id,
            "Username": self.username,
            "Password": self.password,
            "FirstName": first or self.username,
            "LastName": last or "-",
            "Email": self.email,
            "EmailVerified": True,
            "PreferredLanguage": "en",
            "IsAdmin": False,
        }


def write_users(path: Path, users: Iterable[User]) -> Path:
    path.write_text(json.dumps({u.id: u.as_json() for u in users}))
    return path


def issuer(port: int) -> str:
    return f"http://localhost:{port}/"


def environment(port: int, redirect_uris: Iterable[str], users_file: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PORT": str(port),
        "REDIRECT_URI": ",".join(redirect_uris),
        "USERS_FILE": str(users_file),
    }
