"""deploy/helm/plg: `helm lint`, `helm template`, every rendered object validated offline against the
Kubernetes 1.37 schemas (kubernetes-validate), KEDA's ScaledObjects checked against the services' real
consumer groups and the topic catalogue's partition counts, the services against the devstack's, and every
service with local state stores (a ``state_dir`` setting) a StatefulSet with its own volume there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.devstack import gotools
from services.devstack.apps import APP_SERVICES, SCHEMA_REGISTRY, AppService
from services.devstack.config import REPO_ROOT, StackSettings
from services.kernel.processing.store import store_path
from services.kernel.topics import catalogue
from tests.settings_support import group_of, settings_with, state_dir_env

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


def _render(helm: Path, *values: str) -> list[dict[str, Any]]:
    sets = [arg for value in values for arg in ("--set", value)]
    out = _helm(helm, "template", "plg", str(CHART), "--namespace", "plg", *sets)
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered(helm: Path) -> list[dict[str, Any]]:
    return _render(helm)


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _workloads(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**_by_kind(objects, "Deployment"), **_by_kind(objects, "StatefulSet")}


def _stateful() -> dict[str, str]:
    """Service name -> its state dir variable, for every service whose settings keep local state stores."""
    return {app.name: env for app in _apps() if (env := state_dir_env(app))}


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
    deployments = _workloads(rendered)  # Deployments, and StatefulSets for the services with local state
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
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for env in container["env"]:
                if SECRET_LOOKING.search(env["name"]):
                    assert "value" not in env, f"{obj['metadata']['name']}: {env['name']} inlined"
                    assert env["valueFrom"]["secretKeyRef"]["name"]


def test_every_service_has_a_pod_disruption_budget_and_a_service(rendered: list[dict[str, Any]]) -> None:
    deployments = _workloads(rendered)
    assert set(_by_kind(rendered, "PodDisruptionBudget")) == set(deployments)
    # Plus each StatefulSet's headless governing Service.
    headless = {sts["spec"]["serviceName"] for sts in _by_kind(rendered, "StatefulSet").values()}
    assert set(_by_kind(rendered, "Service")) == set(deployments) | headless
    for name, pdb in _by_kind(rendered, "PodDisruptionBudget").items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_provisioner_is_a_job_run_after_install_and_upgrade(rendered: list[dict[str, Any]]) -> None:
    (job,) = _by_kind(rendered, "Job").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["services.kernel.provision"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


def test_a_keda_scaled_object_per_consumer_on_its_real_group_capped_at_partitions(
    rendered: list[dict[str, Any]],
) -> None:
    deployments = _workloads(rendered)
    scaled = _by_kind(rendered, "ScaledObject")
    partitions = {spec.name: spec.partitions for spec in catalogue()}
    consumers = {f"plg-{app.name}": group for app in _apps() if (group := group_of(app))}
    assert set(scaled) == set(consumers)
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        target = spec["scaleTargetRef"]
        assert target["name"] == name
        # KEDA assumes a Deployment unless told: a StatefulSet target must say so.
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", deployments[name]["kind"])
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


def _stateful_pod(sts: dict[str, Any], env_name: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The pod spec, its container's env by name, and where the state dir variable points."""
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    return pod, env, env[env_name]["value"]


def _mounted_volume(pod: dict[str, Any], path: str) -> str:
    (container,) = pod["containers"]
    (mount,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == path]
    return str(mount["name"])


