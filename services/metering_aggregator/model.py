"""The aggregator's state for one input partition, and the rules that change it (pure, no I/O).

One :class:`PartitionState` per assigned ``usage-events`` partition holds everything needed to count each
unique event exactly once:

* the **dedup index** — every (customer, event_id) seen whose event time is within the horizon, exact,
  bucketed by expiry minute so eviction is cheap;
* the **windows** — per customer, meter and group: minute, hour, day and billing-period running values;
* the **thresholds fired** — the highest of 80/90/100 % already announced per customer, meter and period.

Events are applied one by one (:meth:`PartitionState.apply`); after a batch, :meth:`PartitionState.drain`
returns what must be written in the same Kafka transaction as the input offsets: the changed aggregates,
the changelog records that let another instance rebuild this state, and the threshold events.

Time is the partition's own **clock**: the latest arrival time seen on it — each record's Kafka timestamp
(when the producer handed it to Kafka), never ahead of the wall clock, and never going back. Lateness and
eviction both read it, so an aggregator that was down or lagging for hours counts its backlog exactly as it
would have live, a replay judges every event the same way, and hosts with different clocks agree (the
clock is part of the changelog).

Exactness argument for dedup: an id is kept until ``event_time + horizon`` on the clock; an event is
accepted only while ``event_time >= clock - grace``; the clock never goes back, so with ``horizon >= grace``
every duplicate that could still be accepted finds its id (``clock <= event_time + grace <= event_time +
horizon``), and any later one is late and dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.customers.model import Customer
from services.metering_aggregator.values import (
    SCALE,
    InvalidValue,
    compact_event_id,
    decimal_to_nanounits,
    group_key,
    group_value,
    member_of,
    to_nanounits,
)
from services.plans.model import THRESHOLD_PERCENTS, Aggregation, Meter, PlansConfig
from services.plans.periods import DAY_MS, HOUR_MS, MINUTE_MS, Granularity, billing_period

_COUNT, _SUM, _MAX, _LATEST = Aggregation.COUNT, Aggregation.SUM, Aggregation.MAX, Aggregation.LATEST
GRANULARITIES = (Granularity.MINUTE, Granularity.HOUR, Granularity.DAY, Granularity.BILLING_PERIOD)
# A partition that has seen no record yet has no time.
NO_CLOCK = -(2**62)
# Kept in memory a little past the last instant an event can still land in them, so a slightly different
# clock after a restart or rebalance never evicts something still writable.
EVICTION_MARGIN_MS = MINUTE_MS

# Why an event was not counted. Values are the dead-letter ``error_code``s where the event is dead-lettered.
LATE_EVENT = "late_event"
FUTURE_EVENT = "future_event"
UNKNOWN_CUSTOMER = "unknown_customer"
INVALID_METER_VALUE = "invalid_meter_value"
INVALID_EVENT = "invalid_event"
DUPLICATE = "duplicate"
UNMETERED = "unmetered"


@dataclass(frozen=True, slots=True)
class Rules:
    """The time rules of metering (milliseconds)."""

    grace_ms: int = HOUR_MS
    dedup_horizon_ms: int = DAY_MS
    future_tolerance_ms: int = 5 * MINUTE_MS

    def __post_init__(self) -> None:
        if self.grace_ms < 0 or self.future_tolerance_ms < 0:
            raise ValueError("grace and future tolerance must not be negative")
        if self.dedup_horizon_ms < self.grace_ms:
            # Otherwise a duplicate could arrive after its id was forgotten but before it counts as late.
            raise ValueError(
                f"the dedup horizon ({self.dedup_horizon_ms} ms) must be at least the late-event grace "
                f"({self.grace_ms} ms), or late duplicates would be counted twice"
            )


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event that is not counted: ``code`` (a dead-letter reason or duplicate/unmetered) and why."""

    code: str
    message: str

    @property
    def dead_letter(self) -> bool:
        return self.code not in (DUPLICATE, UNMETERED)


_DUPLICATE = Rejection(DUPLICATE, "event_id already counted")
_UNMETERED = Rejection(UNMETERED, "no meter counts events of this name")


def crossed_thresholds(
    usage: int, limit: int, already_fired: int, percents: Iterable[int] = THRESHOLD_PERCENTS
) -> list[int]:
    """Thresholds (percent) reached by ``usage`` of ``limit`` (both nanounits) not yet fired, in order."""
    return [p for p in percents if p > already_fired and usage * 100 >= p * limit]


