"""Fixtures of the growth integration tests: the service for real (uvicorn on a free loopback port, in a
thread) against the suite's stack and a fresh topic prefix, and an SSE reader."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from services.devstack.config import free_port
from services.growth.app import build_app
from services.growth.config import GrowthSettings
from services.kernel.settings import DatabaseSettings, KafkaSettings, PlatformSettings, SchemaRegistrySettings

ADMIN_TOKEN = "test-admin-token"


@dataclass
class RunningGrowth:
    url: str
    settings: GrowthSettings
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)

    def admin(self, actor: str = "ann@plg.dev") -> httpx.Client:
        return self.client(headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Plg-Actor": actor})

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


GrowthFactory = Callable[..., RunningGrowth]


@pytest.fixture
def start_growth(
    provisioned: Any,
    kafka_settings: KafkaSettings,
    registry_settings: SchemaRegistrySettings,
    database_settings: DatabaseSettings,
) -> Iterator[GrowthFactory]:
    """``start_growth(**overrides)``: the service on the test's topic prefix, stopped afterwards."""
    running: list[RunningGrowth] = []

    def start(**overrides: Any) -> RunningGrowth:
        port = free_port()
        fields: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "kafka": kafka_settings,
            "registry": registry_settings,
            "database": database_settings,
            "platform": PlatformSettings(topic_prefix=provisioned.prefix),
            "admin_token": ADMIN_TOKEN,
            "instance_id": f"test-{port}",
            **overrides,
        }
        settings = GrowthSettings(**fields)
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
            )
        )
        thread = threading.Thread(target=server.run, name=f"growth-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("growth failed to start (see the log above)")
            time.sleep(0.05)
        handle = RunningGrowth(f"http://127.0.0.1:{port}", settings, server, thread)
        running.append(handle)
        return handle

    yield start
    for handle in reversed(running):
        handle.stop()


@pytest.fixture
def growth(start_growth: GrowthFactory) -> RunningGrowth:
    return start_growth()


class SseReader:
    """Reads a server-sent event stream in a thread; ``next(event, timeout)`` returns the next event's
    parsed JSON data (and its arrival time)."""

    def __init__(self, url: str) -> None:
        self.events: queue.Queue[tuple[str, Any, float]] = queue.Queue()
        self._client = httpx.Client(timeout=httpx.Timeout(30, read=None))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()

    def _read(self, url: str) -> None:
        with self._client.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            event, data = "message", []
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    self.events.put((event, json.loads("\n".join(data)), time.monotonic()))
                    event, data = "message", []

    def next(self, event: str, timeout: float = 10.0) -> tuple[Any, float]:
        deadline = time.monotonic() + timeout
        while True:
            name, data, at = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if name == event:
                return data, at

    def close(self) -> None:
        self._stop.set()
        self._client.close()
