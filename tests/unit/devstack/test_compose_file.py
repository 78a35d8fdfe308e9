"""docker-compose.yml, loaded by compose-go (the loader Docker Compose uses), against the devstack.

No Docker engine runs here, so the file is checked the way `docker compose config` would read it, and
compared with services/devstack/apps.py — the list `make up` and the tests start — so a service, port or
variable added to one and not the other fails here instead of at a user's `docker compose up`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.devstack import gotools, stripe_mock
from services.devstack.apps import APP_SERVICES, SCHEMA_REGISTRY, AppService
from services.devstack.config import REPO_ROOT, StackSettings
from tests.settings_support import state_dir_env

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
# Every secret the file requires, with throwaway values for loading it. None may have a default.
SECRETS = {
    "POSTGRES_PASSWORD": "pw-for-the-test",
    "REGISTRY_ADMIN_TOKEN": "registry-token-for-the-test",
    "ENRICHMENT_PII_KEY": "pii-key-for-the-test",
    "GROWTH_ADMIN_TOKEN": "growth-token-for-the-test",
    "PLG_DLQ_KEY": "dlq-key-for-the-test",
    "STRIPE_API_KEY": "sk_test_for_the_test",
    "STRIPE_WEBHOOK_SECRET": "whsec_for_the_test",
}
INFRA = {"kafka", "postgres", "stripe-mock", "provision"}
# What the devstack gives every app process (services/devstack/stack.py child_env), by compose's names.
STACK_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka:29092",
    "SCHEMA_REGISTRY_URL": "http://schema-registry:8081",
}


@pytest.fixture(scope="module")
def loader() -> Path:
    bin_dir = StackSettings().bin_dir
    gotools.COMPOSE_CONFIG.ensure(bin_dir)
    return gotools.COMPOSE_CONFIG.binary(bin_dir).resolve()


def _load(loader: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only PATH and HOME from outside: a variable set in the developer's shell must not mask a missing one.
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    return subprocess.run(
        [str(loader), str(COMPOSE_FILE)],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        timeout=60,
    )


@pytest.fixture(scope="module")
def project(loader: Path) -> dict[str, Any]:
    result = _load(loader, SECRETS)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def _apps() -> list[AppService]:
    return [SCHEMA_REGISTRY, *APP_SERVICES]


def test_compose_runs_every_devstack_service_and_nothing_else(project: dict[str, Any]) -> None:
    assert set(project["services"]) == {app.name for app in _apps()} | INFRA


@pytest.mark.parametrize("app", _apps(), ids=lambda a: a.name)
def test_each_service_matches_the_devstack_module_port_environment_and_health(
    project: dict[str, Any], app: AppService
) -> None:
    service = project["services"][app.name]
    assert service["command"] == [app.module]
    assert service["image"] == "plg:local"
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    ports = [(p["host_ip"], p["published"], p["target"]) for p in service["ports"]]
    assert ports == [("127.0.0.1", str(app.port), app.port)]
    env = service["environment"]
    assert env[app.host_env] == "0.0.0.0"
    assert env[app.port_env] == str(app.port)
    for name, value in {**STACK_ENV, **app.env}.items():
        assert env[name] == value, name
    assert env["DATABASE_URL"] == f"postgresql://plg:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/plg"
    if app.data_dir_env is not None:
        # The devstack gives it a directory of its own; compose a volume mounted there.
        mounts = {v["target"] for v in service.get("volumes", []) if v["type"] == "volume"}
        assert env[app.data_dir_env] in mounts
    health = " ".join(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{app.port}{app.health_path}" in health


def test_services_with_local_state_are_declared_so_in_the_devstack() -> None:
    # What the code keeps (a ``state_dir`` setting) is what apps.py declares, by the setting's variable.
    assert {app.name: app.state_dir_env for app in _apps() if app.state_dir_env} == {
        app.name: env for app in _apps() if (env := state_dir_env(app))
    }
    assert {"metering-aggregator", "enrichment", "growth"} <= {a.name for a in _apps() if a.state_dir_env}


@pytest.mark.parametrize("app", [a for a in _apps() if a.state_dir_env], ids=lambda a: a.name)
def test_each_service_with_local_state_keeps_it_on_a_named_volume_with_a_fixed_instance_id(
    project: dict[str, Any], app: AppService
) -> None:
    """A warm restart finds the sealed stores at <state dir>/<instance id>/: both outlive the container."""
    assert app.state_dir_env is not None
    service = project["services"][app.name]
    env = service["environment"]
    state_dir = env[app.state_dir_env]
    (volume,) = [v for v in service.get("volumes", []) if v["target"] == state_dir]
    assert volume["type"] == "volume", "a named volume, not the container's own layer"
    assert volume["source"] in project["volumes"]
    # Its own: two services (or replicas) sharing one volume would be one instance id away from a clash.
    others = {
        v["source"]
        for name, other in project["services"].items()
        if name != app.name
        for v in other.get("volumes", [])
    }
    assert volume["source"] not in others
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,100}", env[f"{app.env_prefix}INSTANCE_ID"])
    # `docker compose stop` waits for the seal (10 s by default), as the chart's grace period does.
    chart = yaml.safe_load((REPO_ROOT / "deploy" / "helm" / "plg" / "values.yaml").read_text())
    assert _seconds(service["stop_grace_period"]) == chart["state"]["terminationGracePeriodSeconds"]
    # The image creates the mount point for its non-root user (a new named volume takes its owner).
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(rf"mkdir -p [^\n]*{re.escape(state_dir)}", dockerfile)
    assert re.search(rf"chown plg [^\n]*{re.escape(state_dir)}", dockerfile)


def _seconds(duration: Any) -> float:
    """compose-go's stop_grace_period: a Go duration in nanoseconds (JSON) or a string such as "1m30s"."""
    if isinstance(duration, int | float):
        return duration / 1e9
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", str(duration))
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[unit] for n, unit in parts)


