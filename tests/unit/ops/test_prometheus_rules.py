"""deploy/prometheus: the config and rules load in Debian's Prometheus 2.42 tools, every alert's
``promtool test rules`` cases pass, and the scrape jobs name exactly the services the devstack runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from services.devstack import monitoring
from services.devstack.apps import APP_SERVICES, SCHEMA_REGISTRY
from services.devstack.config import REPO_ROOT

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


def _tool(name: str) -> Path:
    found = monitoring.find(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `make install` installs Debian's prometheus packages")
    return found


def _run(*command: str) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=PROMETHEUS_DIR, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_prometheus_and_alertmanager_configs_are_valid() -> None:
    _run(str(_tool(monitoring.PROMTOOL)), "check", "config", "prometheus.yml")
    _run(str(_tool("amtool")), "check-config", "alertmanager.yml")


def test_every_rule_file_is_valid() -> None:
    assert RULE_FILES
    _run(str(_tool(monitoring.PROMTOOL)), "check", "rules", *map(str, RULE_FILES))


def test_every_alert_has_promtool_cases_that_pass() -> None:
    out = _run(str(_tool(monitoring.PROMTOOL)), "test", "rules", *map(str, TEST_FILES))
    assert "SUCCESS" in out
    alerts = {
        rule["alert"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tested = {
        case["alertname"]
        for path in TEST_FILES
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - tested == set(), "alerts without a firing promtool case"


def test_every_alert_has_a_runbook_line_in_the_operations_guide() -> None:
    guide = (REPO_ROOT / "docs" / "operations.md").read_text()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    anchor = rule["annotations"]["runbook"].split("#", 1)[1]
                    assert f"### {rule['alert']}" in guide
                    assert anchor == rule["alert"].lower()


def test_scrape_jobs_are_the_devstack_services() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {app.name for app in (SCHEMA_REGISTRY, *APP_SERVICES)} | {monitoring.SELF_JOB}


def test_rendered_config_points_every_job_at_the_stack_ports() -> None:
    template = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    rendered = monitoring.render_prometheus_config(
        template, {"ingest": "127.0.0.1:18080"}, monitoring.MonitorPorts(19090, 19095)
    )
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in rendered["scrape_configs"]}
    assert targets == {"ingest": ["127.0.0.1:18080"], "prometheus": ["127.0.0.1:19090"]}
    assert rendered["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19095"]
    assert Path(rendered["rule_files"][0]).is_absolute()
