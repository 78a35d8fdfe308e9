"""Fixtures for the browser SDK's tests: dist/plg.iife.js (built when missing or older than its sources), a
page served on loopback that loads it, headless Debian Chromium, and ingest with a publishable key."""

from __future__ import annotations

import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.ingest import store
from services.kernel import apikeys
from services.kernel.settings import DatabaseSettings
from tests.integration.ingest.conftest import (  # noqa: F401 - fixtures used by this directory's tests
    RunningIngest,
    ingest,
    read_topic,
    start_ingest,
)

JS = Path(__file__).resolve().parents[3] / "sdk" / "js"
BUNDLE = JS / "dist" / "plg.iife.js"

PAGE = """<!doctype html>
<html><head><title>plg browser SDK test</title>
<script src="/plg.iife.js"></script>
<script>
  // The configuration comes from the query string, so a reload starts the SDK exactly as before.
  const q = new URLSearchParams(location.search);
  plg.init({
    apiKey: q.get("key"),
    host: q.get("host"),
    consent: q.get("consent") || "granted",
    sendConsent: q.get("sendConsent") !== "0",
    flushIntervalMs: 100,
    backoffBaseMs: 100,
    backoffMaxMs: 500,
  });
</script></head>
<body><h1>plg</h1></body></html>
"""


def ingest_takes_consent() -> bool:
    """Whether this ingest knows the events' ``consent`` field (the privacy work, docs/ingest.md)."""
    from services.ingest import model

    return "consent" in model._EVENT_FIELDS


def _bundle() -> Path:
    sources = [p.stat().st_mtime for p in (JS / "src").glob("*.ts")]
    if BUNDLE.exists() and BUNDLE.stat().st_mtime >= max(sources):
        return BUNDLE
    npm = shutil.which("npm")
    if npm is None or not (JS / "node_modules").exists():
        pytest.fail("sdk/js is not built and cannot be: run `make install` (npm ci) first")
    subprocess.run([npm, "run", "--silent", "build"], cwd=JS, check=True, timeout=300)
    return BUNDLE


@dataclass
class Site:
    url: str


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The test page and the bundle, served from a port of our own: another origin than ingest's."""
    root = tmp_path_factory.mktemp("site")
    shutil.copy(_bundle(), root / "plg.iife.js")
    (root / "index.html").write_text(PAGE)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, name="sdk-site", daemon=True)
    thread.start()
    try:
        yield Site(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


# `browser` (headless Chromium) is the suite's shared fixture: tests/browser.py, via tests/conftest.py.


@dataclass(frozen=True)
class BrowserTenant:
    customer_id: str
    key: str


@pytest.fixture
def browser_tenant(database_settings: DatabaseSettings) -> BrowserTenant:
    """A customer with a publishable key limited to nothing (any origin)."""
    customer = f"web-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_settings.url.get_secret_value(), autocommit=True) as conn:
        store.create_customer(conn, customer, "free")
        _, token = apikeys.create_key(conn, customer, "browser test", kind="publishable")
    return BrowserTenant(customer, token)
