"""Fixtures of the schema-registry integration tests: a fresh PostgreSQL database per test module (on the
suite's stack), the registry app in-process on it, and real registry processes on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.conninfo import make_conninfo

from services.schema_registry.app import build_app
from tests.integration.schema_registry.support import (
    CONTENT_TYPE,
    REPO_ROOT,
    RegistryProcess,
    free_port,
    registry_settings_for,
)


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
