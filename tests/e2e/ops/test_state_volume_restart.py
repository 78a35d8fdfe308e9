"""The aggregator as the deploy artefacts run it (docs/operations.md#warm-restarts-and-state-volumes): a
``python -m`` process whose ``METERING_STATE_DIR`` is a volume and whose ``METERING_INSTANCE_ID`` is a
StatefulSet pod's name. SIGTERM stops it cleanly with its stores sealed, well inside the chart's grace; the
next process with the same id on the same volume reuses every partition's store; one with another id (a
Deployment's new pod name) finds none of its own and replays. Dedup exact throughout."""

from __future__ import annotations

import os
import re
from decimal import Decimal

import httpx
import pytest
import yaml

from services.devstack.config import REPO_ROOT, free_port
from services.kernel.db import migrate
from services.kernel.partitioning import key_partitioner
from tests.integration.metering.harness import Metering, usage_event, wait_for
from tests.processes import HANG_SECONDS, Proc

PARTITIONS = 6  # usage-events (services/kernel/topics.py)
POD = "plg-metering-aggregator-0"


@pytest.fixture
def world(provisioned, kafka_settings, registry_settings, database_settings, stack, tmp_path):
    migrate(database_settings.url.get_secret_value())
    world = Metering(provisioned.prefix, kafka_settings, registry_settings, database_settings)
    procs: list[Proc] = []
    volume = tmp_path / "state-volume"

    def aggregator(instance_id: str) -> tuple[Proc, str]:
        port = free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "SCHEMA_REGISTRY_URL": stack.registry_url,
            "DATABASE_URL": stack.database_url,
            "PLG_TOPIC_PREFIX": provisioned.prefix,
            "PLG_LOG_FORMAT": "text",
            "METERING_PORT": str(port),
            "METERING_BATCH_WAIT_MS": "50",
            "METERING_CUSTOMERS_REFRESH_SECONDS": "1",
            "METERING_INSTANCE_ID": instance_id,
            "METERING_STATE_DIR": str(volume),
        }
        proc = Proc("services.metering_aggregator", env, tmp_path / f"{instance_id}.log").start()
        procs.append(proc)
        return proc, f"http://127.0.0.1:{port}/metrics"

    world.aggregator = aggregator  # type: ignore[attr-defined]
    world.volume = volume  # type: ignore[attr-defined]
    try:
        yield world
    finally:
        for proc in procs:
            proc.terminate()
        world.close()


def restores(metrics_url: str) -> dict[str, float]:
    """plg_metering_restores_total by source, as scraped (empty while the process is not serving yet)."""
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return {}
    found = re.findall(r'^plg_metering_restores_total\{source="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {source: float(value) for source, value in found}


def stop_cleanly(proc: Proc) -> None:
    assert proc.popen is not None
    proc.popen.terminate()  # SIGTERM, as the kubelet and `docker compose stop` send it
    chart = yaml.safe_load((REPO_ROOT / "deploy" / "helm" / "plg" / "values.yaml").read_text())
    # Not a speed bound: a hang would never end; the chart grants this long before SIGKILL.
    assert proc.popen.wait(max(HANG_SECONDS, chart["state"]["terminationGracePeriodSeconds"])) == 0
    assert "local state store sealed" in proc.log.read_text()


def test_a_process_on_its_volume_with_its_pod_name_restarts_warm_and_another_id_replays(world: Metering):
    customers: dict[int, str] = {}
    first, metrics = world.aggregator(POD)  # type: ignore[attr-defined]
    wait_for(lambda: restores(metrics).get("changelog") == PARTITIONS, timeout=HANG_SECONDS, what="assigned")
    # One customer per partition (the aggregator's home function), so every partition has state to seal.
    home = key_partitioner(PARTITIONS, "consistent")
    while len(customers) < PARTITIONS:
        customer = world.customer("pro")
        customers.setdefault(int(home(customer)), customer)
    events = {c: [usage_event(c) for _ in range(9)] for c in customers.values()}

    def counted(n: int) -> None:
        for c in customers.values():
            wait_for(lambda c=c: world.period_total(c) == (Decimal(n), n), timeout=120, what=f"{c}: {n} once")

    world.send(e for evs in events.values() for e in evs[:5])
    counted(5)
    stop_cleanly(first)
    sealed = {p.name for p in (world.volume / POD).iterdir()}  # type: ignore[attr-defined]
    assert len(sealed) >= PARTITIONS  # one store per partition, under <state dir>/<instance id>/

    again, metrics = world.aggregator(POD)  # type: ignore[attr-defined]
    wait_for(lambda: restores(metrics).get("store") == PARTITIONS, timeout=HANG_SECONDS, what="warm restart")
    assert "changelog" not in restores(metrics)
    world.send(e for evs in events.values() for e in evs[:7])  # 5 duplicates, 2 new each
    counted(7)
    stop_cleanly(again)

    # Same volume, another instance id: its own directory is empty, so every partition replays.
    _other, metrics = world.aggregator("plg-metering-aggregator-7f9c6d")  # type: ignore[attr-defined]
    wait_for(lambda: restores(metrics).get("changelog") == PARTITIONS, timeout=HANG_SECONDS, what="replay")
    assert "store" not in restores(metrics)
    world.send(e for evs in events.values() for e in evs)  # 7 duplicates, 2 new each
    counted(9)
