"""``plg plan codegen`` cross-checks the tracking plan with the real registry's usage-events schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli import plan as plan_cli
from services.cli.__main__ import main

pytestmark = pytest.mark.integration

CT = "application/vnd.schemaregistry.v1+json"


def test_codegen_reads_the_registry_and_refuses_a_schema_that_cannot_carry_the_plan(
    stack: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = plan_cli.SCHEMA_FILE.read_text()
    subject = f"{stack.registry_url}/subjects/{plan_cli.SUBJECT}/versions"
    r = httpx.post(subject, content=json.dumps({"schema": schema}), headers={"Content-Type": CT}, timeout=10)
    assert r.status_code == 200, r.text
    code = main(
        ["plan", "codegen", "--lang", "python", "--out", str(tmp_path), "--registry", stack.registry_url]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{stack.registry_url} {plan_cli.SUBJECT} v" in out
    assert "class SeatsChangedProperties" in (tmp_path / plan_cli.PY_FILE).read_text()

    code = main(["plan", "codegen", "--lang", "ts", "--registry", "http://127.0.0.1:9"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "cannot reach the schema registry" in err