def test_app_services_start_after_provisioning_and_provisioning_runs_once(project: dict[str, Any]) -> None:
    services = project["services"]
    assert services["provision"]["command"] == ["services.kernel.provision"]
    assert services["provision"]["restart"] == "no"
    assert services["provision"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["provision"]["depends_on"]["schema-registry"]["condition"] == "service_healthy"
    for app in APP_SERVICES:
        assert services[app.name]["depends_on"]["provision"]["condition"] == "service_completed_successfully"


def test_every_long_running_service_has_a_health_check_and_loopback_only_ports(
    project: dict[str, Any],
) -> None:
    for name, service in project["services"].items():
        if name != "provision":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_billing_reporter_talks_to_the_same_stripe_mock_version_as_the_devstack(
    project: dict[str, Any],
) -> None:
    services = project["services"]
    assert services["stripe-mock"]["image"] == f"stripe/stripe-mock:{stripe_mock.VERSION}"
    billing = services["billing-reporter"]
    assert billing["environment"]["STRIPE_API_BASE"] == "http://stripe-mock:12111"
    assert billing["depends_on"]["stripe-mock"]["condition"] == "service_healthy"


def test_kafka_image_is_the_broker_version_the_devstack_runs(project: dict[str, Any]) -> None:
    pom = (REPO_ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert version is not None
    assert project["services"]["kafka"]["image"] == f"apache/kafka:{version.group(1)}"


def test_secrets_come_only_from_the_environment(project: dict[str, Any]) -> None:
    values = json.dumps(project)
    for name, value in SECRETS.items():
        assert value in values, f"{name} is not used"
    # The services' local-development defaults must never reach a compose deployment.
    for public in (
        "plg-dev-only",
        "sk_test_plglocal",
        "whsec_plg_local",
        "POSTGRES_HOST_AUTH_METHOD",
        "plg-dev-dlq-key",
    ):
        assert public not in values


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_a_missing_secret_stops_compose_naming_it(loader: Path, missing: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    result = _load(loader, env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_image_and_virtualenv_install_with_the_same_script() -> None:
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "RUN sh deploy/install-python.sh pip\n" in dockerfile
    assert "sh deploy/install-python.sh $(PIP) dev\n" in makefile
