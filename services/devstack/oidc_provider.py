"""The OpenID Connect provider the test suite signs in through: zitadel/oidc's example OP (Go), built with
``go install`` into ``.plg/bin`` by ``make install`` like stripe-mock, started by the tests on loopback.

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
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from services.devstack.stripe_mock import go

MODULE = "github.com/zitadel/oidc/v3/example/server"
VERSION = "v3.52.0"
#: The example's binary is called ``server``; it is installed under a name that says what it is.
BINARY = "zitadel-oidc-example-op"
STAMP_NAME = ".zitadel-oidc-op.version"
#: The confidential client the example registers.
CLIENT_ID = "web"
CLIENT_SECRET = "secret"  # noqa: S105 - the example provider's fixed test client, never a real secret


def binary(bin_dir: Path) -> Path:
    return bin_dir / BINARY


def installed(bin_dir: Path) -> bool:
    stamp = bin_dir / STAMP_NAME
    return (
        binary(bin_dir).is_file() and stamp.is_file() and stamp.read_text().strip() == f"{MODULE}@{VERSION}"
    )


def ensure_installed(bin_dir: Path, say: Callable[[str], None] = print) -> float | None:
    """Build the provider into ``bin_dir`` unless it is there; the seconds it took, or None. Built in a
    staging directory and moved in only whole, as stripe-mock is."""
    if installed(bin_dir):
        return None
    started = time.monotonic()
    say(f"installing the zitadel/oidc example OP {VERSION} with go install into {bin_dir} (once) ...")
    staging = bin_dir / ".zitadel-oidc-op.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = dict(os.environ, GOBIN=str(staging))
    result = subprocess.run(
        [go(), "install", f"{MODULE}@{VERSION}"], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"go install {MODULE}@{VERSION} failed:\n{result.stdout}\n{result.stderr}")
    bin_dir.mkdir(parents=True, exist_ok=True)
    (staging / "server").replace(binary(bin_dir))
    shutil.rmtree(staging, ignore_errors=True)
    (bin_dir / STAMP_NAME).write_text(f"{MODULE}@{VERSION}\n")
    elapsed = time.monotonic() - started
    say(f"OIDC provider ready in {elapsed:.1f}s")
    return elapsed


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
