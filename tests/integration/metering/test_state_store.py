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


def test_windows_on_disk_stay_exact_across_a_warm_restart_and_a_replay(metering: Metering):
    """A window bound of one: after every commit each series (with its windows and unique members) is on
    disk, and comes back on its next event. A restart reusing the sealed store, and one that must replay the
    changelog (its store damaged), both count on exactly."""
    a, b = metering.customer("pro"), metering.customer("pro")

    def events(n: int, start: int) -> list[dict]:
        out = []
        for i in range(start, start + n):
            out.append(usage_event(a, user_id=f"u{i % 4}"))
            out.append(usage_event(a, "job_completed", duration_seconds=1.5, region=f"r{i % 2}"))
            out.append(usage_event(b, "user_signed_in", user_id=f"u{i % 7}"))
            out.append(usage_event(b))
        return out

    def totals() -> dict[str, tuple[Decimal, int] | None]:
        aggregates = metering.aggregates().values()

        def period(customer: str, meter: str, group: dict | None = None) -> tuple[Decimal, int] | None:
            found = [
                (v["value"], v["event_count"])
                for v in aggregates
                if (v["customer_id"], v["meter"], v["granularity"]) == (customer, meter, "BILLING_PERIOD")
                and (v["group"] or {}) == (group or {})
            ]
            return found[0] if found else None

        return {
            "a requests": period(a, "api_requests"),
            "a compute": period(a, "compute_seconds"),
            "a compute r0": period(a, "compute_seconds", {"region": "r0"}),
            "b users": period(b, "active_users"),
            "b requests": period(b, "api_requests"),
        }

    def expect(n: int) -> dict[str, tuple[Decimal, int]]:
        return {
            "a requests": (Decimal(n), n),
            "a compute": (Decimal("1.5") * n, n),
            "a compute r0": (Decimal("1.5") * ((n + 1) // 2), (n + 1) // 2),
            "b users": (Decimal(min(n, 7)), n),
            "b requests": (Decimal(n), n),
        }

    def wait_totals(n: int, what: str) -> None:
        last: dict[str, tuple[Decimal, int] | None] = {}

        def check() -> bool:
            last.update(totals())
            return last == expect(n)

        try:
            wait_for(check, timeout=60, what=what)
        except AssertionError:
            assert last == expect(n), what

    def spilled(running: Running) -> int:
        return sum(s.spilled_series for s in running.app.handler.states.values())

    first_batch, second_batch, third_batch = events(12, 0), events(8, 12), events(6, 20)
    bound = {"window_memory_windows": 1, "dedup_memory_ids": 1000}
    first = metering.start(instance_id="agg-windows", **bound)
    metering.send(first_batch[:24])
    metering.send(first_batch[20:])  # the next events of every series read it back from disk
    wait_totals(12, "12 rounds counted")
    wait_for(lambda: spilled(first) >= 5, what="every series on disk after its commit")
    first.close()  # sealed with every series on disk

    again = metering.start(instance_id="agg-windows", **bound)
    metering.send(first_batch + second_batch)  # 48 duplicates, 32 new events
    wait_totals(20, "20 rounds counted after a warm restart, none twice")
    for customer in (a, b):
        assert again.app.handler.restored_from[home(again, customer)] == "store"
    wait_for(lambda: spilled(again) >= 5, what="every series back on disk")
    again.close()

    for f in store_files(metering, "agg-windows"):
        f.write_bytes(b"\x00not rocksdb")
    replayed = metering.start(instance_id="agg-windows", **bound)
    metering.send(second_batch + third_batch)
    wait_totals(26, "26 rounds counted after a replay, none twice")
    for customer in (a, b):
        assert replayed.app.handler.restored_from[home(replayed, customer)] == "changelog"
    assert spilled(replayed) >= 5