# ------------------------------------------------------------------------------------------- dedup


class DedupIndex:
    """Exact set of (customer, event_id) with time-bucketed expiry.

    Ids are held in one ``set`` per customer (lookups) and in per-minute expiry buckets (eviction). New ids
    also wait in ``pending`` until the next changelog write, which stores one record per expiry bucket per
    transaction instead of one per event.
    """

    __slots__ = ("bucket_records", "buckets", "pending", "seen", "spilled")

    def __init__(self) -> None:
        # True while some live ids are only in the local store (services/metering_aggregator/store.py):
        # then a miss in memory must ask the store. This in-memory index never spills.
        self.spilled = False
        self.seen: dict[str, set[int | str]] = {}
        # expiry minute -> customer -> compact ids expiring then
        self.buckets: dict[int, dict[str, list[int | str]]] = {}
        # expiry minute -> customer -> original ids added since the last changelog write
        self.pending: dict[int, dict[str, list[str]]] = {}
        # expiry minute -> keys of the changelog records holding its ids (tombstoned on expiry)
        self.bucket_records: dict[int, list[bytes]] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self.seen.values())

    def contains(self, customer_id: str, event_id: str) -> bool:
        compact = compact_event_id(event_id)
        ids = self.seen.get(customer_id)
        return (ids is not None and compact in ids) or (self.spilled and self.on_disk(customer_id, compact))

    def on_disk(self, customer_id: str, compact: int | str) -> bool:
        """Whether a spilled id is in the local store (never, for this in-memory index)."""
        return False

    def restored_record(self) -> None:
        """Called after each dedup record a restore applies: a bounded index spills here."""

    def add(
        self,
        customer_id: str,
        event_id: str,
        expiry_minute: int,
        *,
        pending: bool = True,
        compact: int | str | None = None,
    ) -> bool:
        """Remember an id; False if it was already there. ``compact`` saves recomputing its compact form."""
        if compact is None:
            compact = compact_event_id(event_id)
        ids = self.seen.get(customer_id)
        if ids is None:
            ids = self.seen[customer_id] = set()
        elif compact in ids:
            return False
        ids.add(compact)
        bucket = self.buckets.get(expiry_minute)
        if bucket is None:
            bucket = self.buckets[expiry_minute] = {}
        lst = bucket.get(customer_id)
        if lst is None:
            bucket[customer_id] = [compact]
        else:
            lst.append(compact)
        if pending:
            pend = self.pending.get(expiry_minute)
            if pend is None:
                pend = self.pending[expiry_minute] = {}
            plst = pend.get(customer_id)
            if plst is None:
                pend[customer_id] = [event_id]
            else:
                plst.append(event_id)
        return True

    def add_new(
        self,
        customer_id: str,
        event_id: str,
        compact: int | str,
        expiry_minute: int,
        ids: set[int | str] | None,
    ) -> None:
        """:meth:`add` for an id just found absent, with the customer's set from that look-up (the hot path:
        no second look-up)."""
        if ids is None:
            self.seen[customer_id] = {compact}
        else:
            ids.add(compact)
        bucket = self.buckets.get(expiry_minute)
        if bucket is None:
            self.buckets[expiry_minute] = {customer_id: [compact]}
        else:
            lst = bucket.get(customer_id)
            if lst is None:
                bucket[customer_id] = [compact]
            else:
                lst.append(compact)
        pend = self.pending.get(expiry_minute)
        if pend is None:
            self.pending[expiry_minute] = {customer_id: [event_id]}
        else:
            plst = pend.get(customer_id)
            if plst is None:
                pend[customer_id] = [event_id]
            else:
                plst.append(event_id)

    def take_pending(self) -> dict[int, dict[str, list[str]]]:
        pending, self.pending = self.pending, {}
        return pending

    def evict(self, now_minute: int) -> list[int]:
        """Forget every bucket that expired before ``now_minute``; returns the expired bucket minutes."""
        expired = [b for b in self.buckets if b < now_minute]
        for minute in expired:
            for customer_id, compacts in self.buckets.pop(minute).items():
                ids = self.seen.get(customer_id)
                if ids is None:
                    continue
                ids.difference_update(compacts)
                if not ids:
                    del self.seen[customer_id]
            self.pending.pop(minute, None)
        return expired


