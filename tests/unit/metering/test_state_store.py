"""The local state store (RocksDB): dedup stays exact when ids leave memory, a sealed store rebuilds the
same state as the changelog, and a store that is unsealed or damaged is never read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.kernel.processing.store import LocalStore
from services.metering_aggregator.changelog import encode_value, restore
from services.metering_aggregator.model import DUPLICATE, PartitionState, Rules
from services.metering_aggregator.store import DiskDedupIndex, PartitionStore, id_key, parse_id_key
from services.plans.periods import DAY_MS, MINUTE_MS

from .conftest import NOW, customer, event
from .test_changelog import mixed_events, snapshot


def disk_state(config: Any, store: LocalStore, memory_ids: int) -> PartitionState:
    return PartitionState(0, config, Rules(), DiskDedupIndex(store, memory_ids))


def commit(
    state: PartitionState, pstore: PartitionStore, log: list, seq: int, events: list, now: int
) -> None:
    """What the handler does per transaction: apply, drain, write the changelog, then (committed) mirror
    it into the store and spill."""
    for e in events:
        state.apply(e, now, customer(e["customer_id"]))
    records = [(k, None if v is None else encode_value(v)) for k, v in state.drain(seq, customer).changelog]
    key, value = state.checkpoint(seq + len(events))  # type: ignore[misc]
    records.append((key, encode_value(value)))
    log.extend(records)
    pstore.mirror(records)
    assert isinstance(state.dedup, DiskDedupIndex)
    state.dedup.spill()


def test_id_keys_round_trip_and_never_mix_customers():
    for customer_id, compact in [("acme", 2**127 + 5), ("a", "not-a-uuid"), ("é|x", 0), ("ab", "c")]:
        assert parse_id_key(id_key(customer_id, compact)) == (customer_id, compact)
    assert id_key("ab", "c") != id_key("a", "bc")


def test_dedup_is_exact_when_ids_are_spilled_to_disk(config, tmp_path: Path):
    store = LocalStore(tmp_path / "p0")
    state = disk_state(config, store, memory_ids=50)
    pstore = PartitionStore(store, 0)
    log: list = []
    # 600 ids over 60 event minutes (so over 60 expiry minutes), 50 in memory at most
    events = [event(customer_id=f"c{i % 4}", ts=NOW - 3_000_000 + i * 5000) for i in range(600)]
    for n in range(0, 600, 100):
        commit(state, pstore, log, n, events[n : n + 100], NOW)
    dedup = state.dedup
    assert isinstance(dedup, DiskDedupIndex)
    assert len(dedup) <= 50
    assert dedup.spilled
    # every id, in memory or only on disk, is a duplicate now
    rejections = [state.apply(e, NOW, customer(e["customer_id"])) for e in events]
    assert all(r is not None and r.code == DUPLICATE for r in rejections)
    # and a new one is still counted
    assert state.apply(event(customer_id="c1", ts=NOW), NOW, customer("c1")) is None
    store.close()


def test_a_sealed_store_rebuilds_what_the_changelog_rebuilds(config, tmp_path: Path):
    store = LocalStore(tmp_path / "p0")
    pstore = PartitionStore(store, 0)
    state = disk_state(config, store, memory_ids=40)
    log: list = []
    events = mixed_events(60)
    for n in range(0, len(events), 40):
        commit(state, pstore, log, n, events[n : n + 40], NOW + 1000)
    pstore.seal(state, len(events), state.rules)
    store.close()

    # from the changelog, all in memory
    replayed = PartitionState(0, config, Rules())
    restore(replayed, log)

    reopened = LocalStore(tmp_path / "p0")
    again = PartitionStore(reopened, 0)
    assert again.sealed_at(Rules()) == len(events)
    assert again.sealed_at(Rules(grace_ms=2 * 3_600_000)) is None  # other time rules: not this store
    warm = disk_state(config, reopened, memory_ids=40)
    records, loaded = again.load(warm)
    assert records > 0
    assert loaded <= 40
    assert snapshot(warm)["windows"] == snapshot(replayed)["windows"]
    assert warm.thresholds == replayed.thresholds
    assert warm.checkpoint_offset == replayed.checkpoint_offset == len(events)
    assert warm.clock_ms == replayed.clock_ms
    # the ids: every one counted before is a duplicate, whether it was loaded or left on disk
    counted = [e for e in events if e["name"] in ("api_call_made", "job_completed", "seats_changed")]
    for e in counted:
        r = warm.apply(e, NOW + 1000, customer(e["customer_id"]))
        assert r is not None, e
        assert r.code == DUPLICATE, e
    # loading unseals: a crash from here on finds no seal
    assert again.sealed_at(Rules()) is None
    reopened.close()


def test_eviction_drops_spilled_ids_from_disk_too(config, tmp_path: Path):
    store = LocalStore(tmp_path / "p0")
    state = disk_state(config, store, memory_ids=10)
    pstore = PartitionStore(store, 0)
    log: list = []
    commit(state, pstore, log, 0, [event(ts=NOW + i) for i in range(100)], NOW)
    assert state.dedup.spilled
    assert any(True for _ in store.items(b"I"))
    state.advance_clock(NOW + DAY_MS + 10 * MINUTE_MS)
    tombstones = state.evict()
    assert any(key.startswith(b"D|") for key in tombstones)  # the changelog forgets them too
    assert not any(True for _ in store.items(b"I"))
    assert not any(True for _ in store.items(b"E"))
    assert not state.dedup.spilled
    assert len(state.dedup) == 0
    store.close()


def test_an_unsealed_or_damaged_store_is_not_read(tmp_path: Path):
    store = LocalStore(tmp_path / "p0")
    store.seal({"o": 5, "rules": [1, 2]})
    assert store.seal_of() is not None
    store.unseal()
    assert store.seal_of() is None
    store.seal({"o": 5, "rules": [1, 2]})
    store.close()
    # damage every file of the store: it is found broken and starts empty, unsealed
    for f in (tmp_path / "p0").iterdir():
        if f.name.startswith(("MANIFEST", "CURRENT")) or f.suffix == ".sst":
            f.write_bytes(b"\x00garbage")
    damaged = LocalStore(tmp_path / "p0")
    assert damaged.rebuilt
    assert damaged.seal_of() is None
    damaged.close()


def test_a_store_sealed_under_a_larger_bound_loads_what_fits_and_spills_the_rest(config, tmp_path: Path):
    store = LocalStore(tmp_path / "p0")
    pstore = PartitionStore(store, 0)
    state = disk_state(config, store, memory_ids=10_000)
    log: list = []
    events = [event(customer_id=f"c{i % 3}", ts=NOW - 600_000 + i * 1000) for i in range(300)]
    commit(state, pstore, log, 0, events, NOW)
    assert not state.dedup.spilled
    pstore.seal(state, len(events), state.rules)
    store.close()

    reopened = LocalStore(tmp_path / "p0")
    warm = disk_state(config, reopened, memory_ids=20)  # restarted with a smaller bound
    PartitionStore(reopened, 0).load(warm)
    assert len(warm.dedup) <= 20
    assert warm.dedup.spilled
    rejections = [warm.apply(e, NOW, customer(e["customer_id"])) for e in events]
    assert all(r is not None and r.code == DUPLICATE for r in rejections)
    reopened.close()
