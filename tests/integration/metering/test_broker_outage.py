"""The broker dies while the aggregator is committing, and comes back: nothing lost, nothing twice."""

from __future__ import annotations

import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from decimal import Decimal

from services.kernel.db import migrate
from services.kernel.provision import provision_all
from tests.integration.metering.harness import Metering, usage_event, wait_for


def test_totals_stay_exact_when_the_broker_restarts_under_load(
    private_kafka: Callable, registry_settings, database_settings
):
    broker = private_kafka()
    prefix = f"t{uuid.uuid4().hex[:7]}-"
    provision_all(broker.settings, registry_settings, prefix=prefix)
    migrate(database_settings.url.get_secret_value())
    world = Metering(prefix, broker.settings, registry_settings, database_settings)
    try:
        customer = world.customer("pro")
        running = world.start(commit_timeout_seconds=5, transaction_timeout_ms=15_000)
        sent: list[dict] = []
        undelivered: list[Exception] = []
        stop = threading.Event()

        def deliver(batch: list[dict]) -> None:
            # While the broker is away past the producer's message timeout a send fails: the same events go
            # again (same ids), as a client retries; any of them that did arrive are duplicates, counted once.
            deadline = time.monotonic() + 120
            while True:
                try:
                    world.send(batch + batch[:2])
                    return
                except Exception as exc:
                    if time.monotonic() > deadline:
                        undelivered.append(exc)
                        raise
                    time.sleep(0.5)

        def stream() -> None:
            # Batches every 20 ms, a tenth of them re-sent: transactions are in flight when the broker dies.
            while not stop.is_set():
                batch = [usage_event(customer) for _ in range(20)]
                sent.extend(batch)
                deliver(batch)
                time.sleep(0.02)

        sender = threading.Thread(target=stream, daemon=True)
        sender.start()
        wait_for(lambda: (world.period_total(customer) or (0, 0))[1] > 100, what="a first stretch counted")
        broker.kill()  # a crash, not a controlled shutdown: see PrivateKafka.kill
        time.sleep(2)
        broker.start()
        time.sleep(3)
        stop.set()
        sender.join(150)
        assert not sender.is_alive()
        assert not undelivered, undelivered
        expected = (Decimal(len(sent)), len(sent))
        seen: list[tuple[Decimal, int] | None] = []

        def counted() -> bool:
            seen.append(world.period_total(customer))
            return seen[-1] == expected

        try:
            wait_for(counted, timeout=120, interval=1.0, what=f"{len(sent)} unique events counted once")
        except AssertionError as exc:  # say what was counted instead, and where the loop is
            frame = sys._current_frames().get(running.thread.ident or -1)
            where = "".join(traceback.format_stack(frame)) if frame is not None else "(loop thread gone)"
            state = f"counted {seen[-1]}, errors {running.errors}"
            raise AssertionError(f"{exc}; {state}, loop at:\n{where}") from exc
        assert running.thread.is_alive(), running.errors  # it rode the outage out, no crash
    finally:
        world.close()
