"""The aggregator's local state store: dedup ids bounded in memory with the rest on disk, and a warm copy
of the partition's changelog for restarts (RocksDB, one per input partition; see docs/metering.md).

Layout of one partition's store (``services.kernel.processing.store.LocalStore``):

* ``E<expiry minute><customer><suffix>`` -> a flag and packed ids: spilled dedup ids of one customer
  expiring then; ``F...`` the same for the ids memory held at the seal (see :class:`DiskDedupIndex`);
* ``I<id key>`` -> expiry minute (4 bytes): a spilled id, for point lookups;
* ``L<changelog key>`` -> the latest changelog value of that key, for every record kind but the dedup ids
  (``D|`` keys are kept with an empty value: the ids are the ``I``/``E`` entries);
* ``W<series key>`` -> a spilled series: its windows (state, record reference, unique members and their
  record keys) and its earliest eviction minute (see :class:`DiskWindows`); ``R<record><series key>``
  (empty) for each packed ``B|`` record one of its windows lives in, ``X<minute><series key>`` (empty) at
  its earliest eviction minute; ``V<order><series key>`` -> window count: the series memory held at the
  seal, least recently touched first, and ``Z`` -> the packed records' bookkeeping at the seal;
* the seal (``services.kernel.processing.store``): ``{"o": committed input offset, "rules": [...],
  "layout": LAYOUT}``.

``<series key>`` is the JSON array ``[customer, meter, group]``; ``<record>`` a length byte then the key.
Packed window records (``B|``) and unique members (``U|``) are not mirrored under ``L``: their content is
in the series (on disk, or written there by the seal), and ``Z`` keeps which records are live.

``<id key>`` is the customer id (2-byte length, UTF-8) then the compact event id (``\\x00`` + 16 bytes for
a UUID, ``\\x01`` + UTF-8 otherwise), so one customer's ids never meet another's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import orjson

from services.kernel.processing.store import LocalStore, StoreFold
from services.metering_aggregator.model import (
    EVICTION_MARGIN_MS as EVICTION_MARGIN,
)
from services.metering_aggregator.model import (
    NO_CLOCK as NO_CLOCK_VALUE,
)
from services.metering_aggregator.model import DedupIndex, PartitionState, Rules, Series, Window
from services.metering_aggregator.values import parse_group_key
from services.plans.model import Aggregation
from services.plans.periods import Granularity

log = logging.getLogger(__name__)

ID = b"I"
EXPIRY = b"E"
MIRROR = b"L"
DEDUP_RECORD = b"D|"
#: Changelog records not mirrored: their content lives in the series (see the module docs).
NOT_MIRRORED = (b"B|", b"U|")
SERIES = b"W"
BY_RECORD = b"R"
BY_EXPIRY = b"X"
SEALED_SERIES = b"V"
SPILL_META = b"Z"
#: A changelog replay's fold (latest value per changelog key), and its windows and members by series.
REPLAY = b"K"
REPLAY_WINDOW = b"Q"
REPLAY_MEMBERS = b"M"
#: The store's layout, in its seal: a store of another layout is replayed, never misread. 2: windows spilled.
LAYOUT = 2


def id_key(customer_id: str, compact: int | str) -> bytes:
    customer = customer_id.encode()
    tail = b"\x00" + compact.to_bytes(16, "big") if isinstance(compact, int) else b"\x01" + compact.encode()
    return len(customer).to_bytes(2, "big") + customer + tail


def parse_id_key(key: bytes) -> tuple[str, int | str]:
    size = int.from_bytes(key[:2], "big")
    customer = key[2 : 2 + size].decode()
    tail = key[2 + size :]
    if tail[:1] == b"\x00":
        return customer, int.from_bytes(tail[1:17], "big")
    return customer, tail[1:].decode()


def pack_ids(compacts: Iterable[int | str]) -> bytes:
    """Compact ids one after another: ``\x00`` + 16 bytes (a UUID) or ``\x01`` + 2-byte length + UTF-8."""
    parts = []
    for compact in compacts:
        if isinstance(compact, int):
            parts.append(b"\x00" + compact.to_bytes(16, "big"))
        else:
            raw = compact.encode()
            parts.append(b"\x01" + len(raw).to_bytes(2, "big") + raw)
    return b"".join(parts)


def unpack_ids(data: bytes) -> list[int | str]:
    out: list[int | str] = []
    pos, end = 0, len(data)
    from_bytes = int.from_bytes
    while pos < end:
        if data[pos] == 0:
            out.append(from_bytes(data[pos + 1 : pos + 17], "big"))
            pos += 17
        else:
            size = from_bytes(data[pos + 1 : pos + 3], "big")
            out.append(data[pos + 3 : pos + 3 + size].decode())
            pos += 3 + size
    return out


#: Flag byte of a spilled chunk (``E`` prefix): its ids have ``I`` lookup keys.
SPILLED = b"S"
#: Prefix of the chunks a seal writes from memory (no lookup keys; a load reads them back first).
SEALED_CHUNK = b"F"


class DiskDedupIndex(DedupIndex):
    """The dedup index with at most ``memory_ids`` ids in memory; the oldest expiry minutes go to the store.

    Memory holds whole expiry minutes, newest first. While any live id is only in the store (``spilled``),
    an id missing from memory is looked up in the store (a bloom-filtered point lookup), so dedup stays
    exact whatever the bound; below the bound nothing is read from disk.

    On disk, ids are chunks of packed ids per (expiry minute, customer), one put per chunk:
    ``E<minute><customer><suffix>`` for spilled ids (each also with an ``I<id key>`` for lookups) — while the
    partition runs, exactly the ids not in memory — and ``F<minute><customer><suffix>`` for what memory held
    when the store was sealed (no lookup keys). Loading a sealed store reads only the ``F`` chunks, keeps
    the newest up to the bound and turns the rest into spilled ``E`` chunks; the spilled ones are not read.
    """

    __slots__ = ("memory_ids", "spilled_through", "store")

    def __init__(self, store: LocalStore, memory_ids: int) -> None:
        super().__init__()
        self.store = store
        self.memory_ids = memory_ids
        # Expiry minutes up to this one may have ids only in the store (-1: none).
        self.spilled_through = -1

    def on_disk(self, customer_id: str, compact: int | str) -> bool:
        return self.store.get(ID + id_key(customer_id, compact)) is not None

    def restored_record(self) -> None:
        self.spill()

    @staticmethod
    def _chunk_key(minute: int, customer_id: str, prefix: bytes = EXPIRY) -> bytes:
        customer = customer_id.encode()
        return (
            prefix + minute.to_bytes(4, "big") + len(customer).to_bytes(2, "big") + customer + os.urandom(8)
        )

    def spill(self) -> int:
        """Move the oldest expiry minutes to the store until memory holds at most ``memory_ids``; returns
        the ids moved. Only committed ids are ever spilled (it runs after a commit, or during a restore)."""
        size = len(self)
        if size <= self.memory_ids:
            return 0
        moved = 0
        batch = self.store.batch()
        for minute in sorted(self.buckets):
            if size - moved <= self.memory_ids:
                break
            by_customer = self.buckets.pop(minute)
            minute_bytes = minute.to_bytes(4, "big")
            for customer_id, compacts in by_customer.items():
                batch.put(self._chunk_key(minute, customer_id), SPILLED + pack_ids(compacts))
                ids = self.seen.get(customer_id)
                for compact in compacts:
                    batch.put(ID + id_key(customer_id, compact), minute_bytes)
                if ids is not None:
                    ids.difference_update(compacts)
                    if not ids:
                        del self.seen[customer_id]
                moved += len(compacts)
            self.spilled_through = max(self.spilled_through, minute)
        self.store.write(batch)
        self.spilled = self.spilled_through >= 0
        return moved

    def write_all(self) -> None:
        """Write the ids in memory to the store (before sealing it): one chunk per minute and customer, under
        their own prefix, so loading reads them and never has to walk the spilled ones."""
        batch = self.store.batch()
        for minute, by_customer in self.buckets.items():
            for customer_id, compacts in by_customer.items():
                batch.put(self._chunk_key(minute, customer_id, SEALED_CHUNK), pack_ids(compacts))
        self.store.write(batch)

    def load(self) -> int:
        """Fill memory from a sealed store: the chunks memory held at the seal, newest expiry first, up to
        the bound; returns ids loaded. What does not fit becomes spilled chunks with lookup keys; the spilled
        chunks already there are not read (one seek finds the newest, for ``spilled_through``)."""
        loaded = 0
        full = False
        batch = self.store.batch()
        for key, value in self.store.items(SEALED_CHUNK, backwards=True):
            minute = int.from_bytes(key[1:5], "big")
            size = int.from_bytes(key[5:7], "big")
            customer_id = key[7 : 7 + size].decode()
            compacts = unpack_ids(value)
            batch.delete(key)
            full = full or (loaded > 0 and loaded + len(compacts) > self.memory_ids)
            if full:  # stays on disk, spilled: lookup keys and an E chunk
                minute_bytes = minute.to_bytes(4, "big")
                for compact in compacts:
                    batch.put(ID + id_key(customer_id, compact), minute_bytes)
                batch.put(EXPIRY + key[1:], SPILLED + value)
                self.spilled_through = max(self.spilled_through, minute)
                continue
            ids = self.seen.get(customer_id)
            if ids is None:
                ids = self.seen[customer_id] = set()
            ids.update(compacts)
            bucket = self.buckets.setdefault(minute, {})
            known = bucket.get(customer_id)
            if known is None:
                bucket[customer_id] = compacts
            else:
                known.extend(compacts)
            loaded += len(compacts)
        self.store.write(batch)
        for key, _ in self.store.items(EXPIRY, backwards=True):  # the newest spilled chunk, if any
            self.spilled_through = max(self.spilled_through, int.from_bytes(key[1:5], "big"))
            break
        self.spilled = self.spilled_through >= 0
        return loaded

    def evict(self, now_minute: int) -> list[int]:
        """Memory's expired minutes as the base class does, and the store's; returns every expired minute
        the partition has dedup records of (their changelog records are tombstoned)."""
        expired = set(super().evict(now_minute))
        expired.update(m for m in self.bucket_records if m < now_minute)
        if self.spilled:
            end = EXPIRY + now_minute.to_bytes(4, "big")
            batch = self.store.batch()
            for key, value in self.store.items(EXPIRY):
                if key >= end:
                    break
                if value[:1] == SPILLED:
                    size = int.from_bytes(key[5:7], "big")
                    customer_id = key[7 : 7 + size].decode()
                    for compact in unpack_ids(value[1:]):
                        batch.delete(ID + id_key(customer_id, compact))
            batch.delete_range(EXPIRY, end)
            self.store.write(batch)
            if self.spilled_through < now_minute:
                self.spilled_through = -1
                self.spilled = False
        return sorted(expired)


def series_key(skey: tuple[str, str, str]) -> bytes:
    return orjson.dumps(list(skey))


def parse_series_key(raw: bytes) -> tuple[str, str, str]:
    customer_id, meter, group = orjson.loads(raw)
    return customer_id, meter, group


def _record_prefix(record: bytes) -> bytes:
    return BY_RECORD + len(record).to_bytes(1, "big") + record


class DiskWindows:
    """Windows bounded in memory: whole series beyond ``bound`` windows go to the store, least recently
    touched first (:class:`services.metering_aggregator.model.WindowSpill`).

    The unit is the series (customer, meter, group) with all its windows, unique members and record
    references: an event touches its series' four current windows together, so a series is either active
    (in memory) or idle, and one point lookup brings all of it back. In memory stays, per packed record,
    how many of its live windows are on disk (``PartitionState.spilled_in_record``) — so a record is
    tombstoned exactly when no window lives in it, without the windows — and on disk an index per record
    (``R``, to bring a sparse record's windows back for a rewrite) and per earliest eviction minute (``X``,
    so eviction finds spilled windows without reading them all). A series is in memory or on disk, never
    both; only committed windows are spilled (after a commit, while restoring, at the seal).
    """

    __slots__ = ("bound", "store")

    def __init__(self, store: LocalStore, bound: int) -> None:
        self.store = store
        self.bound = bound

    # -- out -----------------------------------------------------------------------------------------------

    def spill(
        self, state: PartitionState, series: list[Series] | None = None, target: int | None = None
    ) -> int:
        if series is None:
            excess = state.windows_in_memory - (self.bound if target is None else target)
            if excess <= 0:
                return 0
            series = []
            for s in state.series.values():  # least recently touched first
                if excess <= 0:
                    break
                if s.acc_n:  # counts not folded yet: only between a batch's events, never here
                    continue
                series.append(s)
                excess -= len(s.windows)
        batch = self.store.batch()
        moved = 0
        for s in series:
            moved += self._write(state, s, batch)
            del state.series[(s.customer_id, s.meter.slug, s.group)]
        self.store.write(batch)
        return moved

    def _write(self, state: PartitionState, series: Series, batch: Any) -> int:
        skb = series_key((series.customer_id, series.meter.slug, series.group))
        first = None
        records: set[bytes] = set()
        entries = []
        expiry = state.expiry
        live_records = state.records
        on_disk = state.spilled_in_record
        for w in series.windows.values():
            at = state.evict_minute(w.end_ms)
            if first is None or at < first:
                first = at
            bucket = expiry.get(at)
            if bucket is not None:
                bucket.discard(w)
            rec = w.record
            if rec is not None:
                live = live_records.get(rec)
                if live is not None:
                    live.discard(w)
                else:  # cannot happen: a window's record is live while it is
                    live_records[rec] = set()
                on_disk[rec] = on_disk.get(rec, 0) + 1
                records.add(rec)
            entries.append(
                [
                    w.granularity.value,
                    w.start_ms,
                    w.end_ms,
                    str(w.value),  # may outgrow 64 bits
                    w.event_count,
                    w.latest_ms,
                    None if rec is None else rec.decode(),
                    None if w.members is None else list(w.members),
                    None if w.member_records is None else [k.decode() for k in w.member_records],
                ]
            )
        assert first is not None
        batch.put(SERIES + skb, orjson.dumps({"x": first, "w": entries}))
        for rec in records:
            batch.put(_record_prefix(rec) + skb, b"")
        batch.put(BY_EXPIRY + first.to_bytes(4, "big") + skb, b"")
        n = len(series.windows)
        series.windows = {}
        series.cur = ()
        series.cur_minute = -1
        state.windows_in_memory -= n
        state.spilled_series += 1
        return n

    # -- back in -------------------------------------------------------------------------------------------

    def load(self, state: PartitionState, skey: tuple[str, str, str]) -> Series | None:
        skb = series_key(skey)
        raw = self.store.get(SERIES + skb)
        if raw is None:
            return None
        batch = self.store.batch()
        series = self._read(state, skey, skb, raw, batch)
        self.store.write(batch)
        return series

    def _read(
        self, state: PartitionState, skey: tuple[str, str, str], skb: bytes, raw: bytes, batch: Any
    ) -> Series | None:
        data = orjson.loads(raw)
        batch.delete(SERIES + skb)
        batch.delete(BY_EXPIRY + int(data["x"]).to_bytes(4, "big") + skb)
        state.spilled_series -= 1
        customer_id, slug, group = skey
        meter = state.config.meter(slug)
        records: set[bytes] = set()
        series = None if meter is None else Series(customer_id, meter, group, parse_group_key(group))
        for gran, start, end, value, count, latest, rec, members, member_records in data["w"]:
            record = None if rec is None else rec.encode()
            if record is not None:
                records.add(record)
                state.release_spilled(record)
            if series is None:  # a meter removed from the configuration: its windows are dropped
                if record is not None:
                    state.drop_if_dead(record)
                continue
            w = Window(series, Granularity(gran), start, end)
            w.value = int(value)
            w.event_count = count
            w.latest_ms = latest
            if members is not None:
                w.members = set(members)
                w.member_records = [k.encode() for k in member_records]
            series.windows[(w.granularity, start)] = w
            state.track(w)
            if record is not None:
                w.record = record
                live = state.records.get(record)
                if live is None:
                    live = state.records[record] = set()
                live.add(w)
        for record in records:
            batch.delete(_record_prefix(record) + skb)
        if series is not None:
            state.series[skey] = series
        return series

    def load_record(self, state: PartitionState, record: bytes) -> None:
        prefix = _record_prefix(record)
        spilled = [key[len(prefix) :] for key, _ in self.store.items(prefix)]
        for skb in spilled:
            skey = parse_series_key(skb)
            if skey not in state.series:
                self.load(state, skey)

    def evict(self, state: PartitionState, now_minute: int) -> list[Series]:
        end = BY_EXPIRY + now_minute.to_bytes(4, "big")
        due = []
        for key, _ in self.store.items(BY_EXPIRY):
            if key >= end:
                break
            due.append(key[5:])
        returned = []
        for skb in due:
            series = self.load(state, parse_series_key(skb))
            if series is not None:
                returned.append(series)
        return returned

    # -- the seal ------------------------------------------------------------------------------------------

    def write_all(self, state: PartitionState) -> None:
        """Spill every series (before sealing), remembering which memory held, in touch order, and the
        records' bookkeeping: a load reads back only the newest series up to its bound."""
        batch = self.store.batch()
        for order, s in enumerate(list(state.series.values())):
            skb = series_key((s.customer_id, s.meter.slug, s.group))
            n = self._write(state, s, batch)
            batch.put(SEALED_SERIES + order.to_bytes(8, "big") + skb, n.to_bytes(4, "big"))
        state.series.clear()
        meta = {
            "r": [
                [key.decode(), state.record_sizes.get(key, 0), state.spilled_in_record.get(key, 0)]
                for key in state.records
            ],
            "n": state.spilled_series,
            # Tombstones not written yet (an aborted eviction tick's): the warm load writes them.
            "p": [key.decode() for key in state.pending_tombstones],
        }
        batch.put(SPILL_META, orjson.dumps(meta))
        self.store.write(batch)

    def load_sealed(self, state: PartitionState) -> int:
        """After a sealed store's mirror is restored: the records' bookkeeping, then the series memory held
        at the seal, newest first, up to the bound (the rest stays spilled); returns the windows loaded."""
        raw = self.store.get(SPILL_META)
        meta: dict[str, Any] = orjson.loads(raw) if raw is not None else {"r": [], "n": 0}
        for key, size, spilled in meta["r"]:
            record = key.encode()
            state.records[record] = set()
            if size:
                state.record_sizes[record] = size
            if spilled:
                state.spilled_in_record[record] = spilled
        state.spilled_series = int(meta["n"])
        state.pending_tombstones.extend(key.encode() for key in meta.get("p", ()))
        picked: list[bytes] = []
        total = 0
        for key, value in self.store.items(SEALED_SERIES, backwards=True):
            n = int.from_bytes(value, "big")
            if total + n > self.bound:
                break
            picked.append(key[9:])
            total += n
        batch = self.store.batch()
        batch.delete_range(SEALED_SERIES, SERIES)  # "V" .. "W": the order keys
        batch.delete(SPILL_META)
        for skb in reversed(picked):  # oldest first: the series' order is least recently touched first
            raw = self.store.get(SERIES + skb)
            if raw is not None:
                self._read(state, parse_series_key(skb), skb, raw, batch)
        self.store.write(batch)
        return total

    def windows(self, state: PartitionState) -> list[tuple[str, list[Any]]]:
        """Every spilled window as (aggregate key, its stored entry) — for tests and tools."""
        out = []
        for key, raw in self.store.items(SERIES):
            customer_id, slug, group = parse_series_key(key[1:])
            for entry in orjson.loads(raw)["w"]:
                out.append((f"{customer_id}|{slug}|{entry[0]}|{entry[1]}|{group}", entry))
        return out


