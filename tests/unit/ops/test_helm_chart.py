"""deploy/helm/plg: `helm lint`, `helm template`, every rendered object validated offline against the
Kubernetes 1.37 schemas (kubernetes-validate), KEDA's ScaledObjects checked against the services' real
consumer groups and the topic catalogue's partition counts, and the services against the devstack's."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from services.devstack import gotools
from services.devstack.apps import APP_SERVICES, SCHEMA_REGISTRY, AppService
from services.devstack.config import REPO_ROOT, StackSettings
from services.kernel.topics import catalogue

CHART = REPO_ROOT / "deploy" / "helm" / "plg"
KUBERNETES_VERSION = "1.37.0"
# Deployments beyond the devstack's one-per-service: the health API processes (HEALTH_ROLE=api).
EXTRA = {"health-score-api"}
SECRET_LOOKING = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$|^DATABASE_URL$")


@pytest.fixture(scope="module")
def helm() -> Path:
    bin_dir = StackSettings().bin_dir
    gotools.HELM.ensure(bin_dir)
    return gotools.HELM.binary(bin_dir).resolve()


def _helm(helm: Path, *args: str) -> str:
    result = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, cwd=CHART, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def rendered(helm: Path) -> list[dict[str, Any]]:
    out = _helm(helm, "template", "plg", str(CHART), "--namespace", "plg")
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _apps() -> list[AppService]:
    return [SCHEMA_REGISTRY, *APP_SERVICES]


def test_chart_lints_clean(helm: Path) -> None:
    _helm(helm, "lint", "--strict", str(CHART))


def test_every_rendered_kubernetes_object_validates_against_the_schemas(
    rendered: list[dict[str, Any]],
) -> None:
    checked = 0
    for obj in rendered:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked below against KEDA's documented fields
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 3 * len(_apps())


def test_a_deployment_per_service_runs_its_module_on_its_port_with_probes_and_resources(
    rendered: list[dict[str, Any]],
) -> None:
    deployments = _by_kind(rendered, "Deployment")
    assert set(deployments) == {f"plg-{app.name}" for app in _apps()} | {f"plg-{name}" for name in EXTRA}
    api = deployments["plg-health-score-api"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "HEALTH_ROLE", "value": "api"} in api["env"]
    for app in _apps():
        pod = deployments[f"plg-{app.name}"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == [app.module]
        assert container["ports"] == [{"name": "http", "containerPort": app.port}]
        env = {e["name"]: e for e in container["env"]}
        assert env[app.host_env]["value"] == "0.0.0.0"
        assert env[app.port_env]["value"] == str(app.port)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["limits"]["memory"]
        if app.data_dir_env is not None:
            assert app.data_dir_env in env
            assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == f"plg-{app.name}"


def test_secrets_are_referenced_never_inlined(rendered: list[dict[str, Any]]) -> None:
    assert _by_kind(rendered, "Secret") == {}
    for obj in rendered:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for env in container["env"]:
                if SECRET_LOOKING.search(env["name"]):
                    assert "value" not in env, f"{obj['metadata']['name']}: {env['name']} inlined"
                    assert env["valueFrom"]["secretKeyRef"]["name"]


def test_every_service_has_a_pod_disruption_budget_and_a_service(rendered: list[dict[str, Any]]) -> None:
    deployments = _by_kind(rendered, "Deployment")
    for kind in ("PodDisruptionBudget", "Service"):
        objects = _by_kind(rendered, kind)
        assert set(objects) == set(deployments)
    for name, pdb in _by_kind(rendered, "PodDisruptionBudget").items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_provisioner_is_a_job_run_after_install_and_upgrade(rendered: list[dict[str, Any]]) -> None:
    (job,) = _by_kind(rendered, "Job").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["services.kernel.provision"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


def _group_of(app: AppService) -> str | None:
    """The consumer group the service's settings default to (None: not a consumer)."""
    module = importlib.import_module(f"{app.module}.config")
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if (
            issubclass(cls, BaseSettings)
            and cls.model_config.get("env_prefix") == app.env_prefix
            and "group_id" in cls.model_fields
        ):
            return str(cls.model_fields["group_id"].default)
    return None


def test_a_keda_scaled_object_per_consumer_on_its_real_group_capped_at_partitions(
    rendered: list[dict[str, Any]],
) -> None:
    deployments = _by_kind(rendered, "Deployment")
    scaled = _by_kind(rendered, "ScaledObject")
    partitions = {spec.name: spec.partitions for spec in catalogue()}
    consumers = {f"plg-{app.name}": group for app in _apps() if (group := _group_of(app))}
    assert set(scaled) == set(consumers)
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert "replicas" not in deployments[name]["spec"], "KEDA owns the replica count"
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert set(meta) >= {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"}
        assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
        assert meta["consumerGroup"] == consumers[name]
        assert meta["topic"] in partitions
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions[meta["topic"]]
        assert meta["allowIdleConsumers"] == "false"
    # The health scorer partitions its customers by home partition: scaled like any consumer, not pinned.
    assert scaled["plg-health-score"]["spec"]["maxReplicaCount"] == partitions["usage-events-enriched"]


def test_values_name_every_devstack_service_with_its_module_port_and_prefix() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    services = values["services"]
    assert set(services) == {app.name for app in _apps()} | set(EXTRA)
    for app in _apps():
        entry = services[app.name]
        assert (entry["module"], entry["port"], entry["envPrefix"]) == (app.module, app.port, app.env_prefix)
