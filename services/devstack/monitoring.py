"""Prometheus and Alertmanager beside the local stack (``make monitor``): Debian's packages (2.42 / 0.25),
configured from ``deploy/prometheus/`` and pointed at the stack's own ports.

Like PostgreSQL and Chromium, the packages are installed by the project (``apt-get`` when missing, as
root). Their Debian services are never started: the stack runs its own Prometheus on loopback with a
private data directory, scraping every service's ``/metrics`` (public ops endpoints, no credentials).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

PACKAGES = ("prometheus", "prometheus-alertmanager")
PROMETHEUS = "prometheus"
PROMTOOL = "promtool"
ALERTMANAGER = "prometheus-alertmanager"


def find(name: str) -> Path | None:
    found = shutil.which(name)
    return Path(found) if found else None


def ensure_installed(say: Callable[[str], None] = print) -> str:
    """Install Debian's prometheus and prometheus-alertmanager when missing; returns a status line."""
    missing = [b for b in (PROMETHEUS, PROMTOOL, ALERTMANAGER) if find(b) is None]
    if not missing:
        return "present"
    if os.geteuid() != 0:
        return f"missing {', '.join(missing)}: `sudo apt-get install -y {' '.join(PACKAGES)}`"
    say(f"{', '.join(missing)} not found: installing Debian's {' '.join(PACKAGES)} ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], check=True, env=env
    )
    still = [b for b in (PROMETHEUS, PROMTOOL, ALERTMANAGER) if find(b) is None]
    if still:
        raise RuntimeError(f"installed {' '.join(PACKAGES)} but {', '.join(still)} is still missing")
    return "installed"
