"""Every service's ``python -m`` entry point: ``--check-config`` and the start-up logs never show a secret.

Subprocesses, as an operator runs them, with a password in each place settings can hold one: a
``KAFKA_EXTRA`` librdkafka property, the ``DATABASE_URL``, the registry admin tokens. The endpoints point
at closed ports, so the start-up attempts fail (or wait) without a stack; whatever a service prints before
that — settings, errors, tracebacks — is searched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.devstack.config import free_port
from tests.processes import HANG_SECONDS

REPO = Path(__file__).resolve().parents[2]

SECRETS = ("kafka-sasl-pw-1", "db-pw-2", "registry-token-3", "admin-token-4", "pii-key-5")
MODULES = (
    "services.ingest",
    "services.schema_registry",
    "services.metering_aggregator",
    "services.entitlements",
    "services.growth",
    "services.enrichment",
    "services.health_score",
)


def _env() -> dict[str, str]:
    closed = free_port()  # nothing listens there
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "SCHEMA_REGISTRY_"))
    }
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed}",
            "KAFKA_EXTRA": json.dumps(
                {"sasl.mechanism": "PLAIN", "sasl.username": "svc", "sasl.password": SECRETS[0]}
            ),
            "DATABASE_URL": f"postgresql://plg:{SECRETS[1]}@127.0.0.1:{closed}/plg?connect_timeout=1",
            "SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{closed}",
            "SCHEMA_REGISTRY_ADMIN_TOKEN": SECRETS[2],
            "REGISTRY_ADMIN_TOKEN": SECRETS[3],
            "GROWTH_ADMIN_TOKEN": SECRETS[3],
            "ENRICHMENT_PII_KEY": SECRETS[4],
            "PLG_LOG_FORMAT": "json",
        }
    )
    for prefix in ("INGEST_", "REGISTRY_", "METERING_", "ENTITLEMENTS_", "GROWTH_", "ENRICHMENT_", "HEALTH_"):
        env[f"{prefix}PORT"] = str(free_port())
    return env


def _assert_no_secret(output: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in output, f"{where} printed {secret!r}"


@pytest.mark.parametrize("module", MODULES)
def test_check_config_never_prints_a_secret(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--check-config"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=HANG_SECONDS,
    )

    assert done.returncode == 0, done.stderr
    _assert_no_secret(done.stdout + done.stderr, f"{module} --check-config")
    settings = json.loads(done.stdout)["settings"]
    assert settings["database"]["url"] == "**********"


def test_start_up_logs_never_show_a_secret() -> None:
    """Each service starts, logs its settings, then fails (or waits) on the closed ports; killed after a few
    seconds of output. Started together to keep the test short."""
    procs = {
        module: subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for module in MODULES
    }
    # Each is read as it writes, and stopped once it has logged its settings and had 3 s more to log
    # anything else (the two that exit on the closed database are waited for): a fixed few seconds for all
    # is too short when several Python processes start at once on a busy 2-core machine.
    exits = {"services.ingest", "services.schema_registry"}
    lines: dict[str, list[str]] = {module: [] for module in procs}

    def pump(module: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines[module].append(line)

    pumps = [threading.Thread(target=pump, args=item, daemon=True) for item in procs.items()]
    for t in pumps:
        t.start()
    logged_at: dict[str, float] = {}
    deadline = time.monotonic() + HANG_SECONDS
    while time.monotonic() < deadline:
        now = time.monotonic()
        waiting = False
        for module, proc in procs.items():
            if module not in logged_at and any('"msg":"settings"' in line for line in list(lines[module])):
                logged_at[module] = now
            if proc.poll() is not None:
                continue
            if module in exits or module not in logged_at or now - logged_at[module] < 3:
                waiting = True
        if not waiting:
            break
        time.sleep(0.1)
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    for t in pumps:
        t.join(timeout=10)
    outputs = {module: "".join(out) for module, out in lines.items()}

    for module, out in outputs.items():
        assert '"msg":"settings"' in out, f"{module} did not log its settings:\n{out[-2000:]}"
        _assert_no_secret(out, f"{module} at start")
    # ingest and the registry apply migrations first: the refused database ends them, with status 1
    assert procs["services.ingest"].returncode == 1
    assert procs["services.schema_registry"].returncode == 1
