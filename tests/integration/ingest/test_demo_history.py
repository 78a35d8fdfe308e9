"""``make demo`` against the test stack's ingest: a handful of customers provisioned (and reused on a second
run), their seeded history accepted by ``POST /v1/import``, live traffic through ``POST /v1/batch`` that
stops on SIGINT."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from services.devstack import demo
from services.kernel.settings import DatabaseSettings
from tests.integration.ingest.conftest import RunningIngest


def test_demo_provisions_once_imports_history_and_stops_live_traffic_on_sigint(
    ingest: RunningIngest, database_settings: DatabaseSettings, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time() * 1000) // 3_600_000 * 3_600_000
    history = demo.generate(4, 30, seed=5, now_ms=now)
    assert any(p.churn_ms is None for p in history.profiles), "the seed leaves someone to send live traffic"
    state = tmp_path / "state.json"
    url = database_settings.url.get_secret_value()

    keys, token = demo.provision(url, history.profiles, state)
    assert set(keys) == {p.customer_id for p in history.profiles}
    again_keys, again_token = demo.provision(url, history.profiles, state)
    assert (again_keys, again_token) == (keys, token), "a re-run reuses the customers, keys and token"

    accepted, rejected = demo.import_history(ingest.url, history, keys)
    assert rejected == 0
    assert accepted == sum(len(events) for events in history.events.values()) > 0

    # Live traffic until SIGINT, as Ctrl-C sends it.
    timer = threading.Timer(2.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        demo.live_traffic(ingest.url, history.profiles, keys, rate=20, seed=1)
    finally:
        timer.cancel()
    out = capsys.readouterr().out
    stopped = [line for line in out.splitlines() if line.startswith("stopped: ")]
    assert stopped, out
    assert int(stopped[0].split()[1]) > 0, out
