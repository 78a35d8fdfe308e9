"""stripe-mock, Stripe's own API mock (Go): installed with ``go install`` into ``.plg/bin`` and run on
loopback by the local stack and the test stack, so every request billing makes meets the real API's shape.

It keeps no state (see docs/billing.md): behaviour is tested against the stateful double in tests/.
Given only ``-http-addr`` it would also open HTTPS on every interface, so both addresses are passed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

MODULE = "github.com/stripe/stripe-mock"
VERSION = "v0.203.0"
BINARY = "stripe-mock"
STAMP_NAME = ".stripe-mock.version"


def binary(bin_dir: Path) -> Path:
    return bin_dir / BINARY


def installed(bin_dir: Path) -> bool:
    """True when ``bin_dir`` holds the stripe-mock of exactly ``VERSION`` (recorded in a stamp file)."""
    stamp = bin_dir / STAMP_NAME
    return (
        binary(bin_dir).is_file() and stamp.is_file() and stamp.read_text().strip() == f"{MODULE}@{VERSION}"
    )


def go() -> str:
    found = shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if Path(p).exists()), None
    )
    if found is None:
        raise RuntimeError(
            "Go is needed to install stripe-mock (`go install github.com/stripe/stripe-mock@v0.203.0`): "
            "apt-get install -y golang, or https://go.dev/dl/"
        )
    return found


def ensure_installed(bin_dir: Path, say: Callable[[str], None] = print) -> float | None:
    """Install stripe-mock ``VERSION`` into ``bin_dir`` unless it is already there (about a minute cold:
    the module and its dependencies come from the Go module proxy and are compiled). Returns the seconds
    it took, or None when it was present. The binary is built in a staging directory and moved in only
    when ``go install`` succeeded, so an interrupted install never leaves a stamped half binary."""
    if installed(bin_dir):
        return None
    started = time.monotonic()
    say(f"installing stripe-mock {VERSION} with go install into {bin_dir} (about a minute, once) ...")
    staging = bin_dir / ".stripe-mock.partial"
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
    (staging / BINARY).replace(binary(bin_dir))
    shutil.rmtree(staging, ignore_errors=True)
    (bin_dir / STAMP_NAME).write_text(f"{MODULE}@{VERSION}\n")
    elapsed = time.monotonic() - started
    say(f"stripe-mock ready in {elapsed:.1f}s")
    return elapsed


def command(bin_dir: Path, host: str, http_port: int, https_port: int) -> list[str]:
    """The server's command line: both listeners on ``host`` (loopback), never on every interface.
    ``-strict-version-check`` stays off: stripe-python 16.1.0 sends a newer API version than the mock's
    spec (docs/billing.md)."""
    return [str(binary(bin_dir)), "-http-addr", f"{host}:{http_port}", "-https-addr", f"{host}:{https_port}"]
