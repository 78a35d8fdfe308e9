"""The local state store on the real stack: a restart reuses a store sealed at the committed offset instead
of replaying the changelog, and a store that is behind the committed offset or damaged is replaced by the
changelog — dedup exact every time."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from tests.integration.metering.harness import Metering, Running, usage_event, wait_for


def home(running: Running, customer: str) -> int:
    return int(running.app.handler.home_partition(customer))


def store_files(metering: Metering, instance: str) -> list[Path]:
    return [f for f in (metering.state_dir / instance).rglob("*") if f.is_file()]


def test_a_restart_reuses_the_sealed_local_store_and_dedup_stays_exact(metering: Metering):
    customer = metering.customer("pro")
    events = [usage_event(customer) for _ in range(40)]
    # A bound small enough that most ids leave memory: dedup then reads them back from the store.
    first = metering.start(instance_id="agg-warm", dedup_memory_ids=1000)
    metering.send(events[:30] + events[:5])
    wait_for(lambda: metering.period_total(customer) == (Decimal(30), 30), what="first 30 counted")
    first.close()  # sealed at the committed offset

    again = metering.start(instance_id="agg-warm")
    metering.send(events)  # 30 duplicates, 10 new
    wait_for(lambda: metering.period_total(customer) == (Decimal(40), 40), what="40 counted, none twice")
    assert again.app.handler.restored_from[home(again, customer)] == "store"


def test_a_store_behind_the_committed_offset_or_damaged_is_rebuilt_from_the_changelog(metering: Metering):
    customer = metering.customer("pro")
    events = [usage_event(customer) for _ in range(50)]
    a = metering.start(instance_id="agg-a")
    metering.send(events[:20])
    wait_for(lambda: metering.period_total(customer) == (Decimal(20), 20), what="20 counted by a")
    a.close()  # agg-a's store is sealed at this offset...

    b = metering.start(instance_id="agg-b")  # ...and another instance moves the partition on
    metering.send(events[:30])
    wait_for(lambda: metering.period_total(customer) == (Decimal(30), 30), what="30 counted by b")
    b.close()

    a = metering.start(instance_id="agg-a")
    metering.send(events[:40])
    wait_for(lambda: metering.period_total(customer) == (Decimal(40), 40), what="40 counted, a store behind")
    assert a.app.handler.restored_from[home(a, customer)] == "changelog"
    a.close()

    damaged = store_files(metering, "agg-a")
    assert damaged
    for f in damaged:
        f.write_bytes(b"\x00not rocksdb")
    a = metering.start(instance_id="agg-a")
    metering.send(events)
    wait_for(lambda: metering.period_total(customer) == (Decimal(50), 50), what="50 counted, a damaged store")
    assert a.app.handler.restored_from[home(a, customer)] == "changelog"
