"""The SDK and the real ingest service as separate processes: offline queueing across restarts, no new ids."""

from __future__ import annotations

import collections
import signal
import threading
import time
from typing import Any

from services.kernel.kafka import Consumer, TopicPartition
from services.kernel.settings import KafkaSettings
from services.kernel.topics import USAGE_EVENTS
from services.kernel.topics import topic as catalogue_topic
from tests.e2e.ingest.conftest import IngestProcess, SdkRun
from tests.integration.ingest.conftest import Tenant, read_topic


def test_events_queued_while_ingest_is_down_are_delivered_after_it_returns_across_a_client_restart(
    ingest_process: IngestProcess, run_sdk: SdkRun, tenant: Tenant, provisioned: Any, stack: Any
) -> None:
    # 1. ingest is not running: the app tracks 60 events and an identify, then exits
    first = run_sdk("track", ingest_process.url, tenant.key, "60")
    assert first["sent"] == 0
    assert first["pending"] == 61
    assert "stay queued" in first["stderr"]
    # 2. ingest comes up; 3. the app starts again (a new process) and delivers what the first one queued
    ingest_process.start()
    second = run_sdk("flush", ingest_process.url, tenant.key, "60")
    assert second["delivered"] is True
    assert (second["sent"], second["pending"], second["rejected"]) == (61, 0, 0)
    records = read_topic(
        stack.kafka_bootstrap, stack.registry_url, provisioned.topic("usage-events"), 61, settle=2.0
    )
    ids = [m.value()["event_id"] for m in records]
    assert sorted(ids) == sorted(first["ids"])  # each exactly once
    identify = next(m.value() for m in records if m.value()["name"] == "$identify")
    assert identify["user_id"] == "user-e2e"
    assert all(m.value()["ingest"]["source"] == "sdk" for m in records)
    links = read_topic(stack.kafka_bootstrap, stack.registry_url, provisioned.topic("identity-links"), 1)
    assert [m.value()["user_id"] for m in links] == ["user-e2e"]


def test_retries_through_an_ingest_crash_never_send_an_event_under_a_new_id(
    ingest_process: IngestProcess, run_sdk: SdkRun, tenant: Tenant, provisioned: Any, stack: Any
) -> None:
    ingest_process.start()
    first = run_sdk("track", "http://127.0.0.1:9", tenant.key, "3000")  # queue 3000 (+1) events offline

    def crash_and_restart() -> None:
        # Mid-delivery: once the first batch is on the topic (a fixed sleep raced a fast machine, which
        # had delivered everything before the kill), some batches written but never answered.
        with Consumer(KafkaSettings(bootstrap_servers=stack.kafka_bootstrap)) as probe:
            topic = provisioned.topic("usage-events")
            partitions = [TopicPartition(topic, p) for p in range(catalogue_topic(USAGE_EVENTS).partitions)]
            deadline = time.monotonic() + 30
            while sum(probe.end_offsets(partitions).values()) == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
        ingest_process.stop(signal.SIGKILL)
        time.sleep(1.0)
        ingest_process.start()

    chaos = threading.Thread(target=crash_and_restart)
    chaos.start()
    second = run_sdk("flush", ingest_process.url, tenant.key, "90", "50")
    chaos.join()
    assert second["delivered"] is True
    assert second["retries"] >= 1
    records = read_topic(
        stack.kafka_bootstrap,
        stack.registry_url,
        provisioned.topic("usage-events"),
        3001,
        timeout=60,
        settle=2.0,
    )
    counts = collections.Counter(m.value()["event_id"] for m in records)
    assert set(counts) == set(first["ids"])  # every event arrived, and no id was ever invented
    # a batch whose answer was lost may arrive twice, always under its original ids (dedup downstream)
    assert sum(counts.values()) - len(counts) <= 3000