def _window_slot(series: bytes, granularity: str, start: str) -> bytes:
    return series + b"\x00" + f"{granularity}|{start}".encode() + b"\x00"


def replay(state: PartitionState, fold: StoreFold) -> int:
    """Rebuild ``state`` from a changelog partition folded into its store (what
    ``changelog.restore`` does from a dict), holding at most one packed record, one series and the memory
    bounds in memory: the latest state of each window is found by RocksDB (entries rewritten under a key per
    window, in transaction order: the last write wins), then read back series by series and spilled past
    the bound. Also writes the store's mirror. Returns the changelog records (keys) it held."""
    from services.metering_aggregator.changelog import (
        _window_key_parts,
        apply_record,
        restore_window,
        settle_records,
    )

    store = fold.store
    count = 0
    packed: list[tuple[tuple[int, int], bytes]] = []
    batch = store.batch()
    for key, value in fold.scan():
        count += 1
        kind = key[:2]
        if kind == b"B|":
            seq, _, chunk = key[2:].partition(b".")
            packed.append(((int(seq), int(chunk)), key))
        elif kind == b"U|":
            customer_id, meter, granularity, start, group = _window_key_parts(
                key[2:].decode().partition("|")[2]
            )
            slot = _window_slot(series_key((customer_id, meter, group)), granularity, start)
            batch.put(REPLAY_MEMBERS + slot + key, value)
        else:
            apply_record(state, key, value)
            if not key.startswith(NOT_MIRRORED):
                batch.put(MIRROR + key, b"" if key.startswith(DEDUP_RECORD) else value)
        if len(batch) >= 10_000:
            store.write(batch)
            batch = store.batch()
    store.write(batch)
    evicted_before = None
    if state.clock_ms != NO_CLOCK_VALUE:
        evicted_before = state.clock_ms - state.rules.grace_ms - EVICTION_MARGIN
    sizes: dict[bytes, int] = {}
    for _, key in sorted(packed):  # transaction order: a later record's entry overwrites an earlier one
        state.records[key] = set()
        raw = fold[key]
        entries = orjson.loads(raw)
        sizes[key] = len(entries)
        batch = store.batch()
        for entry in entries:
            customer_id, meter, granularity, start, group = _window_key_parts(entry[0])
            slot = _window_slot(series_key((customer_id, meter, group)), granularity, start)
            batch.put(REPLAY_WINDOW + slot, orjson.dumps([key.decode(), entry]))
        store.write(batch)
    spill = state.spill
    current: bytes | None = None
    for slot_key, raw in store.items(REPLAY_WINDOW):
        slot = slot_key[1:]
        series = slot[: slot.index(b"\x00")]
        if series != current:  # a series is complete: keep memory within the bound
            current = series
            if spill is not None and state.windows_in_memory > spill.bound:
                spill.spill(state, target=spill.bound - spill.bound // 10)
        record, entry = orjson.loads(raw)
        key = record.encode()
        members = []
        slug_meter = state.config.meter(_window_key_parts(entry[0])[1])
        if (
            slug_meter is None or slug_meter.aggregation is Aggregation.UNIQUE_COUNT
        ):  # the only ones with U| records
            members = [
                (mkey[1 + len(slot) :], orjson.loads(value))
                for mkey, value in store.items(REPLAY_MEMBERS + slot)
            ]
        if evicted_before is not None and int(entry[4]) < evicted_before:
            state.pending_tombstones.extend(mkey for mkey, _ in members)
            continue
        w = restore_window(state, entry, members)
        if w is not None:
            w.record = key
            state.records[key].add(w)
    if spill is not None and state.windows_in_memory > spill.bound:
        spill.spill(state)
    settle_records(state, sizes)
    batch = store.batch()
    for prefix, end in ((REPLAY, b"L"), (REPLAY_MEMBERS, b"N"), (REPLAY_WINDOW, b"R")):
        batch.delete_range(prefix, end)
    store.write(batch)
    return count


class PartitionStore:
    """The local store of one input partition, as the metering handler uses it."""

    def __init__(self, store: LocalStore, partition: int) -> None:
        self.store = store
        self.partition = partition

    def seal_under(self, rules: Rules) -> dict[str, Any] | None:
        """The store's seal when it is sealed under these time rules (other rules give other expiry minutes:
        such a store is replayed), else None."""
        seal = self.store.seal_of()
        if seal is None or seal.get("rules") != _rules(rules) or seal.get("layout") != LAYOUT:
            return None
        return seal

    def sealed_at(self, rules: Rules) -> int | None:
        """The committed input offset a sealed store is complete at (None: not sealed, or other rules)."""
        seal = self.seal_under(rules)
        offset = None if seal is None else seal.get("o")
        return offset if isinstance(offset, int) else None

    def load(self, state: PartitionState) -> tuple[int, int]:
        """Rebuild ``state`` (whose dedup is a :class:`DiskDedupIndex` on this store) from the sealed store;
        returns (changelog records, ids loaded into memory). Unseals the store: it changes from now on."""
        from services.metering_aggregator.changelog import restore

        # Unsealed first (flushed): loading moves entries, and a crash meanwhile must find no seal.
        self.store.unseal()
        records = [(key[1:], value) for key, value in self.store.items(MIRROR)]
        restore(state, records, ids_in_store=True)
        assert isinstance(state.dedup, DiskDedupIndex)
        assert isinstance(state.spill, DiskWindows)
        loaded = state.dedup.load()
        state.spill.load_sealed(state)
        return len(records), loaded

    def mirror(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Apply what a committed transaction wrote to this partition's changelog."""
        batch = self.store.batch()
        for key, value in records:
            if key.startswith(NOT_MIRRORED):
                continue
            if value is None:
                batch.delete(MIRROR + key)
            else:
                batch.put(MIRROR + key, b"" if key.startswith(DEDUP_RECORD) else value)
        self.store.write(batch)

    def seal(self, state: PartitionState, committed_offset: int, rules: Rules) -> None:
        assert isinstance(state.dedup, DiskDedupIndex)
        assert isinstance(state.spill, DiskWindows)
        state.dedup.write_all()
        state.spill.write_all(state)
        self.store.seal({"o": committed_offset, "rules": _rules(rules), "layout": LAYOUT})

    def close(self) -> None:
        self.store.close()


def _rules(rules: Rules) -> list[Any]:
    return [rules.grace_ms, rules.dedup_horizon_ms]
