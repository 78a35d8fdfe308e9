"""``plg plan codegen`` and ``plg plan check``: typed events from the tracking plan that really type-check
(tsc --strict for TypeScript, mypy --strict for Python, a wrong call refused by both), the plan
cross-checked with the usage-events schema, and the CI check's exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import plan as plan_cli
from services.cli.__main__ import main
from services.enrichment.plan import load_plan

ROOT = Path(__file__).resolve().parents[3]
JS = ROOT / "sdk" / "js"
TSC = JS / "node_modules" / "typescript" / "bin" / "tsc"
EXAMPLES = JS / "examples"


@pytest.fixture(autouse=True)
def _no_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cross-check with the repository's schema file here; tests/integration/sdk asks a real registry.
    monkeypatch.delenv("SCHEMA_REGISTRY_URL", raising=False)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _tsc(project: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None or not TSC.exists():
        pytest.fail("sdk/js is not installed: `make install` runs npm ci (Node 20)")
    return subprocess.run(
        [node, str(TSC), "-p", str(project)], capture_output=True, text=True, timeout=180, check=False
    )


def _ts_project(tmp_path: Path, example: str) -> Path:
    (tmp_path / "app.ts").write_text(example)
    (tmp_path / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "strict": True,
                    "noEmit": True,
                    "target": "ES2020",
                    "module": "ES2022",
                    "moduleResolution": "bundler",
                    "lib": ["ES2022", "DOM"],
                    "skipLibCheck": True,
                    # An app imports "@plg/sdk"; here it resolves to the SDK's own sources.
                    "paths": {"@plg/sdk": [str(JS / "src" / "index.ts")]},
                },
                "files": ["app.ts", "plg-events.ts"],
            }
        )
    )
    return tmp_path / "tsconfig.json"


def test_the_committed_ts_example_is_what_the_plan_generates_and_compiles_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "plan", "codegen", "--lang", "ts", "--out", str(tmp_path))
    assert code == 0, out
    generated = (tmp_path / "plg-events.ts").read_text()
    assert generated == (EXAMPLES / "plg-events.ts").read_text(), (
        "sdk/js/examples/plg-events.ts is stale: run `plg plan codegen --lang ts --out sdk/js/examples`"
    )
    example = (EXAMPLES / "typed-events.ts").read_text()
    result = _tsc(_ts_project(tmp_path, example))
    assert result.returncode == 0, result.stdout + result.stderr


def test_tsc_strict_refuses_wrong_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "plan", "codegen", "--lang", "ts", "--out", str(tmp_path))[0] == 0
    broken = "\n".join(
        [
            'import { plg } from "@plg/sdk";',
            'import { trackEvent } from "./plg-events.js";',
            'trackEvent(plg, "project_created", {});',  # required project_type missing
            'trackEvent(plg, "team_invite_sent", { role: "owner", invitee_domain: "x.com" });',  # not in enum
            'trackEvent(plg, "no_such_event", {});',  # unplanned
            'trackEvent(plg, "api_call_made", { status: "200" });',  # wrong type
            'trackEvent(plg, "project_created", { project_type: "app", colour: "red" });',  # not planned
        ]
    )
    result = _tsc(_ts_project(tmp_path, broken))
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() if "error TS" in line]
    assert sorted({int(line.split("(")[1].split(",")[0]) for line in errors}) == [3, 4, 5, 6, 7], errors


def test_python_types_check_with_mypy_strict_and_refuse_wrong_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "plan", "codegen", "--lang", "python", "--out", str(tmp_path))[0] == 0
    (tmp_path / "good.py").write_text(
        "from plg_sdk import Client\nfrom plg_events import track\n\n\n"
        "def go(client: Client) -> None:\n"
        '    track(client, "project_created", {"project_type": "app"})\n'
        '    track(client, "seats_changed", {"seats": 3})\n'
    )
    (tmp_path / "bad.py").write_text(
        "from plg_sdk import Client\nfrom plg_events import track\n\n\n"
        "def go(client: Client) -> None:\n"
        '    track(client, "project_created", {})\n'
        '    track(client, "seats_changed", {"seats": "3"})\n'
        '    track(client, "user_signed_in", {"method": "carrier pigeon"})\n'
    )
    env = {**os.environ, "MYPYPATH": str(ROOT / "sdk")}
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    good = subprocess.run(
        [*mypy, "good.py", "plg_events.py"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert good.returncode == 0, good.stdout
    bad = subprocess.run([*mypy, "bad.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode != 0
    lines = {int(line.split(":")[1]) for line in bad.stdout.splitlines() if ": error:" in line}
    assert lines == {6, 7, 8}, bad.stdout


def test_codegen_refuses_a_plan_the_schema_cannot_carry() -> None:
    schema = json.loads(plan_cli.SCHEMA_FILE.read_text())
    for f in schema["fields"]:
        if f["name"] == "properties":
            f["type"]["values"] = ["null", "string"]  # an older schema without numbers or booleans
    problems = plan_cli.cross_check(load_plan(), schema)
    assert any("seats_changed.properties.seats: integer needs an Avro long" in p for p in problems), problems
    assert plan_cli.cross_check(load_plan(), json.loads(plan_cli.SCHEMA_FILE.read_text())) == []


def test_plan_check_passes_good_events_and_fails_on_any_violation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            {
                "batch": [
                    {"name": "project_created", "properties": {"project_type": "app"}},
                    {
                        "name": "api_call_made",
                        "properties": {"endpoint": "/x", "status": 200, "latency_ms": 3},
                    },
                ]
            }
        )
    )
    code, out, _ = run(capsys, "plan", "check", str(good))
    assert code == 0, out
    assert "2 passed, 0 failed" in out
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [
                {"name": "project_created", "properties": {}},
                {"name": "team_invite_sent", "properties": {"role": "owner", "invitee_domain": "x"}},
                {"name": "seats_changed", "properties": {"seats": -1}},
                {"name": "mystery_event", "properties": {}},
                {"name": "core_action_completed", "properties": {"action": "x"}},
            ]
        )
    )
    code, out, _ = run(capsys, "plan", "check", str(bad))
    assert code == 1
    assert "required_missing at properties.project_type" in out
    assert "enum_mismatch at properties.role" in out
    assert "out_of_range at properties.seats" in out
    assert "unplanned_event at name" in out
    assert "1 passed, 4 failed" in out


def test_plan_check_reports_an_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.json").write_text("{nope")
    code, _, err = run(capsys, "plan", "check", str(tmp_path / "x.json"))
    assert code == 1
    assert "is not JSON" in err
