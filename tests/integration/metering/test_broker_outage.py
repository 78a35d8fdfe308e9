"""The broker goes away while the aggregator is committing, and comes back: nothing lost, nothing twice."""

from __future__ import annotations

import threading
import time
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
        stop = threading.Event()

        def stream() -> None:
            # Batches every 20 ms, a tenth of them re-sent: transactions are in flight when the broker dies.
            while not stop.is_set():
                batch = [usage_event(customer) for _ in range(20)]
                sent.extend(batch)
                world.send(batch + batch[:2])
                time.sleep(0.02)

        sender = threading.Thread(target=stream, daemon=True)
        sender.start()
        wait_for(lambda: (world.period_total(customer) or (0, 0))[1] > 100, what="a first stretch counted")
        broker.stop()
        time.sleep(2)
        broker.start()
        time.sleep(3)
        stop.set()
        sender.join(60)
        assert not sender.is_alive()
        wait_for(
            lambda: world.period_total(customer) == (Decimal(len(sent)), len(sent)),
            timeout=120,
            interval=1.0,
            what=f"{len(sent)} unique events counted once",
        )
        assert running.thread.is_alive(), running.errors  # it rode the outage out, no crash
    finally:
        world.close()
