"""`make monitor`'s Prometheus and Alertmanager (Debian's 2.42 / 0.25) against every real service:
every scrape target up, every rule evaluating, every dashboard query parsing, running and reading
metrics the services really export, the Alertmanager connected.

The services run as processes (``python -m``) against the session's broker, registry and Postgres under
a fresh topic prefix, started and stopped by the devstack's own code, as `make up` would.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from services.devstack import monitoring
from services.devstack.apps import APP_SERVICES, SCHEMA_REGISTRY
from services.devstack.config import REPO_ROOT, free_ports, private_settings
from services.devstack.stack import STRIPE_LOCAL_DEFAULTS, Stack
from services.kernel.provision import provision_all
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings
from tests.conftest import StackEndpoints

DASHBOARDS = sorted((REPO_ROOT / "deploy" / "grafana").glob("*.json"))
RULE_FILES = sorted((REPO_ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
METRIC_NAME = re.compile(r"\b(plg_[a-z0-9_]+|up)\b(?!\s*\()")
RECORDED_NAME = re.compile(r"\bplg:[a-z0-9_:]+")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


class _AppsOnly(Stack):
    """The devstack's app services against an existing broker/registry/Postgres, with extra variables."""

    extra_env: dict[str, str] = {}

    def child_env(self) -> dict[str, str]:
        return {**super().child_env(), **self.extra_env}


@dataclass
class Monitored:
    stack: Stack
    monitor: monitoring.Monitor


def _port(url: str) -> int:
    port = urlsplit(url if "://" in url else f"//{url}").port
    assert port is not None, url
    return port


@pytest.fixture(scope="module")
def monitored(stack: StackEndpoints, stripe_mock_url: str) -> Iterator[Monitored]:
    prefix = f"t{uuid.uuid4().hex[:7]}-"
    provision_all(
        KafkaSettings(bootstrap_servers=stack.kafka_bootstrap),
        SchemaRegistrySettings(url=stack.registry_url),
        prefix=prefix,
    )
    root = Path(tempfile.mkdtemp(prefix="plg-test-monitor-"))
    ports = free_ports(len(APP_SERVICES) + 2)
    settings = private_settings(
        root,
        with_apps=True,
        kafka_port=_port(stack.kafka_bootstrap),
        registry_port=_port(stack.registry_url),
        postgres_port=_port(stack.database_url.rsplit("@", 1)[1].split("/", 1)[0]),
        service_ports={app.name: port for app, port in zip(APP_SERVICES, ports, strict=False)},
    )
    apps = _AppsOnly(settings, components=(), provision=False, tied_to_this_process=True)
    apps.extra_env = {
        "PLG_TOPIC_PREFIX": prefix,
        "PLG_LOG_FORMAT": "text",
        "STRIPE_API_BASE": stripe_mock_url,
        **STRIPE_LOCAL_DEFAULTS,
    }
    monitor = monitoring.Monitor(apps, monitoring.MonitorPorts(ports[-2], ports[-1]))
    try:
        apps.up()
        monitor.up()
        yield Monitored(apps, monitor)
    finally:
        monitor.down()
        apps.down()
        shutil.rmtree(root, ignore_errors=True)


def test_every_service_is_a_scrape_target_and_up(monitored: Monitored) -> None:
    targets = monitored.monitor.wait_all_up(timeout=90)
    jobs = {t["labels"]["job"] for t in targets}
    expected = {app.name for app in (SCHEMA_REGISTRY, *APP_SERVICES) if app.implemented()}
    assert jobs == expected | {monitoring.SELF_JOB}
    assert all(t["health"] == "up" for t in targets)


def test_alertmanager_is_connected(monitored: Monitored) -> None:
    active = monitored.monitor.api("/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [a["url"] for a in active] == [f"{monitored.monitor.alertmanager_url}/api/v2/alerts"]


def _rules(monitor: monitoring.Monitor) -> list[dict[str, Any]]:
    return [rule for group in monitor.api("/api/v1/rules")["groups"] for rule in group["rules"]]


def test_every_rule_evaluates_against_the_real_series(monitored: Monitored) -> None:
    monitored.monitor.wait_all_up(timeout=90)
    deadline = time.monotonic() + 60
    rules = _rules(monitored.monitor)
    while time.monotonic() < deadline and any(r["lastEvaluation"].startswith("0001") for r in rules):
        time.sleep(1)
        rules = _rules(monitored.monitor)
    defined = sum(
        len(group["rules"]) for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
    )
    assert len(rules) == defined
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert broken == []
    # Every metric a rule reads is one a service exports (a typo would silently never fire).
    exported = _exported(monitored.monitor)
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert _unknown_metrics(rule["expr"], exported) == set(), rule.get("alert") or rule.get(
                    "record"
                )


def _exported(monitor: monitoring.Monitor) -> set[str]:
    """Metric families the scraped services declare (HELP/TYPE, with or without samples yet) and the
    series names Prometheus holds."""
    metadata = set(monitor.api("/api/v1/metadata"))
    names = set(monitor.api("/api/v1/label/__name__/values"))
    return metadata | names


def _recorded() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def _unknown_metrics(expr: str, exported: set[str]) -> set[str]:
    unknown = set()
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_by = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels)
    for name in METRIC_NAME.findall(without_by):
        base = name
        for suffix in SUFFIXES:
            if base.endswith(suffix):
                base = base[: -len(suffix)]
                break
        if name not in exported and base not in exported:
            unknown.add(name)
    unknown |= set(RECORDED_NAME.findall(without_by)) - _recorded()
    return unknown


def _panel_targets() -> list[tuple[str, str, str]]:
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                found.append((path.name, panel["title"], target["expr"]))
    return found


def test_dashboards_exist_and_every_panel_has_a_query() -> None:
    assert DASHBOARDS
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"]
        assert dashboard["title"]
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel.get("targets"), f"{path.name}: {panel['title']} has no query"


def test_every_dashboard_query_parses_runs_and_reads_exported_metrics(monitored: Monitored) -> None:
    monitor = monitored.monitor
    monitor.wait_all_up(timeout=90)
    exported = _exported(monitor)
    problems = []
    for dashboard, title, expr in _panel_targets():
        try:
            result = monitor.api("/api/v1/query", query=expr)
        except Exception as exc:  # urllib's HTTPError 400 carries Prometheus's parse error
            problems.append((dashboard, title, expr, f"does not run: {exc}"))
            continue
        assert result["resultType"] in ("vector", "scalar", "matrix")
        unknown = _unknown_metrics(expr, exported)
        if unknown:
            problems.append((dashboard, title, expr, f"reads metrics nothing exports: {sorted(unknown)}"))
    assert problems == []