def test_each_service_with_local_state_is_a_stateful_set_with_its_own_claim_at_its_state_dir(
    rendered: list[dict[str, Any]],
) -> None:
    stateful = _stateful()
    # The three the kernel's stores serve today (docs/kernel.md); a new one is found from its settings.
    assert {"metering-aggregator", "enrichment", "growth"} <= set(stateful)
    statefulsets = _by_kind(rendered, "StatefulSet")
    assert set(statefulsets) == {f"plg-{name}" for name in stateful}
    assert not set(statefulsets) & set(_by_kind(rendered, "Deployment"))
    services = _by_kind(rendered, "Service")
    scaled = _by_kind(rendered, "ScaledObject")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    apps = {app.name: app for app in _apps()}
    for name, env_name in stateful.items():
        sts = statefulsets[f"plg-{name}"]
        spec = sts["spec"]
        pod, env, state_dir = _stateful_pod(sts, env_name)
        # The state dir is a volume claim of the replica's own, from the claim template.
        (claim,) = spec["volumeClaimTemplates"]
        assert _mounted_volume(pod, state_dir) == claim["metadata"]["name"]
        assert all(v["name"] != claim["metadata"]["name"] for v in pod.get("volumes", []))
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        size = values["services"][name]["stateDir"]["size"]
        assert claim["spec"]["resources"]["requests"]["storage"] == size
        assert spec["persistentVolumeClaimRetentionPolicy"] == values["state"]["claimRetention"]
        # Consumers in one group are peers: started and stopped together.
        assert spec["podManagementPolicy"] == "Parallel"
        # The governing Service is headless and selects these pods.
        governing = services[spec["serviceName"]]["spec"]
        assert governing["clusterIP"] == "None"
        assert governing["selector"].items() <= pod_labels(sts).items()
        # The seal at a clean stop gets the configured time, more than a stateless service's.
        assert pod["terminationGracePeriodSeconds"] == values["state"]["terminationGracePeriodSeconds"] > 60
        # Instance id = pod name: <statefulset>-<ordinal>, stable across restarts, distinct per replica. Each
        # replica's settings accept it, give distinct transactional ids, and put its stores on its volume.
        app = apps[name]
        instance_env = f"{app.env_prefix}INSTANCE_ID"
        assert env[instance_env]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        settings_cls = settings_with(app, "state_dir")
        assert settings_cls is not None
        # The seals follow the last commit (up to the commit timeout while a broker is away): as much again.
        commit_timeout = settings_cls.model_fields["commit_timeout_seconds"].default
        assert pod["terminationGracePeriodSeconds"] >= 2 * commit_timeout
        replicas = scaled[f"plg-{name}"]["spec"]["maxReplicaCount"]
        pods = [f"plg-{name}-{ordinal}" for ordinal in range(replicas)]
        settings = [settings_cls(instance_id=pod_name, state_dir=state_dir) for pod_name in pods]
        assert len({s.transactional_id for s in settings}) == replicas
        for pod_name, replica in zip(pods, settings, strict=True):
            store = store_path(replica.state_dir, replica.instance_id, "changelog-0")
            assert store.is_relative_to(state_dir)
            assert pod_name in store.parts


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def test_a_single_writer_deployment_with_a_data_volume_keeps_one_instance_id_across_restarts(
    rendered: list[dict[str, Any]],
) -> None:
    # Analytics: chDB on a claim, one replica, Recreate; its settings make the instance id its static group
    # membership, which a pod name (new at every restart of a Deployment) would defeat.
    for app in _apps():
        if app.data_dir_env is None or app.name in _stateful():
            continue
        deployment = _by_kind(rendered, "Deployment")[f"plg-{app.name}"]
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env[f"{app.env_prefix}INSTANCE_ID"]["value"] == f"plg-{app.name}"


def test_stateful_sets_render_valid_with_an_empty_dir_or_a_storage_class(helm: Path) -> None:
    stateful = _stateful()
    without = _render(helm, "state.persistence.enabled=false")
    for name, env_name in stateful.items():
        sts = _by_kind(without, "StatefulSet")[f"plg-{name}"]
        assert "volumeClaimTemplates" not in sts["spec"]
        pod, _, state_dir = _stateful_pod(sts, env_name)
        volume = _mounted_volume(pod, state_dir)
        (empty,) = [v for v in pod["volumes"] if v["name"] == volume]
        assert "emptyDir" in empty
        kubernetes_validate.validate(sts, KUBERNETES_VERSION, strict=True)
    classed = _render(helm, "state.persistence.storageClass=fast-local-ssd")
    for name in stateful:
        sts = _by_kind(classed, "StatefulSet")[f"plg-{name}"]
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["storageClassName"] == "fast-local-ssd"
        kubernetes_validate.validate(sts, KUBERNETES_VERSION, strict=True)
