"""The state changelog: how a partition's state is written to, and rebuilt from, a compacted topic.

Partition *p* of the changelog topic holds the state of partition *p* of ``usage-events`` and is written
only in the transactions that also commit *p*'s input offsets, so the committed changelog always matches
the committed offsets exactly. Record keys (UTF-8) and JSON values:

* ``B|<txn>.<chunk>`` -> ``[[aggregate key, nanounits, events, latest event time, window end], ...]`` —
  the states of the windows a transaction changed, packed into one record per partition per transaction
  (chunks of ~256 KiB) instead of one per window. The state keeps, per record, the windows whose latest
  state it holds: a record left with none is tombstoned, a sparse old one has its live windows rewritten
  into a newer record (see ``PartitionState.records``). Restore applies them in transaction order;
* ``U|<txn>.<chunk>|<aggregate key>`` -> ``[member, ...]`` — unique-count members added by transaction
  ``txn`` (the batch's first input offset);
* ``D|<expiry minute>|<txn>.<chunk>`` -> ``{customer: [event_id, ...]}`` — dedup ids added by transaction
  ``txn`` that expire at that minute (one record per bucket per transaction, not one per event; big
  deltas are split in chunks of ~256 KiB);
* ``T|<customer>|<meter>|<period start>`` -> ``{"p": highest percent fired, "e": period end, "l": the limit
  (nanounits, as text) it was a percentage of}``;
* ``C`` -> ``{"o": next input offset, "t": clock}`` — the checkpoint: the input offset this state is
  complete up to, written with every transaction that moves the partition's committed offset, to the same
  value (a restore compares them: ``services.kernel.processing.state``), and the partition's clock, so
  that it never goes back when another instance takes over.

Evicted state is tombstoned (null value), so compaction keeps the topic about as big as the live state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from services.metering_aggregator.model import (
    CHECKPOINT_KEY,
    EVICTION_MARGIN_MS,
    NO_CLOCK,
    PartitionState,
    Series,
    Window,
)
from services.metering_aggregator.values import parse_group_key
from services.plans.periods import Granularity


def encode_value(value: Any) -> bytes:
    return orjson.dumps(value)


def restore(
    state: PartitionState, records: Iterable[tuple[bytes, bytes | None]], *, ids_in_store: bool = False
) -> int:
    """Rebuild ``state`` from its changelog partition read from the beginning; returns records applied.

    Records are folded into latest-value-per-key first (the topic may not be compacted yet), then turned
    into windows, unique members, dedup ids, fired thresholds and the checkpoint. State of meters that are
    no longer in the configuration is skipped, and so are windows already past eviction at the restored
    clock (a packed record can outlive some of the windows it holds, while others in it are still live).

    ``ids_in_store``: the records come from a sealed local store, whose dedup records are keys only (the
    ids themselves are in the store, see ``services/metering_aggregator/store.py``).
    """
    latest: dict[bytes, bytes] = {}
    count = 0
    for key, value in records:
        count += 1
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    members: dict[str, list[tuple[bytes, list[str]]]] = {}
    packed: list[tuple[tuple[int, int], bytes]] = []
    for key, value in latest.items():
        kind = key[:2]
        if kind == b"B|":
            seq, _, chunk = key[2:].partition(b".")
            packed.append(((int(seq), int(chunk)), key))
        elif kind == b"U|":
            wkey = key[2:].decode().partition("|")[2]
            members.setdefault(wkey, []).append((key, orjson.loads(value)))
        else:
            apply_record(state, key, value, ids_in_store=ids_in_store)
    evicted_before = None
    if state.clock_ms != NO_CLOCK:
        evicted_before = state.clock_ms - state.rules.grace_ms - EVICTION_MARGIN_MS
    # Later transactions override earlier ones: apply the packed records in transaction order.
    latest_entry: dict[str, tuple[bytes, list[Any]]] = {}
    sizes: dict[bytes, int] = {}
    for _, key in sorted(packed):
        state.records[key] = set()  # in transaction order, so "oldest first" holds after a restore
        entries = orjson.loads(latest[key])
        sizes[key] = len(entries)
        for entry in entries:
            latest_entry[entry[0]] = (key, entry)
    spill = state.spill
    in_order: Iterable[tuple[str, tuple[bytes, list[Any]]]] = latest_entry.items()
    if spill is not None:
        # Series by series, so that one spilled while restoring is rarely needed again.
        in_order = sorted(in_order, key=_series_of)
    for wkey, (key, entry) in in_order:
        if evicted_before is not None and int(entry[4]) < evicted_before:
            state.pending_tombstones.extend(key for key, _ in members.get(wkey, []))
            continue
        w = restore_window(state, entry, members.get(wkey, []))
        if w is not None:
            w.record = key
            state.records[key].add(w)
            if spill is not None and state.windows_in_memory > spill.bound:
                # Bounded while restoring too; down to 90 % so spills come in batches, not per window.
                spill.spill(state, target=spill.bound - spill.bound // 10)
    settle_records(state, sizes)
    return count


def settle_records(state: PartitionState, sizes: dict[bytes, int]) -> None:
    """After a restore placed every window in its packed record: keep the sizes of the records something
    still lives in (in memory or on disk), and tombstone the rest."""
    for key, size in sizes.items():
        if state.records[key] or key in state.spilled_in_record:
            state.record_sizes[key] = size
        else:  # superseded everywhere but not yet tombstoned (a crash came first): do it now
            del state.records[key]
            state.pending_tombstones.append(key)


def apply_record(state: PartitionState, key: bytes, value: bytes, *, ids_in_store: bool = False) -> None:
    """Restore one checkpoint, dedup or threshold record (windows and members need the whole partition)."""
    kind = key[:2]
    if key == CHECKPOINT_KEY:
        checkpoint = orjson.loads(value)
        state.checkpoint_offset = int(checkpoint["o"])
        state.advance_clock(int(checkpoint.get("t", NO_CLOCK)))
    elif kind == b"D|":
        minute = int(key.split(b"|")[1])
        if not ids_in_store:
            add = state.dedup.add
            for customer_id, ids in orjson.loads(value).items():
                for event_id in ids:
                    add(customer_id, event_id, minute, pending=False)
            state.dedup.restored_record()
        state.dedup.bucket_records.setdefault(minute, []).append(key)
    elif kind == b"T|":
        _, customer_id, meter, start = key.decode().split("|")
        fired = orjson.loads(value)
        limit = fired.get("l")
        state.thresholds[(customer_id, meter, int(start))] = (
            int(fired["p"]),
            int(fired["e"]),
            None if limit is None else int(limit),
        )


def _window_key_parts(wkey: str) -> tuple[str, str, str, str, str]:
    """customer, meter, granularity, start, group of an aggregate key (the group may hold ``|``)."""
    customer_id, meter_slug, granularity, start, group = wkey.split("|", 4)
    return customer_id, meter_slug, granularity, start, group


def _series_of(item: tuple[str, Any]) -> tuple[str, str, str]:
    customer_id, meter_slug, _, _, group = _window_key_parts(item[0])
    return customer_id, meter_slug, group


def restore_window(
    state: PartitionState, entry: list[Any], member_records: list[tuple[bytes, list[str]]]
) -> Window | None:
    """One window's latest entry (and its unique members' records) into ``state``; None for a meter no
    longer configured."""
    wkey, value, events, latest_ms, end = entry
    customer_id, meter_slug, granularity, start, group = wkey.split("|", 4)
    meter = state.config.meter(meter_slug)
    if meter is None:
        return None
    skey = (customer_id, meter_slug, group)
    series = state.series.get(skey)
    if series is None and state.spilled_series:
        series = state.spill.load(state, skey)  # type: ignore[union-attr]
    if series is None:
        series = state.series[skey] = Series(customer_id, meter, group, parse_group_key(group))
    w = state._window(series, Granularity(granularity), int(start), int(end))
    w.value = int(value)
    w.event_count = int(events)
    w.latest_ms = int(latest_ms)
    if w.members is not None and w.member_records is not None:
        for key, new in member_records:
            w.members.update(new)
            w.member_records.append(key)
    return w