# ------------------------------------------------------------------------------------------ windows


class Window:
    """The running value of one meter for one customer and group in one window."""

    __slots__ = (
        "dirty",
        "end_ms",
        "event_count",
        "granularity",
        "key",
        "latest_ms",
        "member_records",
        "members",
        "new_members",
        "record",
        "series",
        "start_ms",
        "value",
    )

    def __init__(self, series: Series, granularity: Granularity, start_ms: int, end_ms: int) -> None:
        self.series = series
        self.granularity = granularity
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.key = f"{series.customer_id}|{series.meter.slug}|{granularity.value}|{start_ms}|{series.group}"
        self.value = 0  # nanounits
        self.event_count = 0
        self.latest_ms = -(2**62)  # event time of the value LATEST holds
        self.dirty = False
        unique = series.meter.aggregation is Aggregation.UNIQUE_COUNT
        self.members: set[str] | None = set() if unique else None
        self.new_members: list[str] | None = [] if unique else None
        self.member_records: list[bytes] | None = [] if unique else None
        # The packed changelog record holding this window's latest state (see PartitionState.records).
        self.record: bytes | None = None


class Series:
    """All windows of one (customer, meter, group), with the current minute's four windows cached."""

    __slots__ = (
        "acc_n",
        "acc_v",
        "cur",
        "cur_minute",
        "customer_id",
        "group",
        "group_values",
        "meter",
        "touched",
        "windows",
    )

    def __init__(self, customer_id: str, meter: Meter, group: str, group_values: dict[str, str]) -> None:
        self.customer_id = customer_id
        self.meter = meter
        self.group = group
        self.group_values = group_values
        self.windows: dict[tuple[Granularity, int], Window] = {}
        self.cur_minute = -1
        self.cur: tuple[Window, ...] = ()
        # COUNT and SUM: events and value counted into ``cur`` but not yet added to its four windows (see
        # PartitionState._count: one addition per event instead of four, folded in before any read).
        self.acc_n = 0
        self.acc_v = 0
        # The drain that last saw this series change (least recently touched series leave memory first).
        self.touched = 0


class WindowSpill(Protocol):
    """Where the windows of series beyond the memory bound go (``services/metering_aggregator/store.py``):
    whole idle series, with their windows, unique members and record references."""

    bound: int

    def load(self, state: PartitionState, skey: tuple[str, str, str]) -> Series | None:
        """Bring a spilled series back into memory (None: it is not on disk)."""

    def load_record(self, state: PartitionState, record: bytes) -> None:
        """Bring back every spilled series holding a window whose latest state is in ``record``."""

    def evict(self, state: PartitionState, now_minute: int) -> list[Series]:
        """Bring back the spilled series with a window to evict before ``now_minute``; returns them."""

    def spill(
        self, state: PartitionState, series: list[Series] | None = None, target: int | None = None
    ) -> int:
        """Move the least recently touched series (or just ``series``) to disk until memory holds at most
        ``target`` (default ``bound``) windows; returns the windows moved."""


@dataclass(frozen=True, slots=True)
class ThresholdCrossing:
    customer: Customer
    meter: str
    percent: int
    usage: int  # nanounits
    limit: int  # nanounits
    hard_limit: bool
    period_start_ms: int
    period_end_ms: int


@dataclass
class Drained:
    """What one batch produced for one partition, to be written in the batch's transaction."""

    aggregates: list[Window] = field(default_factory=list)
    changelog: list[tuple[bytes, Any]] = field(default_factory=list)  # (key, JSON-able value)
    thresholds: list[ThresholdCrossing] = field(default_factory=list)


