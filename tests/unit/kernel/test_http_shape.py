"""Every HTTP service has the one shape (docs/kernel.md "How to add an HTTP service"): its routes live in
routers outside ``app.py``, and the example the page shows is the code as it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HTTP_SERVICES = (
    "ingest",
    "schema_registry",
    "entitlements",
    "billing_reporter",
    "health_score",
    "growth",
    "analytics",
)


@pytest.mark.parametrize("service", HTTP_SERVICES)
def test_no_route_is_declared_in_the_composition_root(service: str) -> None:
    app_py = (ROOT / "services" / service / "app.py").read_text()
    declared = re.findall(r"^\s*@app\.(get|post|put|patch|delete)\(", app_py, flags=re.MULTILINE)
    assert not declared, f"services/{service}/app.py declares routes: move them into api.py routers"
    assert (ROOT / "services" / service / "api.py").exists()
    assert "include_router(" in app_py


def test_the_http_service_example_in_the_docs_is_the_code() -> None:
    docs = (ROOT / "docs" / "kernel.md").read_text()
    shown = docs.split("<!-- http-example:start -->\n```python\n", 1)[1].split(
        "```\n<!-- http-example:end", 1
    )[0]
    source: Path | None = None
    checked = 0
    for line in shown.splitlines():
        text = line.strip()
        named = re.match(r"# (services/\S+\.py)", text)
        if named:
            source = ROOT / named.group(1)
            code = {c.strip() for c in source.read_text().splitlines()}
            continue
        if not text or text == "...":
            continue
        assert source is not None
        assert text in code, f"docs/kernel.md shows a line {source.relative_to(ROOT)} does not have: {text!r}"
        checked += 1
    assert checked > 30
