"""Go programs the test suite runs, built once into ``.plg/bin`` (like stripe-mock): the Compose loader
(compose-go, our own 40-line ``deploy/compose-config``), Helm, and the OIDC provider of the sign-in tests.

Each binary sits next to a stamp naming exactly what it was built from (the module version, or a hash of
the local program's sources), so a checkout that pins another version rebuilds it and an unchanged one
never does. ``make install`` builds both in parallel (:func:`ensure_all`): on a cold machine the two
builds overlap their downloads and compiles instead of queueing (figures in docs/operations.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.devstack.config import REPO_ROOT
from services.devstack.stripe_mock import go


@dataclass(frozen=True)
class GoTool:
    """A binary built with ``go install MODULE@VERSION`` (``source`` None) or ``go build`` of a directory
    of this repository with its own go.mod/go.sum (``source`` set; ``module`` is then the package)."""

    binary_name: str
    module: str
    version: str = ""
    source: Path | None = None

    def binary(self, bin_dir: Path) -> Path:
        return bin_dir / self.binary_name

    def identity(self) -> str:
        if self.source is None:
            return f"{self.module}@{self.version}"
        digest = hashlib.sha256()
        for path in sorted(self.source.rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(self.source).as_posix().encode())
                digest.update(path.read_bytes())
        return f"{self.module} source sha256 {digest.hexdigest()[:16]}"

    def stamp(self, bin_dir: Path) -> Path:
        return bin_dir / f".{self.binary_name}.version"

    def installed(self, bin_dir: Path) -> bool:
        stamp = self.stamp(bin_dir)
        return (
            self.binary(bin_dir).is_file()
            and stamp.is_file()
            and stamp.read_text().strip() == self.identity()
        )

    def ensure(self, bin_dir: Path, say: Callable[[str], None] = print) -> float | None:
        """Build into ``bin_dir`` unless the stamp says it is current; returns the seconds it took, or None
        when it was present. Built in a staging directory and moved in only on success, so an interrupted
        build never leaves a stamped half binary."""
        bin_dir = bin_dir.resolve()  # the local build runs in the program's directory
        if self.installed(bin_dir):
            return None
        started = time.monotonic()
        say(f"building {self.binary_name} ({self.identity()}) into {bin_dir} (once) ...")
        staging = bin_dir / f".{self.binary_name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        env = dict(os.environ)
        if self.source is None:
            env["GOBIN"] = str(staging)
            command = [go(), "install", "-trimpath", f"{self.module}@{self.version}"]
            cwd = None
        else:
            command = [go(), "build", "-trimpath", "-o", str(staging / self.binary_name), "."]
            cwd = self.source
        result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
        built = staging / self.binary_name
        if not built.is_file():  # go install names the binary after the package directory
            built = staging / self.module.rstrip("/").rsplit("/", 1)[-1]
        built.replace(self.binary(bin_dir))
        shutil.rmtree(staging, ignore_errors=True)
        self.stamp(bin_dir).write_text(self.identity() + "\n")
        elapsed = time.monotonic() - started
        say(f"{self.binary_name} ready in {elapsed:.1f}s")
        return elapsed


# compose-go v2.16.2 is the newest that builds with this machine's Go 1.26 (v2.17 wants Go 1.27).
COMPOSE_CONFIG = GoTool(
    "plg-compose-config",
    "github.com/compose-spec/compose-go/v2",
    source=REPO_ROOT / "deploy" / "compose-config",
)
HELM = GoTool("helm", "helm.sh/helm/v4/cmd/helm", "v4.3.2")
# The OpenID Connect provider the dashboard's sign-in tests use (services/devstack/oidc_provider.py).
OIDC_PROVIDER = GoTool("zitadel-oidc-example-op", "github.com/zitadel/oidc/v3/example/server", "v3.52.0")
TOOLS = (COMPOSE_CONFIG, HELM, OIDC_PROVIDER)


def ensure_all(bin_dir: Path, say: Callable[[str], None] = print) -> dict[str, float | None]:
    """Build every missing tool, in parallel (Go's own build cache is safe to share between builds)."""
    with ThreadPoolExecutor(max_workers=len(TOOLS)) as pool:
        futures = {tool.binary_name: pool.submit(tool.ensure, bin_dir, say) for tool in TOOLS}
        return {name: future.result() for name, future in futures.items()}