class PartitionState:
    """Everything the aggregator knows for one input partition."""

    def __init__(
        self, partition: int, config: PlansConfig, rules: Rules, dedup: DedupIndex | None = None
    ) -> None:
        self.partition = partition
        self.config = config
        self.rules = rules
        self.meters_by_event: dict[str, tuple[Meter, ...]] = {}
        for meter in config.meters:
            self.meters_by_event[meter.event] = (*self.meters_by_event.get(meter.event, ()), meter)
        # Event names all of whose meters are ungrouped COUNTs: no value to read, no group (the fast path).
        self.plain_counts = frozenset(
            name
            for name, meters in self.meters_by_event.items()
            if all(m.aggregation is Aggregation.COUNT and not m.group_by for m in meters)
        )
        # Series whose accumulators (Series.acc_n/acc_v) hold counts not yet folded into their windows.
        self.accumulating: list[Series] = []
        # In memory, or bounded in memory with the rest in the local store (the processor chooses).
        self.dedup = dedup if dedup is not None else DedupIndex()
        self.series: dict[tuple[str, str, str], Series] = {}
        self.dirty: list[Window] = []
        # (customer, meter, period_start) -> (highest percent fired, period end, the limit it was of; None
        # when restored from a changelog written before limits were kept)
        self.thresholds: dict[tuple[str, str, int], tuple[int, int, int | None]] = {}
        self.dirty_thresholds: set[tuple[str, str, int]] = set()
        # eviction minute -> windows to drop then (sets: a series leaving memory takes its windows out)
        self.expiry: dict[int, set[Window]] = {}
        # Packed window records ("B|<txn>.<chunk>") -> the windows whose latest state each one holds, and
        # how many it was written with. A record no window points at any more is tombstoned; a sparse old
        # one has its few live windows rewritten into the current transaction's record, so idle windows
        # never pin many dead bytes in the changelog.
        # A record's live windows are those in memory (the set) plus ``spilled_in_record[key]`` on disk (see
        # WindowSpill): the record stays in ``records`` while either holds one.
        self.records: dict[bytes, set[Window]] = {}
        self.record_sizes: dict[bytes, int] = {}
        self.spilled_in_record: dict[bytes, int] = {}
        self.pending_tombstones: list[bytes] = []
        # Windows beyond a memory bound go to disk with their whole series (None: all in memory). While
        # ``spilled_series`` is 0 nothing is looked up on disk.
        self.spill: WindowSpill | None = None
        self.spilled_series = 0
        self.windows_in_memory = 0
        self._drains = 0
        # The input offset this state is complete up to (the next offset to read): restored from the
        # changelog's checkpoint record, or the last one written in a transaction. None: never written.
        self.checkpoint_offset: int | None = None
        # The partition's clock (see the module docs): the latest arrival time seen, epoch ms.
        self.clock_ms = NO_CLOCK
        self._checkpoint_clock = NO_CLOCK
        self.counted = 0
        self.duplicates = 0
        self.unmetered = 0

    # -- applying events ------------------------------------------------------------------------------

    def apply(self, event: dict[str, Any], arrival_ms: int, customer: Customer | None) -> Rejection | None:
        """Count one decoded usage event, or say why not. Idempotent per (customer, event_id).

        ``arrival_ms`` is when the event reached Kafka (its record's timestamp, at most the wall clock): it
        moves the partition's clock forward, and the event is judged against that clock.
        """
        if arrival_ms > self.clock_ms:
            self.clock_ms = arrival_ms
        now_ms = self.clock_ms
        name = event["name"]
        meters = self.meters_by_event.get(name)
        if meters is None:
            self.unmetered += 1
            return _UNMETERED
        customer_id: str = event["customer_id"]
        event_id: str = event["event_id"]
        if not customer_id or not event_id:
            return Rejection(INVALID_EVENT, "customer_id and event_id must not be empty")
        compact = compact_event_id(event_id)
        dedup = self.dedup
        seen = dedup.seen.get(customer_id)
        if (seen is not None and compact in seen) or (dedup.spilled and dedup.on_disk(customer_id, compact)):
            self.duplicates += 1
            return _DUPLICATE
        ts: int = event["timestamp"]
        rules = self.rules
        if ts < now_ms - rules.grace_ms:
            return Rejection(
                LATE_EVENT,
                f"event time {ts} is {(now_ms - ts) // 1000} s older than its arrival in Kafka, "
                f"beyond the {rules.grace_ms // 1000} s grace",
            )
        if ts > now_ms + rules.future_tolerance_ms:
            return Rejection(
                FUTURE_EVENT,
                f"event time {ts} is {(ts - now_ms) // 1000} s ahead of its arrival in Kafka "
                f"(tolerance {rules.future_tolerance_ms // 1000} s)",
            )
        if customer is None:
            return Rejection(UNKNOWN_CUSTOMER, f"customer {customer_id!r} does not exist")
        minute = ts - ts % MINUTE_MS
        expiry = (ts + rules.dedup_horizon_ms) // MINUTE_MS + 1
        if name in self.plain_counts:  # ungrouped COUNTs only: no value to read or validate
            dedup.add_new(customer_id, event_id, compact, expiry, seen)
            for meter in meters:
                self._count(customer, meter, None, ts, minute, "", None)
            self.counted += 1
            return None
        # Extract every meter's value first: an event is counted into all its meters or none.
        values: list[Any] = []
        for meter in meters:
            try:
                values.append(self._value(meter, event))
            except InvalidValue as exc:
                return Rejection(INVALID_METER_VALUE, f"meter {meter.slug} ({meter.value_property}): {exc}")
        dedup.add_new(customer_id, event_id, compact, expiry, seen)
        for meter, value in zip(meters, values, strict=True):
            self._count(customer, meter, value, ts, minute, "", None)
            if meter.group_by:
                props = event.get("properties") or {}
                gvalues = tuple(group_value(props.get(name)) for name in meter.group_by)
                gkey = group_key(meter.group_by, gvalues)
                self._count(customer, meter, value, ts, minute, gkey, (meter.group_by, gvalues))
        self.counted += 1
        return None

    @staticmethod
    def _value(meter: Meter, event: dict[str, Any]) -> Any:
        agg = meter.aggregation
        if agg is Aggregation.COUNT:
            return None
        prop = meter.value_property
        assert prop is not None
        raw = event.get(prop[1:]) if prop[0] == "$" else (event.get("properties") or {}).get(prop)
        if agg is Aggregation.UNIQUE_COUNT:
            return member_of(raw)
        return to_nanounits(raw)

    def _count(
        self,
        customer: Customer,
        meter: Meter,
        value: Any,
        ts: int,
        minute: int,
        gkey: str,
        group: tuple[tuple[str, ...], tuple[str, ...]] | None,
    ) -> None:
        skey = (customer.customer_id, meter.slug, gkey)
        series = self.series.get(skey)
        if series is None and self.spilled_series:
            series = self.spill.load(self, skey)  # type: ignore[union-attr]
        if series is None:
            gvals = dict(zip(group[0], group[1], strict=True)) if group else {}
            series = self.series[skey] = Series(customer.customer_id, meter, gkey, gvals)
        if series.cur_minute != minute:
            if series.acc_n:
                self._fold(series)
            series.cur = self._windows_at(series, minute, customer.billing_anchor_day)
            series.cur_minute = minute
        agg = meter.aggregation
        # COUNT and SUM add the same amount to each of the four windows: the series accumulates it and folds
        # it into the windows when its minute changes or before anything reads them (drain, eviction), so an
        # event costs one addition, not four plus their dirty marks. Integer additions: exact in any order.
        if agg is _COUNT:
            n = series.acc_n
            if not n:
                self.accumulating.append(series)
            series.acc_n = n + 1
            return
        if agg is _SUM:
            n = series.acc_n
            if not n:
                self.accumulating.append(series)
            series.acc_n = n + 1
            series.acc_v += value
            return
        cur = series.cur
        # One loop per aggregation (branch hoisted out of the loop): this is the per-event hot path.
        if agg is _MAX:
            for w in cur:
                w.event_count += 1
                if w.event_count == 1 or value > w.value:
                    w.value = value
        elif agg is _LATEST:
            # Latest by event time; on a tie the later-processed event wins (deterministic on replay).
            for w in cur:
                w.event_count += 1
                if ts >= w.latest_ms:
                    w.value = value
                    w.latest_ms = ts
        else:  # UNIQUE_COUNT
            for w in cur:
                w.event_count += 1
                members = w.members
                assert members is not None
                if value not in members:
                    members.add(value)
                    w.new_members.append(value)  # type: ignore[union-attr]
                    w.value = len(members) * SCALE
        for w in cur:
            if not w.dirty:
                w.dirty = True
                self.dirty.append(w)

    def _fold(self, series: Series) -> None:
        """Add a COUNT/SUM series' accumulated events to its current four windows (and mark them dirty)."""
        n = series.acc_n
        value = n * SCALE if series.meter.aggregation is _COUNT else series.acc_v
        series.acc_n = 0
        series.acc_v = 0
        for w in series.cur:
            w.event_count += n
            w.value += value
            if not w.dirty:
                w.dirty = True
                self.dirty.append(w)

    def fold_all(self) -> None:
        """Fold every accumulating series (before windows are read: drain, eviction, ``windows()``)."""
        if self.accumulating:
            for series in self.accumulating:
                if series.acc_n:
                    self._fold(series)
            self.accumulating = []

    def _windows_at(self, series: Series, minute: int, anchor_day: int) -> tuple[Window, ...]:
        period = billing_period(minute, anchor_day)
        spans = (
            (Granularity.MINUTE, minute, minute + MINUTE_MS),
            (Granularity.HOUR, minute - minute % HOUR_MS, minute - minute % HOUR_MS + HOUR_MS),
            (Granularity.DAY, minute - minute % DAY_MS, minute - minute % DAY_MS + DAY_MS),
            (Granularity.BILLING_PERIOD, period.start_ms, period.end_ms),
        )
        return tuple(self._window(series, g, start, end) for g, start, end in spans)

    def _window(self, series: Series, granularity: Granularity, start: int, end: int) -> Window:
        w = series.windows.get((granularity, start))
        if w is None:
            w = series.windows[(granularity, start)] = Window(series, granularity, start, end)
            self.track(w)
        return w

    def evict_minute(self, end_ms: int) -> int:
        """The minute a window ending at ``end_ms`` is dropped at (no event can land in it any more)."""
        return (end_ms + self.rules.grace_ms + EVICTION_MARGIN_MS) // MINUTE_MS

    def track(self, w: Window) -> None:
        """A window entering memory: in the expiry index and the count the memory bound reads."""
        evict_at = self.evict_minute(w.end_ms)
        windows = self.expiry.get(evict_at)
        if windows is None:
            self.expiry[evict_at] = {w}
        else:
            windows.add(w)
        self.windows_in_memory += 1

    # -- after a batch -----------------------------------------------------------------------------------

    def drain(self, txn_seq: int, customer_of: Callable[[str], Customer | None]) -> Drained:
        """The records this batch must write: changed aggregates, changelog deltas, threshold events.

        ``txn_seq`` (the batch's first input offset on this partition) makes the changelog keys of
        append-style records (dedup ids, unique members) unique per transaction; each such record is
        remembered so it can be tombstoned when its state expires.
        """
        self.fold_all()
        if self.spill is not None:
            self._touch_dirty_series()
        out = Drained()
        for minute, by_customer in self.dedup.take_pending().items():
            keys = self.dedup.bucket_records.setdefault(minute, [])
            for i, chunk in enumerate(_chunk_by_customer(by_customer)):
                key = b"D|%d|%d.%d" % (minute, txn_seq, i)
                out.changelog.append((key, chunk))
                keys.append(key)
        rewrite = self._sparse_record_windows()
        self._write_window_records(txn_seq, [*self.dirty, *rewrite], out)
        for w in self.dirty:
            w.dirty = False
            out.aggregates.append(w)
            if w.new_members:
                assert w.member_records is not None
                for i, members in enumerate(_chunk(w.new_members)):
                    key = b"U|%d.%d|" % (txn_seq, i) + w.key.encode()
                    out.changelog.append((key, members))
                    w.member_records.append(key)
                w.new_members = []
            if w.granularity is Granularity.BILLING_PERIOD and not w.series.group:
                out.thresholds.extend(self._thresholds_for(w, customer_of))
        self.dirty = []
        for tkey in self.dirty_thresholds:
            percent, end, limit = self.thresholds[tkey]
            fired = {"p": percent, "e": end, "l": None if limit is None else str(limit)}
            out.changelog.append((threshold_changelog_key(*tkey), fired))
        self.dirty_thresholds.clear()
        if self.pending_tombstones:
            out.changelog.extend((key, None) for key in self.pending_tombstones)
            self.pending_tombstones = []
        return out

    def _touch_dirty_series(self) -> None:
        """Move the series this batch changed to the end of ``series`` (its order is then least recently
        touched first, what a spill takes): once per series and batch, not per event."""
        self._drains += 1
        stamp = self._drains
        by_key = self.series
        for w in self.dirty:
            series = w.series
            if series.touched != stamp:
                series.touched = stamp
                skey = (series.customer_id, series.meter.slug, series.group)
                if by_key.pop(skey, None) is not None:
                    by_key[skey] = series

    def _write_window_records(self, txn_seq: int, windows: list[Window], out: Drained) -> None:
        """Pack the states of ``windows`` into this transaction's ``B|`` records and move their references."""
        chunk: list[list[Any]] = []
        members: list[Window] = []
        size = 0
        index = 0
        for w in windows:
            entry = window_changelog_entry(w)
            chunk.append(entry)
            members.append(w)
            size += len(entry[0]) + 48
            if size >= CHUNK_CHARS:
                self._emit_record(b"B|%d.%d" % (txn_seq, index), chunk, members, out)
                chunk, members, size = [], [], 0
                index += 1
        if chunk:
            self._emit_record(b"B|%d.%d" % (txn_seq, index), chunk, members, out)

    def _emit_record(self, key: bytes, entries: list[list[Any]], windows: list[Window], out: Drained) -> None:
        out.changelog.append((key, entries))
        live = self.records[key] = set()
        self.record_sizes[key] = len(entries)
        for w in windows:
            self._release(w)
            w.record = key
            live.add(w)

    def _release(self, w: Window) -> None:
        """``w`` no longer lives in its record; tombstone the record once nothing does."""
        old = w.record
        if old is None:
            return
        w.record = None
        live = self.records.get(old)
        if live is None:
            return
        live.discard(w)
        if not live and old not in self.spilled_in_record:
            del self.records[old]
            self.record_sizes.pop(old, None)
            self.pending_tombstones.append(old)

    def release_spilled(self, record: bytes) -> None:
        """A window on disk held in ``record`` came back to memory or was dropped: one fewer on disk."""
        left = self.spilled_in_record.get(record, 0) - 1
        if left > 0:
            self.spilled_in_record[record] = left
        else:
            self.spilled_in_record.pop(record, None)

    def drop_if_dead(self, record: bytes) -> None:
        """Tombstone ``record`` when no window, in memory or on disk, lives in it any more."""
        live = self.records.get(record)
        if live is not None and not live and record not in self.spilled_in_record:
            del self.records[record]
            self.record_sizes.pop(record, None)
            self.pending_tombstones.append(record)

    def _sparse_record_windows(self, max_windows: int = 2000) -> list[Window]:
        """Live windows of records that are less than a quarter full, oldest first, to be rewritten now
        (spilled ones are brought back to memory first; the next spill moves them out again)."""
        picked: list[Window] = []
        sizes = self.record_sizes
        on_disk = self.spilled_in_record
        for key, live in list(self.records.items()):  # insertion order: oldest first
            spilled = on_disk.get(key, 0)
            if (len(live) + spilled) * 4 < sizes.get(key, 0):
                if len(picked) + len(live) + spilled > max_windows:
                    break
                if spilled:
                    self.spill.load_record(self, key)  # type: ignore[union-attr]
                picked.extend(w for w in live if not w.dirty)
        return picked

    def _thresholds_for(
        self, w: Window, customer_of: Callable[[str], Customer | None]
    ) -> list[ThresholdCrossing]:
        customer = customer_of(w.series.customer_id)
        if customer is None:
            return []
        plan = self.config.plan(customer.plan)
        allowance = plan.meters.get(w.series.meter.slug) if plan is not None else None
        if allowance is None or allowance.limit is None:
            return []
        limit = decimal_to_nanounits(allowance.limit)
        tkey = (customer.customer_id, w.series.meter.slug, w.start_ms)
        fired, _, fired_limit = self.thresholds.get(tkey, (0, w.end_ms, limit))
        if fired_limit is not None and fired_limit != limit:
            # The plan changed mid-period (an upgrade, say): 80 % of the new limit is a new threshold, and
            # those of the old limit say nothing about it.
            fired = 0
        percents = crossed_thresholds(w.value, limit, fired)
        if not percents:
            return []
        self.thresholds[tkey] = (percents[-1], w.end_ms, limit)
        self.dirty_thresholds.add(tkey)
        return [
            ThresholdCrossing(
                customer, w.series.meter.slug, p, w.value, limit, allowance.hard_limit, w.start_ms, w.end_ms
            )
            for p in percents
        ]

    def advance_clock(self, arrival_ms: int) -> None:
        """Move the clock forward as if a record had arrived at ``arrival_ms`` (never back)."""
        self.clock_ms = max(self.clock_ms, arrival_ms)

    def evict(self) -> list[bytes]:
        """Drop state no event can change any more at the partition's clock; returns the changelog keys to
        tombstone. Eviction never runs ahead of the clock lateness is judged on (that keeps dedup exact)."""
        now_ms = self.clock_ms
        if now_ms == NO_CLOCK:
            return []
        self.fold_all()
        now_minute = now_ms // MINUTE_MS
        tombstones: list[bytes] = []
        # Spilled series with a window due come back to memory, are evicted like the rest, and what is left
        # of them goes straight back to disk (unchanged windows: committed state).
        returned = self.spill.evict(self, now_minute) if self.spilled_series else []  # type: ignore[union-attr]
        for minute in [m for m in self.expiry if m < now_minute]:
            for w in self.expiry.pop(minute):
                series = w.series
                if series.windows.pop((w.granularity, w.start_ms), None) is None:
                    continue
                self.windows_in_memory -= 1
                self._release(w)
                tombstones.extend(w.member_records or ())
                series.cur_minute = -1
                series.cur = ()
                if not series.windows:
                    self.series.pop((series.customer_id, series.meter.slug, series.group), None)
        if returned:
            left = [s for s in returned if s.windows]
            if left:
                self.spill.spill(self, left)  # type: ignore[union-attr]
        dedup_horizon_minutes = now_minute - EVICTION_MARGIN_MS // MINUTE_MS
        for minute in self.dedup.evict(dedup_horizon_minutes):
            tombstones.extend(self.dedup.bucket_records.pop(minute, ()))
        expired = [
            k
            for k, (_, end, _) in self.thresholds.items()
            if end + self.rules.grace_ms + EVICTION_MARGIN_MS < now_ms
        ]
        for tkey in expired:
            del self.thresholds[tkey]
            self.dirty_thresholds.discard(tkey)
            tombstones.append(threshold_changelog_key(*tkey))
        tombstones.extend(self.pending_tombstones)
        self.pending_tombstones = []
        return tombstones

    def checkpoint(self, next_offset: int) -> tuple[bytes, dict[str, int]] | None:
        """The changelog record "this state is complete up to input offset ``next_offset``, at this clock",
        written in the transaction that commits that offset; None when the last one written says the same."""
        if next_offset == self.checkpoint_offset and self.clock_ms == self._checkpoint_clock:
            return None
        self.checkpoint_offset = next_offset
        self._checkpoint_clock = self.clock_ms
        return CHECKPOINT_KEY, {"o": next_offset, "t": self.clock_ms}

    def forget_checkpoint(self) -> None:
        """The last checkpoint written may have been aborted: write one again with the next transaction."""
        self.checkpoint_offset = None
        self._checkpoint_clock = NO_CLOCK

    # -- introspection ------------------------------------------------------------------------------------

    def windows(self) -> Iterator[Window]:
        self.fold_all()
        for series in self.series.values():
            yield from series.windows.values()

    def window_count(self) -> int:
        return sum(len(s.windows) for s in self.series.values())


