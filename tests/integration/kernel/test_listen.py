"""The kernel's LISTEN/NOTIFY listener against the real PostgreSQL: resync on connect, bursts delivered
as one call, and a connection killed by the server comes back (resyncing) on its own."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import psycopg

from services.kernel.listen import Listener


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_the_listener_resyncs_on_connect_batches_bursts_and_survives_a_killed_connection(
    database_settings,
) -> None:
    dsn = database_settings.url.get_secret_value()
    channel = f"plg_test_{uuid.uuid4().hex[:8]}"
    calls: list[list[str]] = []
    resyncs = threading.Semaphore(0)
    resynced: list[float] = []

    def resync() -> None:
        resynced.append(time.monotonic())
        resyncs.release()

    listener = Listener(dsn, channel, name="test-listener", on_notify=calls.append, on_resync=resync).start()
    try:
        assert resyncs.acquire(timeout=20)  # connected: whatever changed before is reloaded once
        assert listener.ready()
        with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
            for i in range(50):  # one transaction: delivered together at commit
                conn.execute("SELECT pg_notify(%s, %s)", (channel, f"c{i}"))
        _wait_for(lambda: sum(len(c) for c in calls) == 50)
        assert len(calls) <= 3, "a burst is a few calls, not one per notification"
        assert [p for c in calls for p in c] == [f"c{i}" for i in range(50)]

        with psycopg.connect(dsn, autocommit=True) as admin:  # the server drops the listening connection
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s AND pid <> "
                "pg_backend_pid()",
                (f"LISTEN {channel}%",),
            )
        assert resyncs.acquire(timeout=30), "the listener did not reconnect"
        _wait_for(listener.ready)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, 'after')", (channel,))
        _wait_for(lambda: calls[-1] == ["after"])
    finally:
        listener.close()
    assert not listener.ready()


def test_a_failing_callback_is_logged_and_the_listener_goes_on(database_settings, caplog) -> None:
    dsn = database_settings.url.get_secret_value()
    channel = f"plg_test_{uuid.uuid4().hex[:8]}"
    seen: list[str] = []

    def handle(payloads: list[str]) -> None:
        seen.extend(payloads)
        if "boom" in payloads:
            raise ValueError("bad payload")

    listener = Listener(dsn, channel, name="test-listener", on_notify=handle).start()
    try:
        _wait_for(listener.ready)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, 'boom')", (channel,))
            _wait_for(lambda: "boom" in seen)
            conn.execute("SELECT pg_notify(%s, 'next')", (channel,))
        _wait_for(lambda: "next" in seen)
    finally:
        listener.close()
    assert any("handling a change failed" in r.getMessage() for r in caplog.records)
