"""The state a partition writes to its changelog rebuilds the same state: nothing counted twice after a
crash, and expired state is tombstoned."""

from __future__ import annotations

from typing import Any

import orjson

from services.kernel.processing.state import changelog_behind
from services.metering_aggregator.changelog import encode_value, restore
from services.metering_aggregator.model import DUPLICATE, PartitionState, Rules
from services.plans.periods import DAY_MS, HOUR_MS, MINUTE_MS, Granularity

from .conftest import NOW, customer, event


class Topic:
    """An in-memory stand-in for one compacted changelog partition (append-only log of key/value)."""

    def __init__(self) -> None:
        self.log: list[tuple[bytes, bytes | None]] = []

    def write(self, records: list[tuple[bytes, Any]]) -> None:
        self.log.extend((k, None if v is None else encode_value(v)) for k, v in records)

    def compacted(self) -> list[tuple[bytes, bytes | None]]:
        latest = {}
        for k, v in self.log:
            latest[k] = v
        return [(k, v) for k, v in latest.items() if v is not None]


def snapshot(state: PartitionState) -> dict[str, Any]:
    return {
        "windows": {
            w.key: (w.value, w.event_count, w.latest_ms, w.end_ms, sorted(w.members or []))
            for w in state.windows()
        },
        "dedup": {c: set(ids) for c, ids in state.dedup.seen.items()},
        "thresholds": dict(state.thresholds),
    }


def feed(state: PartitionState, topic: Topic, batches: list[list[dict[str, Any]]], now: int) -> None:
    for seq, batch in enumerate(batches):
        for e in batch:
            state.apply(e, now, customer(e["customer_id"]))
        topic.write(state.drain(seq * 1000, lambda cid: customer(cid)).changelog)


