"""Fixtures for the ingest end-to-end tests: ingest as a real process, the SDK in other processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

# Reuse the tenant fixtures of the integration tests (a customer and an API key in Postgres).
from tests.integration.ingest.conftest import new_tenant, read_topic, tenant  # noqa: F401

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("sdk_client_script.py")


@dataclass
class IngestProcess:
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = tempfile.NamedTemporaryFile(prefix="plg-e2e-ingest-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = log.name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.ingest"],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingest exited: {Path(self.log_path).read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("ingest not ready within 60 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.log_path:
            os.unlink(self.log_path)
            self.log_path = ""


@pytest.fixture
def ingest_process(provisioned: Any, stack: Any) -> Iterator[IngestProcess]:
    """Ingest configured on a free port and the test's topic prefix; not started: call ``.start()``."""
    from services.devstack.config import free_port

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": stack.registry_url,
        "DATABASE_URL": stack.database_url,
        "PLG_TOPIC_PREFIX": provisioned.prefix,
        "PLG_LOG_LEVEL": "WARNING",
        "INGEST_PORT": str(free_port()),
    }
    handle = IngestProcess(int(env["INGEST_PORT"]), env)
    yield handle
    handle.stop()


SdkRun = Callable[..., dict[str, Any]]


@pytest.fixture
def run_sdk(tmp_path: Path) -> SdkRun:
    """Run the SDK client script as a separate process; returns its JSON report."""

    def run(
        command: str, url: str, key: str, arg: str, *extra: str, queue_dir: Path | None = None
    ) -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "sdk"), str(ROOT)])}
        out = subprocess.run(
            [
                sys.executable,
                str(SCRIPT),
                command,
                url,
                key,
                str(queue_dir or tmp_path / "queue"),
                arg,
                *extra,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        report["stderr"] = out.stderr
        return report

    return run
