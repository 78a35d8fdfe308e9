"""Prometheus and Alertmanager beside the local stack (``make monitor``): Debian's packages (2.42 / 0.25),
configured from ``deploy/prometheus/`` and pointed at the stack's own ports.

Like PostgreSQL and Chromium, the packages are installed by the project (``apt-get`` when missing, as
root). Their Debian services are never started: the stack runs its own Prometheus on loopback with a
private data directory, scraping every service's ``/metrics`` (public ops endpoints, no credentials).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from services.devstack.apps import SCHEMA_REGISTRY
from services.devstack.config import REPO_ROOT, StackSettings
from services.devstack.processes import StartError, http_ok, spawn, stop, wait_until
from services.devstack.stack import Stack

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


# -- configuration ---------------------------------------------------------------------------------------

CONFIG_DIR = REPO_ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = CONFIG_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = CONFIG_DIR / "alertmanager.yml"
RULES_GLOB = "rules/*.yml"
SELF_JOB = "prometheus"


@dataclass(frozen=True)
class MonitorPorts:
    prometheus: int
    alertmanager: int


def ports_of(settings: StackSettings) -> MonitorPorts:
    return MonitorPorts(settings.prometheus_port, settings.alertmanager_port)


def scrape_targets(stack: Stack) -> dict[str, str]:
    """``job -> host:port`` of every service the stack runs (jobs named as services/devstack/apps.py)."""
    apps = [SCHEMA_REGISTRY, *(a for a in stack.apps() if a.implemented())]
    return {app.name: f"{stack.settings.host}:{stack.app_port(app)}" for app in apps}


def render_prometheus_config(
    template: dict[str, Any], targets: Mapping[str, str], ports: MonitorPorts, host: str = "127.0.0.1"
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with this stack's addresses: one static job per service in
    ``targets`` (replacing the file's default ports), Prometheus itself, the Alertmanager, and the rule
    files by absolute path (the rendered copy lives elsewhere)."""
    config = copy.deepcopy(template)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    unknown = set(targets) - set(jobs)
    if unknown:
        raise ValueError(f"deploy/prometheus/prometheus.yml has no scrape job for {sorted(unknown)}")
    scrape = []
    for name, job in jobs.items():
        address = f"{host}:{ports.prometheus}" if name == SELF_JOB else targets.get(name)
        if address is None:
            continue  # a service this stack does not run
        job = dict(job, static_configs=[{"targets": [address]}])
        scrape.append(job)
    config["scrape_configs"] = scrape
    config["rule_files"] = [str(CONFIG_DIR / RULES_GLOB)]
    config["alerting"] = {
        "alertmanagers": [{"static_configs": [{"targets": [f"{host}:{ports.alertmanager}"]}]}]
    }
    return config


# -- processes -------------------------------------------------------------------------------------------


class Monitor:
    """Prometheus and Alertmanager for one stack: files under ``<stack root>/monitor``, pid files and logs
    beside the stack's own, so ``make down`` stops them too."""

    def __init__(self, stack: Stack, ports: MonitorPorts) -> None:
        self.stack = stack
        self.ports = ports
        self.dir = stack.settings.root / "monitor"

    @property
    def host(self) -> str:
        return self.stack.settings.host

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.ports.prometheus}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{self.host}:{self.ports.alertmanager}"

    def write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        template = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        rendered = render_prometheus_config(template, scrape_targets(self.stack), self.ports, self.host)
        path = self.dir / "prometheus.yml"
        path.write_text(yaml.safe_dump(rendered, sort_keys=False))
        return path

    def up(self, timeout: float = 60.0) -> None:
        ensure_installed()
        config = self.write_config()
        death = "TERM" if self.stack.tied_to_this_process else None
        alertmanager = self.stack.managed(ALERTMANAGER_NAME)
        if alertmanager.pid() is None:
            (self.dir / "alertmanager").mkdir(parents=True, exist_ok=True)
            spawn(
                alertmanager,
                [
                    str(find(ALERTMANAGER)),
                    f"--config.file={ALERTMANAGER_CONFIG}",
                    f"--storage.path={self.dir / 'alertmanager'}",
                    f"--web.listen-address={self.host}:{self.ports.alertmanager}",
                    # No gossip: a single local Alertmanager (its default would listen on every interface).
                    "--cluster.listen-address=",
                ],
                die_with_parent=death,
            )
        prometheus = self.stack.managed(PROMETHEUS_NAME)
        if prometheus.pid() is None:
            spawn(
                prometheus,
                [
                    str(find(PROMETHEUS)),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    "--storage.tsdb.retention.time=2d",
                    f"--web.listen-address={self.host}:{self.ports.prometheus}",
                    "--web.enable-lifecycle",
                ],
                die_with_parent=death,
            )
        for managed, url in (
            (alertmanager, f"{self.alertmanager_url}/-/ready"),
            (prometheus, f"{self.prometheus_url}/-/ready"),
        ):
            wait_until(
                managed, partial(http_ok, url), timeout=timeout, what=f"200 from {url}", pid=managed.pid()
            )

    def down(self) -> None:
        for name in (PROMETHEUS_NAME, ALERTMANAGER_NAME):
            stop(self.stack.managed(name), timeout=self.stack.settings.stop_timeout)

    def api(self, path: str, **params: str) -> Any:
        """GET Prometheus's HTTP API; the ``data`` of a ``success`` answer."""
        url = f"{self.prometheus_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our own http:// URL
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body}")
        return body["data"]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("/api/v1/targets", state="active")["activeTargets"]
        return active

    def wait_all_up(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until every active target's last scrape succeeded; returns them (raises with the rest)."""
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.targets()
            if targets and all(t["health"] == "up" for t in targets):
                return targets
            time.sleep(0.5)
        down = [(t["labels"].get("job"), t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
        raise StartError(f"Prometheus targets not all up after {timeout:.0f}s: {down}")


PROMETHEUS_NAME = "prometheus"
ALERTMANAGER_NAME = "alertmanager"
