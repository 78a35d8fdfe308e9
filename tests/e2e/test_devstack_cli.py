"""``python -m services.devstack up/status/down`` as a developer runs it (behind make up/status/down)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

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
    kafka, controller, postgres, registry, stripe_http, stripe_https, emulator = free_ports(7)
    args = [
        "--root", str(tmp_path / "stack"), "--kafka-port", str(kafka),
        "--kafka-controller-port", str(controller), "--postgres-port", str(postgres),
        "--registry-port", str(registry), "--stripe-mock-port", str(stripe_http),
        "--stripe-mock-https-port", str(stripe_https), "--stripe-emulator-port", str(emulator), "--no-apps",
    ]  # fmt: skip
    ports = {
        "kafka": kafka, "postgres": postgres, "registry": registry,
        "stripe-mock": stripe_http, "stripe-mock-https": stripe_https, "stripe-emulator": emulator,
    }  # fmt: skip
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
    # postgres, kafka, registry, stripe-mock, the Stripe emulator
    assert status.stdout.count("running (pid") == 5
    assert f"http://127.0.0.1:{ports['stripe-mock']}" in status.stdout
    assert f"http://127.0.0.1:{ports['stripe-emulator']}" in status.stdout

    again = _devstack("up", *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already running") == 5

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


def test_run_serves_in_the_foreground_until_ctrl_c_then_stops_everything(stack_args):
    args, ports = stack_args
    run = subprocess.Popen(
        [sys.executable, "-m", "services.devstack", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 180
        assert run.stdout is not None
        while time.monotonic() < deadline:
            line = run.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "stop: Ctrl-C" in line:
                break
        output = "".join(seen)
        assert "Listening:" in output, output
        assert f"127.0.0.1:{ports['kafka']}" in output
        assert f"http://127.0.0.1:{ports['registry']}" in output
        assert all(port_open("127.0.0.1", port) for port in ports.values())

        run.send_signal(signal.SIGINT)
        rest, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, rest
    assert "stopping" in rest
    assert not any(port_open("127.0.0.1", port) for port in ports.values())
