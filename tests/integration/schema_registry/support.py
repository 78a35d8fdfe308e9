"""Helpers shared by the schema-registry integration tests (kept out of conftest so tests can import them)."""

from __future__ import annotations

import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from services.kernel.settings import DatabaseSettings
from services.schema_registry.config import RegistrySettings

REPO_ROOT = Path(__file__).resolve().parents[3]
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ADMIN_TOKEN = "sr-test-admin-token"


def registry_settings_for(database_url: str, **overrides: object) -> RegistrySettings:
    return RegistrySettings(
        database=DatabaseSettings(url=SecretStr(database_url), pool_min_size=1, pool_max_size=4),
        **overrides,  # type: ignore[arg-type]
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RegistryProcess:
    """``python -m services.schema_registry`` running on a free loopback port."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
