from collections.abc import Iterator
from typing import Any

import pytest

from services.devstack import chromium
from tests.integration.health_score.harness import health  # noqa: F401 - the fixture


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (``make install`` installs the browser;
    ``playwright install`` cannot download one here)."""
    path = chromium.find()
    if path is None:
        pytest.skip("Debian chromium is not installed (make install installs it as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(path), args=list(chromium.ARGS), headless=True)
        try:
            yield b
        finally:
            b.close()
