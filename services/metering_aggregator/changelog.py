"""The state changelog: how a partition's state is written to, and rebuilt from, a compacted topic.

Partition *p* of the changelog topic holds the state of partition *p* of ``usage-events`` and is written
only in the transactions that also commit *p*'s input offsets, so the committed changelog always matches
the committed offsets exactly. Record keys (UTF-8) and JSON values:

* ``W|<aggregate key>`` -> ``{"v": nanounits, "n": events, "t": latest event time, "e": window end}``
  — one per changed window per transaction, compaction keeps the latest;
* ``U|<txn>.<chunk>|<aggregate key>`` -> ``[member, ...]`` — unique-count members added by transaction
  ``txn`` (the batch's first input offset);
* ``D|<expiry minute>|<txn>.<chunk>`` -> ``{customer: [event_id, ...]}`` — dedup ids added by transaction
  ``txn`` that expire at that minute (one record per bucket per transaction, not one per event; big
  deltas are split in chunks of ~256 KiB);
* ``T|<customer>|<meter>|<period start>`` -> ``{"p": highest percent fired, "e": period end}``.

Evicted state is tombstoned (null value), so compaction keeps the topic about as big as the live state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from services.metering_aggregator.model import PartitionState, Series
from services.metering_aggregator.values import parse_group_key
from services.plans.periods import Granularity


def encode_value(value: Any) -> bytes:
    return orjson.dumps(value)


def restore(state: PartitionState, records: Iterable[tuple[bytes, bytes | None]]) -> int:
    """Rebuild ``state`` from its changelog partition read from the beginning; returns records applied.

    Records are folded into latest-value-per-key first (the topic may not be compacted yet), then turned
    into windows, unique members, dedup ids and fired thresholds. State of meters that are no longer in
    the configuration is skipped.
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
    windows: list[tuple[str, dict[str, Any]]] = []
    for key, value in latest.items():
        kind = key[:2]
        if kind == b"W|":
            windows.append((key[2:].decode(), orjson.loads(value)))
        elif kind == b"U|":
            wkey = key[2:].decode().partition("|")[2]
            members.setdefault(wkey, []).append((key, orjson.loads(value)))
        elif kind == b"D|":
            minute = int(key.split(b"|")[1])
            for customer_id, ids in orjson.loads(value).items():
                for event_id in ids:
                    state.dedup.add(customer_id, event_id, minute, pending=False)
            state.dedup.bucket_records.setdefault(minute, []).append(key)
        elif kind == b"T|":
            _, customer_id, meter, start = key.decode().split("|")
            fired = orjson.loads(value)
            state.thresholds[(customer_id, meter, int(start))] = (int(fired["p"]), int(fired["e"]))
    for wkey, data in windows:
        _restore_window(state, wkey, data, members.get(wkey, []))
    return count


def _restore_window(
    state: PartitionState, wkey: str, data: dict[str, Any], member_records: list[tuple[bytes, list[str]]]
) -> None:
    customer_id, meter_slug, granularity, start, group = wkey.split("|", 4)
    meter = state.config.meter(meter_slug)
    if meter is None:
        return
    skey = (customer_id, meter_slug, group)
    series = state.series.get(skey)
    if series is None:
        series = state.series[skey] = Series(customer_id, meter, group, parse_group_key(group))
    gran = Granularity(granularity)
    w = state._window(series, gran, int(start), int(data["e"]))
    w.value = int(data["v"])
    w.event_count = int(data["n"])
    w.latest_ms = int(data["t"])
    if w.members is not None and w.member_records is not None:
        for key, new in member_records:
            w.members.update(new)
            w.member_records.append(key)