# One record per changelog partition, overwritten by every transaction that moves its input offset.
CHECKPOINT_KEY = b"C"


def threshold_changelog_key(customer_id: str, meter: str, period_start_ms: int) -> bytes:
    return f"T|{customer_id}|{meter}|{period_start_ms}".encode()


# Changelog values stay well under the broker's default 1 MiB record limit.
CHUNK_CHARS = 256 * 1024


def _chunk(items: list[str]) -> Iterator[list[str]]:
    part: list[str] = []
    size = 0
    for item in items:
        part.append(item)
        size += len(item) + 3
        if size >= CHUNK_CHARS:
            yield part
            part, size = [], 0
    if part:
        yield part


def _chunk_by_customer(by_customer: dict[str, list[str]]) -> Iterator[dict[str, list[str]]]:
    part: dict[str, list[str]] = {}
    size = 0
    for customer_id, ids in by_customer.items():
        for chunk in _chunk(ids) if len(ids) > 1000 else (ids,):
            part.setdefault(customer_id, []).extend(chunk)
            size += len(customer_id) + sum(map(len, chunk)) + 3 * len(chunk)
            if size >= CHUNK_CHARS:
                yield part
                part, size = {}, 0
    if part:
        yield part


def window_changelog_entry(w: Window) -> list[Any]:
    # The value as text: totals can outgrow the 64-bit integers JSON libraries handle.
    return [w.key, str(w.value), w.event_count, w.latest_ms, w.end_ms]
