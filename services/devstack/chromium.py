"""Debian's ``chromium``, the browser the dashboard's browser test drives through Playwright.

``playwright install`` downloads browsers from a CDN this environment cannot reach, so the project installs
the distribution's package instead (like PostgreSQL) and Playwright is pointed at ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

CHROMIUM = Path(os.environ.get("PLG_CHROMIUM", "/usr/bin/chromium"))
#: As root (CI, this machine) Chromium needs --no-sandbox; the other two keep it off the network.
ARGS = ("--no-sandbox", "--disable-background-networking", "--no-first-run")


def find() -> Path | None:
    if CHROMIUM.exists():
        return CHROMIUM
    found = shutil.which("chromium")
    return Path(found) if found else None


def ensure_installed(say: Callable[[str], None] = print) -> Path | None:
    """The browser's path, installing Debian's package when it is missing and we are root; None when it
    cannot be installed (not root): the browser test then skips with the reason."""
    found = find()
    if found is not None:
        return found
    if os.geteuid() != 0:
        say("chromium not found and not root: `sudo apt-get install -y chromium` for the browser test")
        return None
    say("chromium not found: installing Debian's chromium package ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"], check=True, env=env
    )
    return find()
