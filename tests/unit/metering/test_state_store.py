"""The local state store (RocksDB): dedup stays exact when ids leave memory, a sealed store rebuilds the
same state as the changelog, and a store that is unsealed or damaged is never read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.kernel.processing.store import LocalStore, StoreFold
from services.metering_aggregator.changelog import encode_value, restore
from services.metering_aggregator.model import DUPLICATE, PartitionState, Rules
from services.metering_aggregator.store import (
    REPLAY,
    DiskDedupIndex,
    DiskWindows,
    PartitionStore,
    id_key,
    parse_id_key,
    replay,
)
from services.plans.periods import DAY_MS, MINUTE_MS

from .conftest import NOW, customer, event
from .test_changelog import mixed_events, snapshot


def disk_state(
    config: Any, store: LocalStore, memory_ids: int, memory_windows: int = 1_000_000
) -> PartitionState:
    state = PartitionState(0, config, Rules(), DiskDedupIndex(store, memory_ids))
    state.spill = DiskWindows(store, memory_windows)
    return state


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
    assert state.spill is not None
    state.spill.spill(state)


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


# -- windows on disk --------------------------------------------------------------------------------------


class CountingWindows(DiskWindows):
    """DiskWindows that counts what it did, so the test knows each path was taken."""

    __slots__ = ("calls",)

    def __init__(self, store: LocalStore, bound: int) -> None:
        super().__init__(store, bound)
        self.calls: dict[str, int] = {"spill": 0, "load": 0, "load_record": 0, "evicted_from_disk": 0}

    def spill(self, state, series=None, target=None):  # type: ignore[no-untyped-def]
        moved = super().spill(state, series, target)
        self.calls["spill"] += moved
        return moved

    def load(self, state, skey):  # type: ignore[no-untyped-def]
        series = super().load(state, skey)
        self.calls["load"] += series is not None
        return series

    def load_record(self, state, record):  # type: ignore[no-untyped-def]
        self.calls["load_record"] += 1
        super().load_record(state, record)

    def evict(self, state, now_minute):  # type: ignore[no-untyped-def]
        returned = super().evict(state, now_minute)
        self.calls["evicted_from_disk"] += len(returned)
        return returned


def spilled_state(config: Any, store: LocalStore, memory_windows: int) -> PartitionState:
    state = PartitionState(0, config, Rules(), DiskDedupIndex(store, 100_000))
    state.spill = CountingWindows(store, memory_windows)
    return state


def all_windows(state: PartitionState) -> dict[str, tuple]:
    """Every window of a state, in memory or on disk: value, events, latest event time, end, members."""
    out = {
        w.key: (w.value, w.event_count, w.latest_ms, w.end_ms, sorted(w.members or []))
        for w in state.windows()
    }
    if isinstance(state.spill, DiskWindows):
        for key, entry in state.spill.windows(state):
            assert key not in out, f"{key} both in memory and on disk"
            out[key] = (int(entry[3]), entry[4], entry[5], entry[2], sorted(entry[7] or []))
    return out


def live_records(state: PartitionState) -> dict[bytes, int]:
    """Each live packed record with how many windows live in it (memory + disk)."""
    return {key: len(live) + state.spilled_in_record.get(key, 0) for key, live in state.records.items()}


def normalized(records: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
    """A transaction's changelog records, with the windows of a packed record in a canonical order (their
    order inside a record follows set iteration, in memory as on disk)."""
    out = []
    for key, value in records:
        if key.startswith(b"B|") and value is not None:
            value = sorted(value)
        out.append((key, encode_value(value) if value is not None else None))
    return sorted(out, key=lambda kv: (kv[0], kv[1] or b""))


def run_txn(state: PartitionState, seq: int, events: list, clock: int) -> dict[str, Any]:
    """One transaction of the handler on one partition, then its eviction tick: what it wrote."""
    outcomes = []
    for e in events:
        r = state.apply(e, clock, customer(e["customer_id"]))
        outcomes.append(None if r is None else r.code)
    drained = state.drain(seq, customer)
    records = list(drained.changelog)
    checkpoint = state.checkpoint(seq + len(events))
    assert checkpoint is not None
    records.append(checkpoint)
    tombstones = sorted(state.evict())
    return {
        "outcomes": outcomes,
        "aggregates": sorted((w.key, w.value, w.event_count) for w in drained.aggregates),
        "thresholds": sorted((t.customer.customer_id, t.meter, t.percent) for t in drained.thresholds),
        "changelog": normalized(records),
        "tombstones": tombstones,
    }


def spilling_workload() -> list[tuple[int, list[dict[str, Any]]]]:
    """(clock, events) per transaction: 40 customers at first over ten minutes each, then five hot ones
    every ten minutes for three hours (with duplicates and an idle customer now and then), so the idle
    customers' series go to disk, their first record turns sparse once its minute windows expire, and their
    minute and hour windows expire while on disk."""
    start = NOW - 30 * MINUTE_MS
    first = []
    for i in range(40):
        c = f"c{i}"
        for j in range(10):
            first.append(event(customer_id=c, user_id=f"u{j % 3}", ts=start + j * MINUTE_MS))
        for j in range(3):
            first.append(
                event(
                    "job_completed",
                    customer_id=c,
                    ts=start + j * MINUTE_MS,
                    duration_seconds=j + 0.5,
                    region=f"r{j % 2}",
                )
            )
        first.append(event("storage_measured", customer_id=c, ts=start, gb=i % 7))
        first.append(event("seats_changed", customer_id=c, ts=start, seats=i % 5))
    txns = [(NOW, first)]
    sent = list(first)
    for k in range(1, 19):
        clock = NOW + k * 10 * MINUTE_MS
        batch = []
        for h in range(5):
            c = f"c{h}"
            for j in range(3):
                batch.append(event(customer_id=c, user_id=f"u{(k + j) % 4}", ts=clock - j * MINUTE_MS))
            batch.append(event("job_completed", customer_id=c, ts=clock, duration_seconds=k, region="r0"))
        if k % 3 == 0:  # an idle customer comes back: its series are read back from disk
            c = f"c{10 + k}"
            batch.append(event(customer_id=c, user_id="u9", ts=clock - 2 * MINUTE_MS))
            batch.append(event("seats_changed", customer_id=c, ts=clock, seats=k))
        batch.extend(sent[k * 7 : k * 7 + 5])  # duplicates (late ones are dead-lettered the same way)
        sent.extend(batch)
        txns.append((clock, batch))
    return txns


def test_windows_on_disk_count_exactly_and_restore_warm_or_replayed_as_in_memory(config, tmp_path: Path):
    """Windows spilled beyond a small bound: every transaction writes what an all-in-memory state writes
    (aggregates, changelog records, tombstones: a sparse record is rewritten with windows brought back from
    disk, windows expire from disk), and a warm restart and a changelog replay both rebuild that state."""
    memory = PartitionState(0, config, Rules())
    store = LocalStore(tmp_path / "p0")
    pstore = PartitionStore(store, 0)
    disk = spilled_state(config, store, memory_windows=60)
    log: list[tuple[bytes, bytes | None]] = []
    txns = spilling_workload()
    for seq, (clock, events) in enumerate(txns[:14]):
        want = run_txn(memory, seq * 1000, events, clock)
        got = run_txn(disk, seq * 1000, events, clock)
        assert got == want, f"transaction {seq}"
        log.extend(got["changelog"])
        log.extend((key, None) for key in got["tombstones"])
        pstore.mirror(got["changelog"] + [(key, None) for key in got["tombstones"]])
        disk.dedup.spill()  # type: ignore[attr-defined]
        disk.spill.spill(disk)  # type: ignore[union-attr]  # after the commit, as the handler does
        assert disk.windows_in_memory <= 60
        assert all_windows(disk) == all_windows(memory)
        assert live_records(disk) == live_records(memory)
    calls = disk.spill.calls  # type: ignore[union-attr]
    assert calls["spill"] > 0
    assert disk.spilled_series > 0
    assert calls["load"] > 0  # idle customers came back, sparse records were rewritten
    assert calls["load_record"] > 0
    assert calls["evicted_from_disk"] > 0
    assert any(key.startswith(b"B|") and value is None for key, value in log)  # dead records tombstoned

    # A warm restart under the same small bound: most series stay on disk.
    pstore.seal(disk, 14 * 1000, disk.rules)
    store.close()
    reopened = LocalStore(tmp_path / "p0")
    warm_store = PartitionStore(reopened, 0)
    assert warm_store.sealed_at(Rules()) == 14 * 1000
    warm = spilled_state(config, reopened, memory_windows=60)
    warm_store.load(warm)
    assert 0 < warm.windows_in_memory <= 60
    assert warm.spilled_series > 0
    assert all_windows(warm) == all_windows(memory)
    assert live_records(warm) == live_records(memory)

    # A replay of the changelog into an empty store, spilling while it reads.
    replay_store = LocalStore(tmp_path / "replayed")
    replayed = spilled_state(config, replay_store, memory_windows=60)
    restore(replayed, log)
    assert replayed.windows_in_memory <= 60
    assert replayed.spilled_series > 0
    assert all_windows(replayed) == all_windows(memory)
    assert live_records(replayed) == live_records(memory)

    # The handler's replay: the changelog folded into the wiped store while it is read, then rebuilt from
    # there holding one record, one series and the bound in memory.
    fold_store = LocalStore(tmp_path / "folded")
    folded = spilled_state(config, fold_store, memory_windows=60)
    fold = StoreFold(fold_store, REPLAY, flush_every=7)
    for key, value in log:
        if value is None:
            fold.pop(key, None)
        else:
            fold[key] = value
    live_keys: dict[bytes, Any] = {}
    for key, value in log:
        if value is None:
            live_keys.pop(key, None)
        else:
            live_keys[key] = value
    assert replay(folded, fold) == len(live_keys)  # the records it held: latest per key
    assert folded.windows_in_memory <= 60
    assert folded.spilled_series > 0
    assert all_windows(folded) == all_windows(memory)
    assert live_records(folded) == live_records(memory)
    assert folded.thresholds == memory.thresholds
    assert folded.checkpoint_offset == memory.checkpoint_offset
    assert folded.clock_ms == memory.clock_ms
    for prefix in (b"K", b"Q", b"M"):  # the fold is gone once the state is built
        assert not any(True for _ in fold_store.items(prefix))
    assert any(True for _ in fold_store.items(b"LT|"))  # the mirror a later warm restart loads

    # All go on identically: same outputs, same final state, same changelog latest-per-key.
    logs: dict[str, list] = {n: list(log) for n in ("memory", "warm", "replayed", "folded")}
    for seq, (clock, events) in enumerate(txns[14:], start=14):
        want = run_txn(memory, seq * 1000, events, clock)
        logs["memory"].extend(want["changelog"] + [(k, None) for k in want["tombstones"]])
        for name, state in (("warm", warm), ("replayed", replayed), ("folded", folded)):
            got = run_txn(state, seq * 1000, events, clock)
            assert got == want, f"{name}, transaction {seq}"
            logs[name].extend(got["changelog"] + [(k, None) for k in got["tombstones"]])
            state.dedup.spill()  # type: ignore[attr-defined]
            state.spill.spill(state)  # type: ignore[union-attr]
    for state in (warm, replayed, folded):
        assert all_windows(state) == all_windows(memory)
        assert live_records(state) == live_records(memory)

    def latest(records: list) -> dict:
        out: dict = {}
        for key, value in records:
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    assert (
        latest(logs["warm"]) == latest(logs["memory"]) == latest(logs["replayed"]) == latest(logs["folded"])
    )
    reopened.close()
    replay_store.close()
    fold_store.close()


def test_below_the_window_bound_nothing_goes_to_disk(config, tmp_path: Path):
    store = LocalStore(tmp_path / "p0")
    state = spilled_state(config, store, memory_windows=100_000)
    for seq, (clock, events) in enumerate(spilling_workload()[:6]):
        run_txn(state, seq * 1000, events, clock)
        state.spill.spill(state)  # type: ignore[union-attr]
    assert state.spilled_series == 0
    assert state.spill.calls == {"spill": 0, "load": 0, "load_record": 0, "evicted_from_disk": 0}  # type: ignore[union-attr]
    assert not any(True for _ in store.items(b"W"))
    store.close()


def test_tombstones_of_an_aborted_eviction_tick_go_out_with_the_next_transaction(config):
    """Eviction drops state from memory (and the store) before its transaction commits; when only the tick
    was lost, nothing is rebuilt, so its tombstones must not be lost with it."""
    from services.kernel.kafka import TopicPartition
    from services.kernel.settings import KafkaSettings
    from services.metering_aggregator.processor import MeteringHandler, Topics

    handler = MeteringHandler(
        kafka=KafkaSettings(),
        directory=None,  # type: ignore[arg-type]  # not reached: no batch runs
        config=config,
        rules=Rules(),
        topics=Topics("usage-events", "changelog"),
        home_partition=lambda _c: 0,
        upgrade_url="http://upgrade",
    )
    state = PartitionState(0, config, Rules())
    for e in [event(customer_id="c", ts=NOW + i) for i in range(5)]:
        state.apply(e, NOW, customer("c"))
    state.drain(0, customer)
    handler.states[0] = state
    state.advance_clock(NOW + 2 * DAY_MS)

    class Out:
        sent: list[bytes] = []

        def send_raw(self, topic: str, value: Any, key: Any, **_kw: Any) -> None:
            self.sent.append(key)

    out = Out()
    handler.tick(out)  # type: ignore[arg-type]
    assert out.sent  # windows, records and ids expired
    handler.rollback([TopicPartition("usage-events", 0)])  # the tick's transaction aborted
    assert handler.states[0] is state  # nothing rebuilt...
    assert sorted(state.pending_tombstones) == sorted(out.sent)  # ...and its tombstones wait for the next one
    assert sorted(state.drain(10, customer).changelog) == sorted((key, None) for key in out.sent)


def test_tombstones_still_unwritten_at_the_seal_are_written_after_a_warm_load(config, tmp_path: Path):
    store = LocalStore(tmp_path / "p0")
    state = spilled_state(config, store, memory_windows=1000)
    run_txn(state, 0, [event(customer_id="c", ts=NOW)], NOW)
    state.pending_tombstones.append(b"B|-1.0")  # as an aborted eviction tick leaves them (see rollback)
    PartitionStore(store, 0).seal(state, 1, state.rules)
    store.close()
    reopened = LocalStore(tmp_path / "p0")
    warm = spilled_state(config, reopened, memory_windows=1000)
    PartitionStore(reopened, 0).load(warm)
    assert (b"B|-1.0", None) in warm.drain(1, customer).changelog
    reopened.close()


def test_a_store_sealed_with_every_window_in_memory_loads_the_newest_under_a_smaller_bound(config, tmp_path):
    memory = PartitionState(0, config, Rules())
    store = LocalStore(tmp_path / "p0")
    state = spilled_state(config, store, memory_windows=100_000)
    for seq, (clock, events) in enumerate(spilling_workload()[:4]):
        run_txn(memory, seq * 1000, events, clock)
        run_txn(state, seq * 1000, events, clock)
    assert state.spilled_series == 0
    hot = {(s.customer_id, s.meter.slug, s.group) for s in list(state.series.values())[-3:]}
    PartitionStore(store, 0).seal(state, 4000, state.rules)
    store.close()
    reopened = LocalStore(tmp_path / "p0")
    warm = spilled_state(config, reopened, memory_windows=50)  # restarted with a smaller bound
    PartitionStore(reopened, 0).load(warm)
    assert 0 < warm.windows_in_memory <= 50
    assert warm.spilled_series > 0
    assert hot <= set(warm.series)  # the most recently touched series came back first
    assert all_windows(warm) == all_windows(memory)
    assert live_records(warm) == live_records(memory)
    reopened.close()
