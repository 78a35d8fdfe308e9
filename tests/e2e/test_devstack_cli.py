"""``python -m services.devstack up/status/down`` as a developer runs it (behind make up/status/down)."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import psycopg
import pytest

from services.devstack.config import free_ports
from services.devstack.processes import port_open
from services.kernel.provision import admin_client
from services.kernel.settings import KafkaSettings
from services.kernel.topics import catalogue


@pytest.fixture
def stack_args(tmp_path):
    kafka, controller, postgres, registry = free_ports(4)
    args = [
        "--root", str(tmp_path / "stack"), "--kafka-port", str(kafka),
        "--kafka-controller-port", str(controller), "--postgres-port", str(postgres),
        "--registry-port", str(registry), "--no-apps",
    ]  # fmt: skip
    ports = {"kafka": kafka, "postgres": postgres, "registry": registry}
    yield args, ports
    # Whatever the test did, leave nothing running.
    _devstack("down", *args)


def _devstack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.devstack", *args], capture_output=True, text=True, timeout=240
    )


def test_up_starts_a_working_stack_and_down_stops_it(stack_args):
    args, ports = stack_args
    up = _devstack("up", *args)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "plg stack up in" in up.stdout

    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{ports['kafka']}")
    topics = admin_client(kafka).list_topics(timeout=10).topics
    assert {t.name for t in catalogue()} <= set(topics), "up provisions the catalogue"
    with psycopg.connect(f"postgresql://plg@127.0.0.1:{ports['postgres']}/plg") as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] > 0
    subjects = httpx.get(f"http://127.0.0.1:{ports['registry']}/subjects", timeout=10).json()
    assert "usage-events-value" in subjects, "up registers the catalogue's schemas"

    status = _devstack("status", *args)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("running (pid") == 3

    again = _devstack("up", *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already running") == 3

    down = _devstack("down", *args)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(port_open("127.0.0.1", port) for port in ports.values())
    stopped = _devstack("status", *args)
    assert "running (pid" not in stopped.stdout


def test_up_refuses_a_port_taken_by_someone_else(stack_args):
    args, ports = stack_args
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["postgres"]))
        squatter.listen()
        up = _devstack("up", *args)
    assert up.returncode == 1
    assert "already taken" in up.stderr