def mixed_events(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        out.append(event(customer_id=f"c{i % 3}", user_id=f"u{i % 5}", ts=NOW + i))
        out.append(event("job_completed", customer_id="c0", duration_seconds=i / 10, region=f"r{i % 2}"))
        out.append(event("seats_changed", customer_id="c1", seats=i, ts=NOW + i))
        out.append(event("storage_measured", customer_id="c2", gb=i % 7))
    return out


def test_restoring_from_the_changelog_rebuilds_identical_state(config):
    state, topic = PartitionState(0, config, Rules()), Topic()
    events = mixed_events(40)
    feed(state, topic, [events[:50], events[50:120], events[120:]], NOW)
    restored = PartitionState(0, config, Rules())
    restore(restored, topic.log)
    assert snapshot(restored) == snapshot(state)
    assert snapshot(restored)["thresholds"]  # free plan limits were crossed, and that is remembered
    # ... also from the compacted topic.
    compacted = PartitionState(0, config, Rules())
    restore(compacted, topic.compacted())
    assert snapshot(compacted) == snapshot(state)


def test_after_a_restore_redelivered_events_are_duplicates_and_totals_continue(config):
    state, topic = PartitionState(0, config, Rules()), Topic()
    events = [event(customer_id="c", ts=NOW + i) for i in range(30)]
    feed(state, topic, [events[:20]], NOW)
    restored = PartitionState(0, config, Rules())
    restore(restored, topic.log)
    for e in events:  # the crashed instance's uncommitted batch is redelivered, overlapping the first
        r = restored.apply(e, NOW, customer("c"))
        assert (r is None) == (events.index(e) >= 20)
        if r is not None:
            assert r.code == DUPLICATE
    period = [
        w
        for w in restored.windows()
        if w.granularity is Granularity.BILLING_PERIOD and w.series.meter.slug == "api_requests"
    ]
    assert [(w.event_count, w.value) for w in period] == [(30, 30 * 10**9)]


def test_big_batches_of_ids_are_split_into_records_under_the_size_limit(config):
    state = PartitionState(0, config, Rules())
    for i in range(30_000):
        state.apply(event(customer_id="c", event_id=f"{i:040d}"), NOW, customer("c"))
    dedup_records = [(k, v) for k, v in state.drain(7, lambda cid: customer(cid)).changelog if k[:2] == b"D|"]
    assert len(dedup_records) > 1
    assert all(len(encode_value(v)) < 1024 * 1024 for _, v in dedup_records)
    assert sum(len(v["c"]) for _, v in dedup_records) == 30_000


def test_expired_state_is_evicted_and_tombstoned(config):
    rules = Rules(grace_ms=HOUR_MS, dedup_horizon_ms=2 * HOUR_MS)
    state, topic = PartitionState(0, config, rules), Topic()
    feed(state, topic, [[event(customer_id="c", ts=NOW, user_id="u1", event_id="e1")]], NOW)
    later = NOW + 2 * HOUR_MS + 3 * MINUTE_MS
    state.advance_clock(later)  # records arrived until `later`
    topic.write([(k, None) for k in state.evict()])
    topic.write([state.checkpoint(5) or (b"", None)])
    grans = {w.granularity for w in state.windows()}
    assert grans == {Granularity.DAY, Granularity.BILLING_PERIOD}  # minute and hour windows are final
    assert not state.dedup.seen  # the id is past its horizon
    restored = PartitionState(0, config, rules)
    restore(restored, topic.compacted())
    assert restored.clock_ms == later
    assert snapshot(restored) == snapshot(state)
    # Unique-count members of evicted windows are tombstoned too.
    live_keys = {k for k, _ in topic.compacted()}
    assert not any(k.startswith(b"U|") and b"|MINUTE|" in k for k in live_keys)
    state.advance_clock(later + 40 * DAY_MS)
    state.evict()
    assert state.window_count() == 0
    assert not state.series


def test_changelog_values_are_plain_json(config):
    state = PartitionState(0, config, Rules())
    state.apply(event(customer_id="c"), NOW, customer("c"))
    for key, value in state.drain(1, lambda cid: customer(cid)).changelog:
        assert key.decode()
        orjson.loads(encode_value(value))


def test_window_states_are_packed_into_one_record_per_transaction(config):
    state = PartitionState(0, config, Rules())
    for i in range(300):
        state.apply(event(customer_id=f"c{i}"), NOW, customer(f"c{i}"))
    changelog = state.drain(1, lambda cid: customer(cid)).changelog
    packed = [k for k, _ in changelog if k.startswith(b"B|")]
    assert len(packed) == 1  # 300 customers x 2 meters x 4 windows, one record
    assert len(state.records[packed[0]]) == 300 * 2 * 4


def test_superseded_records_are_tombstoned_and_sparse_ones_rewritten(config):
    state, topic = PartitionState(0, config, Rules()), Topic()
    for i in range(40):  # 40 customers in the first transaction
        state.apply(event(customer_id=f"c{i}"), NOW, customer(f"c{i}"))
    topic.write(state.drain(1, lambda cid: customer(cid)).changelog)
    first = next(iter(state.records))
    # 35 of the 40 customers are active again: the first record keeps only 5 x 8 of its 320 windows.
    for i in range(35):
        state.apply(event(customer_id=f"c{i}"), NOW, customer(f"c{i}"))
    topic.write(state.drain(2, lambda cid: customer(cid)).changelog)
    assert first in state.records  # not empty, so not tombstoned yet
    topic.write(state.drain(3, lambda cid: customer(cid)).changelog)  # the sparse record is rewritten
    assert first not in state.records
    assert (first, None) in topic.log  # and tombstoned
    restored = PartitionState(0, config, Rules())
    restore(restored, topic.compacted())
    assert snapshot(restored) == snapshot(state)
    assert {k for k, _ in topic.compacted() if k.startswith(b"B|")} == set(state.records)


def test_a_restored_state_knows_the_input_offset_it_is_complete_up_to(config):
    state, topic = PartitionState(0, config, Rules()), Topic()
    feed(state, topic, [[event(customer_id="c")]], NOW)
    key, value = state.checkpoint(17) or (b"", {})
    topic.write([(key, value)])
    assert state.checkpoint(17) is None  # unchanged: nothing more to write
    restored = PartitionState(0, config, Rules())
    restore(restored, topic.compacted())
    assert restored.checkpoint_offset == 17
    assert snapshot(restored) == snapshot(state)
    restored.forget_checkpoint()  # after an aborted transaction the next one writes it again
    assert restored.checkpoint(17) is not None


def test_a_changelog_that_stops_before_the_committed_offset_is_behind():
    # The group's offsets are stable but this partition's commit marker has not landed: read it again.
    assert changelog_behind(checkpoint=17, committed=20)
    assert not changelog_behind(checkpoint=20, committed=20)
    # Offsets moved back by hand: the state has seen more, redelivered events are duplicates.
    assert not changelog_behind(checkpoint=25, committed=20)
    # Nothing committed yet, or a changelog written before checkpoints existed: nothing to compare.
    assert not changelog_behind(checkpoint=17, committed=-1001)
    assert not changelog_behind(checkpoint=None, committed=20)
