"""Fixtures of the schema-registry integration tests: a fresh PostgreSQL database per test module (on the
suite's stack), the registry app in-process on it, and real registry processes on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from services.kernel.settings import DatabaseSettings
from services.schema_registry.app import build_app
from services.schema_registry.config import RegistrySettings

REPO_ROOT = Path(__file__).resolve().parents[3]
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ADMIN_TOKEN = "sr-test-admin-token"


@pytest.fixture(scope="module")
def registry_database(stack) -> Iterator[str]:
    """A database of this module's own (``plg_sr_<random>``), dropped afterwards."""
    name = f"plg_sr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(stack.database_url, dbname=name)
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def registry_settings_for(database_url: str, **overrides: object) -> RegistrySettings:
    return RegistrySettings(
        database=DatabaseSettings(url=SecretStr(database_url), pool_min_size=1, pool_max_size=4),
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def api(registry_database) -> Iterator[TestClient]:
    """The registry app in-process (lifespan run: migrations applied, pool open), writes unprotected."""
    with TestClient(
        build_app(registry_settings_for(registry_database)), raise_server_exceptions=False
    ) as client:
        client.headers["Content-Type"] = CONTENT_TYPE
        yield client


@pytest.fixture
def subject() -> str:
    return f"sr-{uuid.uuid4().hex[:10]}-value"


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


@pytest.fixture(scope="module")
def start_registry(tmp_path_factory) -> Iterator[Callable[..., RegistryProcess]]:
    """Factory: ``start_registry(database_url, REGISTRY_ADMIN_TOKEN=...)``; every process is stopped (by its
    own pid) when the module is done."""
    started: list[RegistryProcess] = []
    logs = tmp_path_factory.mktemp("registry-logs")

    def start(database_url: str, **env: str) -> RegistryProcess:
        port = free_port()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        child_env.update(
            DATABASE_URL=database_url,
            REGISTRY_HOST="127.0.0.1",
            REGISTRY_PORT=str(port),
            DATABASE_POOL_MAX_SIZE="4",
            PYTHONUNBUFFERED="1",
            **env,
        )
        log = logs / f"registry-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.schema_registry"],
                cwd=REPO_ROOT,
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = RegistryProcess(f"http://127.0.0.1:{port}", process, log)
        started.append(server)
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"registry exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"registry not ready after 30 s:\n{log.read_text()}")
            time.sleep(0.1)

    yield start
    for server in reversed(started):
        server.stop()
